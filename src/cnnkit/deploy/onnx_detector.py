"""A detector's ONNX export run by ONNX Runtime: boxnet's graph decodes the boxes and numpy here suppresses
them; a torchvision detector's graph does both.

The export's ``detection`` metadata says which (``selection``), so nothing is guessed from
the graph's outputs:

- ``runtime`` (boxnet; also every export written before the key existed): the graph
  (:mod:`cnnkit.deploy.detect_export`) takes uint8 images (N, C, S, S) and returns every
  cell's decoded box (N, A, 4), xyxy in input pixels and clipped to the input, and its
  ranking score per class (N, A, K); :func:`select` then does what the detector's eval mode
  does after its head, with the numbers the export recorded: the ``candidates`` best
  (cell, class) scores, those above ``score_threshold``, class-wise greedy non-maximum
  suppression at ``nms_threshold``, and the best ``max_detections``.
- ``graph`` (FCOS, RetinaNet, SSDlite, Faster R-CNN): the traced graph takes one uint8
  image (1, C, S, S) and returns its final boxes (N, 4), scores (N,) and labels (N,), its
  non-maximum suppression inside as ONNX ``NonMaxSuppression``; images are run one by one.

No PyTorch is imported.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cnnkit.deploy.detector import ImageDetector, is_detector
from cnnkit.deploy.onnx_runtime import INPUT_NAME, open_model
from cnnkit.errors import CnnkitError

BOXES, SCORES, LABELS = "boxes", "scores", "labels"  # the graph's outputs (labels: ``graph`` selection only)
RUNTIME, GRAPH = "runtime", "graph"  # where an export's boxes are selected: its ``detection["selection"]``


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU (M,) of one xyxy box (4,) with each of ``boxes`` (M, 4)."""
    width = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    height = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    overlap = width * height
    areas = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return overlap / np.maximum(areas - overlap, np.finfo(np.float32).tiny)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, limit: int | None = None) -> np.ndarray:
    """Indices of the boxes (M, 4) xyxy kept by greedy non-maximum suppression, best score first.

    torchvision's ``nms`` rule: a box is dropped when its IoU with a kept, higher-scored box
    exceeds ``iou_threshold``. The kept boxes come out best first, so the first ``limit`` are
    final once found: stopping there makes 100 passes over the candidates, not up to 1,000.
    """
    order = np.argsort(-scores, kind="stable")
    keep = []
    while len(order) and (limit is None or len(keep) < limit):
        keep.append(order[0])
        order = order[1:][iou(boxes[order[0]], boxes[order[1:]]) <= iou_threshold]
    return np.array(keep, dtype=np.int64)


def select(boxes: np.ndarray, scores: np.ndarray, settings: dict) -> dict[str, np.ndarray]:
    """One image's detections from its cells' boxes (A, 4) and class scores (A, K), as the detector selects them."""
    num_classes = scores.shape[1]
    flat = scores.reshape(-1)
    count = min(int(settings["candidates"]), flat.size)
    top = np.argpartition(-flat, count - 1)[:count] if count < flat.size else np.arange(flat.size)
    top = top[np.argsort(-flat[top], kind="stable")]
    top = top[flat[top] > settings["score_threshold"]]
    cell, label, score = top // num_classes, top % num_classes, flat[top]
    chosen = boxes[cell]
    # class-wise suppression in one pass (torchvision's batched_nms): each class's boxes moved apart
    shift = (label * (float(chosen.max(initial=0.0)) + 1.0))[:, None]
    keep = nms(chosen + shift, score, settings["nms_threshold"], int(settings["max_detections"]))
    return {"boxes": chosen[keep], "scores": score[keep], "labels": label[keep].astype(np.int64)}


class OnnxDetector(ImageDetector):
    """A detector's export run by ONNX Runtime, with its class names, preprocessing and selection settings.

    Args:
        path: A ``.onnx`` file written by ``cnnkit export`` from a detection run.
        threads: ONNX Runtime intra-op threads. Defaults to all cores.
        opened: The (session, description) :func:`open_model` already returned for ``path``. Defaults to None.

    Example:
        >>> detector = load_detector("runs/export/model.onnx")
        >>> detector.predict("shelf.jpg")[0].to_dict()["boxes"]
    """

    def __init__(self, path: str | Path, threads: int | None = None, opened: tuple | None = None) -> None:
        self.path = Path(path).expanduser()
        self.session, info = opened or open_model(self.path, threads)
        if not is_detector(info) or "detection" not in info.extra:
            raise CnnkitError(
                f"{path} is a classifier's export ({info.model.name}), not a detector's; load it with cnnkit.load"
            )
        super().__init__(info)
        self.settings = info.extra["detection"]
        self.selection = self.settings.get("selection", RUNTIME)
        if self.selection not in (RUNTIME, GRAPH):
            raise CnnkitError(
                f"{path} selects its boxes by {self.selection!r}, which this cnnkit does not know; "
                "export the run again with this version"
            )

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every cell's boxes (N, A, 4) and class scores (N, A, K) for uint8 images (N, C, S, S) (``runtime``)."""
        boxes, scores = self.session.run([BOXES, SCORES], {INPUT_NAME: np.ascontiguousarray(pixels, np.uint8)})
        return boxes, scores

    def detect(self, pixels: np.ndarray, batch_size: int = 32) -> list[dict[str, np.ndarray]]:
        if self.selection == GRAPH:  # traced at batch 1
            outputs = [
                self.session.run(
                    [BOXES, SCORES, LABELS], {INPUT_NAME: np.ascontiguousarray(pixels[i : i + 1], np.uint8)}
                )
                for i in range(len(pixels))
            ]
            return [
                {"boxes": boxes, "scores": scores, "labels": labels.astype(np.int64)}
                for boxes, scores, labels in outputs
            ]
        found = []
        for start in range(0, len(pixels), batch_size):
            boxes, scores = self.run(pixels[start : start + batch_size])
            found += [select(b, s, self.settings) for b, s in zip(boxes, scores)]
        return found

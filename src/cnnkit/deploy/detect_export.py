"""ONNX export of a detection run, checked box by box against PyTorch before it is called a success.

Where the work is done, and why:

- In the graph: the normalisation, the network, and the box decoding (each cell's
  distances to the four edges turned into an xyxy box, clipped to the input) and its
  ranking score per class. These are dense tensor operations of fixed shape, so the graph
  has a static (N, A, 4) and (N, A, K) output and ONNX Runtime fuses them.
- In the runtime (numpy, :func:`cnnkit.deploy.onnx_detector.select`): the top-``candidates``
  cut, the score threshold and class-wise non-maximum suppression. Their output has a
  different length per image; ONNX's ``NonMaxSuppression`` op returns (batch, class, box)
  index triples that still need a gather, a per-image top-k and a cap after it, and the
  dynamo exporter has no translation of ``torchvision.ops.batched_nms`` to lean on. The numpy
  pass is one short function a reader can check against torchvision's rule (a test does).
  Its cost, measured once on the shared 2-core development machine under load (indicative
  only): 17 ms for an untrained boxnet at 320 px, the worst case (all 1,000 candidates above
  the threshold), against about 0.5 s for PyTorch eager's forward and selection of the same
  image. The in-graph variant was not built, so not measured.

torchvision's FCOS, RetinaNet, SSDlite and Faster R-CNN select boxes per feature level inside
``forward`` with data-dependent shapes, which ``torch.onnx.export(dynamo=True)`` (boxnet's
exporter) cannot capture: it fails on all four at its ``torch.export`` step. They are
exported by the TorchScript exporter (``dynamo=False``, opset 17), the way torchvision's own
test suite exports them: its detection code has tracing branches that turn the per-level top-k,
the score threshold and ``batched_nms`` into ONNX ``TopK``, ``NonZero`` and
``NonMaxSuppression``, so the graph (:class:`FinalDetections`) returns the final boxes (N, 4),
scores (N,) and labels (N,) of one image and the runtime only reads them. What tracing costs:
the graph takes exactly the run's input, batch 1 at ``img_size`` (the runtime feeds images one
by one), and it is traced on the validation image with the most detections, because a trace
through an image with none records torchvision's empty-input early return as the whole graph.
The export's ``detection`` metadata says which kind a file is (``selection``: ``runtime`` or
``graph``; exports written before the key existed are boxnet's, ``runtime``).

Measured on the shared 2-core development machine (load average about 5: indicative only),
on runs of the 32-image squares set at 64 px (FCOS 3 epochs, SSDlite and Faster R-CNN 2,
RetinaNet 6), one thread, batch 1, 8 validation images, ``benchmarks/detect_export_latency.py``:
parity 758/758 boxes for FCOS (max 7.6e-6 px, 1.4e-7 in score), 788/788 for RetinaNet
(2.7e-5 px), 800/800 for SSDlite (4.6e-5 px), 89/89 for Faster R-CNN (1.8e-4 px); ONNX
Runtime against eager, median ms per image: FCOS 5.7 vs 27.9, RetinaNet 4.3 vs 18.0, SSDlite
2.6 vs 13.4, Faster R-CNN 41.7 vs 35.7 (its RoIAlign and second stage gain nothing). A
RetinaNet run of 2 epochs found no box above 0.05 and was refused (nothing to trace).
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.checkpoint import write_atomic
from cnnkit.deploy.detector import ImageDetector
from cnnkit.deploy.export import NormalizedModel, export_paths, metadata, record_parity, write_graph
from cnnkit.deploy.onnx_detector import BOXES, GRAPH, LABELS, RUNTIME, SCORES, OnnxDetector, iou
from cnnkit.deploy.onnx_runtime import INPUT_NAME, require
from cnnkit.deploy.torch_runtime import load_checkpoint_detector
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.models.detector import CANDIDATES, BoxNet, Detector, cell_centres, decode, ranking_scores

# fp32 ONNX Runtime and PyTorch differ by float rounding: about 1e-5 px on boxes of tens of
# pixels and 1e-6 on scores. A wrong mean, stride or decode shows as pixels and tenths.
BOX_ATOL = 0.05  # px, in the model input
SCORE_ATOL = 1e-3
MATCH_IOU = 0.5  # an ONNX box of the same class overlapping this much is the PyTorch box's counterpart
# PyTorch boxes compared: those a rounding difference cannot push across the score threshold
# or out of the capped list (ties at the 100th place fall either way).
SCORE_MARGIN = 0.01
OPSET = 17  # the TorchScript exporter's graphs of torchvision's detectors (NonMaxSuppression needs 10 or later)


class DecodedBoxNet(nn.Module):
    """boxnet with its decoding: normalised (B, C, S, S) -> boxes (B, A, 4) xyxy input pixels, scores (B, A, K)."""

    def __init__(self, model: BoxNet) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, distances, centerness = self.model.predict_maps(inputs)
        centres = cell_centres(logits.shape[-2:], inputs.device)  # (A, 2)
        boxes = decode(centres, distances.flatten(2).transpose(1, 2))  # (B, A, 4)
        boxes = boxes.clamp(min=0.0, max=float(inputs.shape[-1]))  # clip_boxes_to_image (the input is square)
        scores = ranking_scores(logits.flatten(2).transpose(1, 2).float(), centerness.flatten(2).squeeze(1).float())
        return boxes, scores


class FinalDetections(nn.Module):
    """A torchvision detector's eval output for one image: normalised (1, C, S, S) -> boxes (N, 4), scores, labels."""

    def __init__(self, model: Detector) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        [found] = self.model(inputs)
        return found["boxes"], found["scores"], found["labels"]


def selection_settings(model: Detector) -> dict:
    """What the runtime needs to select detections as the model's eval mode does (the export's ``detection`` key)."""
    if not isinstance(model, BoxNet):  # selected inside the graph: recorded for the parity floor and the reader
        return {"selection": GRAPH, "score_threshold": model.score_threshold, "max_detections": model.max_detections}
    return {
        "selection": RUNTIME,
        "candidates": CANDIDATES,
        "score_threshold": float(model.score_threshold),
        "nms_threshold": float(model.nms_threshold),
        "max_detections": int(model.max_detections),
    }


def write_detector_onnx(model: nn.Module, info: CheckpointInfo, path: Path, example: np.ndarray | None = None) -> None:
    """Export a detection run's model to ``path``: boxnet's decoded maps, or a torchvision detector's final boxes.

    Args:
        model: The run's detector.
        info: Its checkpoint description (preprocessing, classes), written into the metadata.
        path: The ``.onnx`` file, written atomically.
        example: The uint8 image (C, S, S) a torchvision detector is traced on; one that gives detections
            (see the module docstring). Defaults to None, which only boxnet accepts.
    """
    if not isinstance(model, Detector):
        raise CnnkitError(f"{info.model.name} is not a detector; cnnkit export of a classifier run writes its logits")
    model = model.cpu().eval()
    props = {**metadata(info), "detection": json.dumps(selection_settings(model))}
    if isinstance(model, BoxNet):
        write_graph(NormalizedModel(DecodedBoxNet(model), info.preprocessing), info, path, [BOXES, SCORES], props)
        return
    if example is None:
        raise CnnkitError(f"{info.model.name} is exported by tracing: pass an example image that gives detections")
    require("onnx", "onnxruntime")
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on torchvision's shape arithmetic and the deprecation
        torch.onnx.export(
            NormalizedModel(FinalDetections(model), info.preprocessing),
            (torch.from_numpy(np.ascontiguousarray(example[None], np.uint8)),),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[BOXES, SCORES, LABELS],
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    write_atomic(path, proto.SerializeToString())


def tracing_example(reference: ImageDetector, pixels: np.ndarray) -> np.ndarray:
    """The validation image (C, S, S) on which PyTorch finds the most detections, refused when none finds one."""
    counts = [len(found["scores"]) for found in reference.detect(pixels)]
    if not max(counts, default=0):
        raise CnnkitError(
            f"{reference.info.model.name} found no box above its score threshold on any of the run's "
            f"{len(pixels)} validation images, so its graph cannot be traced; train it longer before exporting"
        )
    return pixels[int(np.argmax(counts))]


@dataclass
class BoxParity:
    """How closely ONNX Runtime reproduces PyTorch's detections on the same images (input pixels)."""

    images: int
    boxes: int  # PyTorch detections compared
    matched: int  # of those, with an ONNX detection of the same class at IoU >= MATCH_IOU
    max_box_diff: float  # px, largest coordinate difference of a matched pair
    max_score_diff: float
    box_atol: float = BOX_ATOL
    score_atol: float = SCORE_ATOL

    @property
    def passed(self) -> bool:
        return (
            self.matched == self.boxes and self.max_box_diff <= self.box_atol and self.max_score_diff <= self.score_atol
        )

    def format(self) -> str:
        return (
            f"parity on {self.images} validation images: {self.matched}/{self.boxes} PyTorch boxes matched, "
            f"max |box difference| {self.max_box_diff:.2e} px (tolerance {self.box_atol:g}), "
            f"max |score difference| {self.max_score_diff:.2e} (tolerance {self.score_atol:.0e})"
        )


def check_box_parity(reference: ImageDetector, exported: ImageDetector, pixels: np.ndarray, floor: float) -> BoxParity:
    """Match each PyTorch detection scoring ``floor`` or more to the best-overlapping ONNX one of its class."""
    compared = matched = 0
    box_diff = score_diff = 0.0
    for expected, actual in zip(reference.detect(pixels), exported.detect(pixels)):
        for box, score, label in zip(expected["boxes"], expected["scores"], expected["labels"]):
            if score < floor:
                continue
            compared += 1
            same = np.flatnonzero(actual["labels"] == label)
            if not len(same):
                continue
            overlaps = iou(box, actual["boxes"][same])
            best = same[int(overlaps.argmax())]
            if overlaps.max() < MATCH_IOU:
                continue
            matched += 1
            box_diff = max(box_diff, float(np.abs(actual["boxes"][best] - box).max()))
            score_diff = max(score_diff, abs(float(actual["scores"][best]) - float(score)))
    return BoxParity(len(pixels), compared, matched, box_diff, score_diff)


def validation_pixels(checkpoint: str | Path, info: CheckpointInfo) -> np.ndarray:
    """The run's validation images (its test images when it has none) as uint8 (N, C, S, S), read as in training."""
    from cnnkit.tasks.detect.evaluate import read_split

    for split in ("val", "test"):
        try:
            return read_split(checkpoint, info, None, split)[0].images.numpy()
        except CnnkitError as error:
            if "holds no readable annotated images" not in str(error):
                raise
    raise CnnkitError(f"{checkpoint} has no validation or test images to verify the export on")


def export_detector(
    checkpoint: str | Path, out: str | Path = "runs", name: str | None = None, verbose: bool = True
) -> dict:
    """Export a detection run to ONNX and verify its boxes and scores against PyTorch on the validation images.

    What ``cnnkit export`` runs for a detection run; it writes the files
    :func:`cnnkit.deploy.export.export_onnx` writes (``model.onnx`` and ``export.json`` in a new
    folder under ``out``, or ``out`` itself and its ``.export.json`` sibling).

    Raises:
        CnnkitError: no validation or test images, a torchvision detector that finds nothing on them,
            or an export that disagrees with PyTorch (the model file is then removed).

    Example:
        >>> export_detector("runs/train")["parity"]["matched"]
    """
    say = print if verbose else (lambda *args: None)
    reference = load_checkpoint_detector(checkpoint, device="cpu")
    pixels = validation_pixels(checkpoint, reference.info)
    path, _, report_path = export_paths(out, name)
    example = None if isinstance(reference.model, BoxNet) else tracing_example(reference, pixels)
    write_detector_onnx(reference.model, reference.info, path, example)
    exported = OnnxDetector(path)
    floor = exported.settings["score_threshold"] + SCORE_MARGIN
    parity = check_box_parity(reference, exported, pixels, floor)
    report = record_parity(path, report_path, parity, say)
    say(f"report written to {report_path}")
    return report

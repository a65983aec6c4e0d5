"""What a detection says about one image: its boxes, labels and scores, in the image's original pixels.

``cnnkit predict RUN images --json`` prints one record per image,
``{"path": ..., "boxes": [{"label": ..., "score": ..., "box": [x1, y1, x2, y2]}, ...]}``,
best score first; the boxes follow :mod:`cnnkit.data.boxes`' convention (continuous
pixels of the upright original image), so they can be drawn on the file as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.checkpoint import load_model
from cnnkit.compute import select_device
from cnnkit.data.boxes import image_sizes
from cnnkit.data.boxset import Placement
from cnnkit.data.decode import decode_batches
from cnnkit.tasks.detect.evaluate import BATCH_SIZE, detect_images, to_original

THRESHOLD = 0.25  # lowest score predict reports by default: evaluation keeps 0.05 for mAP's tail, a reader wants fewer
MAX_BOXES = 100  # boxes per image, at most (every detector keeps 100, COCO's maxDets)


@dataclass
class BoxPrediction:
    """One image's detections: ``boxes`` (N, 4) xyxy in original pixels, ``scores`` (N,), class ``labels`` (N,)."""

    source: str
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.source,
            "boxes": [
                {"label": label, "score": score, "box": box}
                for label, score, box in zip(self.labels, self.scores, self.boxes)
            ],
        }


def rank_boxes(
    detection: dict[str, np.ndarray], classes: Sequence[str], source: str, threshold: float, max_boxes: int
) -> BoxPrediction:
    """Detections scoring ``threshold`` or more, best first (ties keep the detector's order), ``max_boxes`` at most."""
    scores = np.asarray(detection["scores"], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= threshold][:max_boxes]
    return BoxPrediction(
        source,
        [[round(float(v), 2) for v in box] for box in detection["boxes"][order]],
        [float(scores[i]) for i in order],
        [classes[int(detection["labels"][i])] for i in order],
    )


def predict_boxes(
    checkpoint: str | Path,
    paths: Sequence[str | Path],
    threshold: float = THRESHOLD,
    max_boxes: int = MAX_BOXES,
    device: str = "auto",
) -> tuple[list[BoxPrediction], list[tuple[str, str]]]:
    """Detect objects in image files with a detection run (or checkpoint).

    Each file is decoded as training decoded it (the checkpoint's preprocessing), and the
    boxes are moved back to the file's upright original pixels.

    Args:
        checkpoint: A run directory or ``.safetensors`` checkpoint of a detector.
        paths: Image files.
        threshold: Lowest score reported. Defaults to 0.25.
        max_boxes: Most boxes reported per image. Defaults to 100.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.

    Returns:
        One :class:`BoxPrediction` per readable file, and (path, reason) for each file that is not.

    Example:
        >>> predictions, _ = predict_boxes("runs/train", ["shelf.jpg"])
        >>> predictions[0].to_dict()["boxes"][0]["label"]
    """
    chosen = select_device(device)
    model, info = load_model(checkpoint, chosen)
    prep = info.preprocessing
    sizes = image_sizes(Path(), [str(path) for path in paths])
    predictions, failures = [], []
    for images, names, failed in decode_batches(paths, prep.img_size, prep.channels, prep.resize, BATCH_SIZE):
        failures += failed
        if images is None:
            continue
        found = detect_images(model, torch.from_numpy(images), prep, chosen)
        for name, detection in zip(names, found):
            size = sizes[name]
            if isinstance(size, str):  # decoded, yet its header gave no size: nowhere to put the boxes back
                failures.append((name, size))
                continue
            moved = to_original(detection, Placement.of(size, prep.img_size, prep.resize), size)
            predictions.append(rank_boxes(moved, info.classes, name, threshold, max_boxes))
    return predictions, failures

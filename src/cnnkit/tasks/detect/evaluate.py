"""Detections of a split and their COCO mAP, in original pixels: training's validation, its final test and ``evaluate``.

One path for all three, so a run's ``results.json`` and ``cnnkit evaluate RUN --json``
give the same numbers: the images are decoded at the checkpoint's preprocessing, the
detector runs in fp32 in batches of :data:`BATCH_SIZE`, each detection goes back to its
image's original pixels (:class:`cnnkit.data.boxset.Placement`) and is clipped there, and
:func:`cnnkit.tasks.detect.metrics.evaluate_detections` compares them with the
annotations as read, crowd and difficult boxes included.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.checkpoint import METADATA_KEY, load_model, resolve_checkpoint
from cnnkit.compute import select_device
from cnnkit.data.annotations import load_detection
from cnnkit.data.boxset import BoxedSet, decode_boxed
from cnnkit.data.imageset import SkippedFile
from cnnkit.data.placement import to_original
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, Preprocessing
from cnnkit.models import list_models
from cnnkit.safeload import read_header
from cnnkit.tasks.detect.metrics import DetectionMetrics, evaluate_detections

BATCH_SIZE = 32  # images per forward pass at evaluation; fixed, so every caller batches alike


@torch.no_grad()
def detect_images(
    model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing, device: torch.device
) -> list[dict[str, np.ndarray]]:
    """Detections ``{"boxes" (N, 4), "scores" (N,), "labels" (N,)}`` per uint8 image (B, C, S, S), in input pixels."""
    model.eval()
    found = []
    for start in range(0, len(images), BATCH_SIZE):
        inputs = preprocessing.normalize(images[start : start + BATCH_SIZE].to(device))
        found += [{key: value.cpu().numpy() for key, value in d.items()} for d in model(inputs)]
    return found


def evaluate_boxes(
    model: nn.Module, data: BoxedSet, preprocessing: Preprocessing, device: torch.device
) -> DetectionMetrics:
    """COCO mAP of ``model`` on one split, in original pixels."""
    found = detect_images(model, data.images, preprocessing, device)
    predictions = [to_original(d, p, item.size) for d, p, item in zip(found, data.placements, data.items)]
    targets = [
        {"boxes": item.boxes, "labels": item.labels, "crowd": item.crowd, "difficult": item.difficult}
        for item in data.items
    ]
    return evaluate_detections(predictions, targets, data.classes)


def is_detection_run(path: str | Path) -> bool:
    """Whether ``path`` is a run directory or checkpoint of a detector (read from its header only)."""
    path = Path(path).expanduser()
    if not (path.is_dir() or (path.is_file() and path.suffix.lower() == ".safetensors")):
        return False
    try:
        _, header = read_header(resolve_checkpoint(path))
        name = json.loads(header[METADATA_KEY])["model"]["name"]
    except (CnnkitError, KeyError, ValueError, TypeError):
        return False
    return name in list_models(task="detect")


def _match_classes(data: BoxedSet, info: CheckpointInfo, where: str) -> BoxedSet:
    """The split with its labels renumbered to the model's classes (matched by name)."""
    if data.classes == info.classes:
        return data
    unknown = [name for name in data.classes if name not in info.classes]
    if unknown:
        raise CnnkitError(
            f"{where} has class(es) {', '.join(unknown)} that the model does not know (it detects "
            f"{', '.join(info.classes)}); evaluate on data annotated with the model's classes"
        )
    lookup = np.array([info.classes.index(name) for name in data.classes], dtype=np.int64)
    for item in data.items:
        item.labels = lookup[item.labels]
    data.classes = list(info.classes)
    return data


def evaluate_run(
    checkpoint: str | Path, data: str | None = None, split: str = "test", device: str = "auto"
) -> tuple[DetectionMetrics, int, list[SkippedFile]]:
    """COCO mAP of a detection run (or checkpoint) on a split of annotated data.

    The split is the run's own: its ``val_split`` and ``test_split`` carve the same images
    from a folder without split folders, as training did.

    Args:
        checkpoint: A run directory or a ``.safetensors`` checkpoint of a detector.
        data: An annotated folder (COCO, YOLO or VOC); defaults to the data the run trained on.
        split: ``train``, ``val`` or ``test``. Defaults to ``test``.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.

    Returns:
        The metrics, the number of images evaluated, and annotations or images skipped.

    Example:
        >>> metrics, count, _ = evaluate_run("runs/train", "shelves")
        >>> metrics.map50
    """
    chosen = select_device(device)
    model, info = load_model(checkpoint, chosen)
    boxed, skipped = read_split(checkpoint, info, data, split)
    return evaluate_boxes(model, boxed, info.preprocessing, chosen), len(boxed), skipped


def read_split(
    checkpoint: str | Path, info: CheckpointInfo, data: str | None, split: str
) -> tuple[BoxedSet, list[SkippedFile]]:
    """A split of annotated data decoded at the run's preprocessing, its classes the model's; and what was skipped.

    ``data`` defaults to the run's own, split by its ``val_split`` and ``test_split`` as training split it.
    """
    config = info.extra.get("config", {})
    folder = data or config.get("data")
    if not folder:
        raise CnnkitError(f"{checkpoint} does not record its training data; give --data FOLDER")
    splits = load_detection(folder, config.get("val_split", 0.1), config.get("test_split", 0.2))
    prep = info.preprocessing
    workers = config.get("workers") or os.cpu_count() or 1
    items = getattr(splits, split)
    boxed, failed = decode_boxed(
        Path(splits.name), items, splits.classes, prep.img_size, prep.channels, prep.resize, workers
    )
    if not len(boxed):
        raise CnnkitError(f"the {split} split of {folder} holds no readable annotated images")
    return _match_classes(boxed, info, f"the {split} split of {folder}"), [*splits.skipped, *failed]

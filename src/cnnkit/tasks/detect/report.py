"""A detection run's figures: loss and mAP per epoch, precision-recall per class, and detections drawn on images.

``curves.png`` (the loss parts and validation mAP per epoch), ``pr_curves.png`` (each
class's precision-recall curve at IoU 0.5 on the test split, else validation) and
``predictions.png`` (the first images of that split with their annotated boxes and the
best checkpoint's detections).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.data.boxset import BoxedSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.detect.evaluate import detect_images
from cnnkit.tasks.detect.metrics import DetectionMetrics
from cnnkit.tasks.detect.records import THRESHOLD
from cnnkit.understand import figures

GALLERY_IMAGES, GALLERY_COLUMNS = 12, 4
GALLERY_BOXES = 10  # detections drawn per image at most (best first): more hide the image


def plot_detection_curves(history: list[dict[str, float]], path: Path) -> None:
    """Training loss parts (left) and validation mAP@[.5:.95] and mAP@0.5 (right) per epoch.

    Args:
        history: The epoch rows of ``metrics.csv``: ``train_<part>`` losses, ``val_map``, ``val_map50``.
        path: The PNG to write.
    """
    plt = figures.pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, map_axes) = plt.subplots(1, 2, figsize=(10, 4))
    parts = [key for key in (history[0] if history else {}) if key.startswith("train_")]
    for key in parts:
        loss_axes.plot(epochs, [row[key] for row in history], marker=".", label=key[6:])
    for key, label in (("val_map", "mAP@[.5:.95]"), ("val_map50", "mAP@0.5")):
        values = [row[key] for row in history]
        if not all(math.isnan(value) for value in values):
            map_axes.plot(epochs, values, marker=".", label=label)
    loss_axes.set(title="training loss", xlabel="epoch")
    map_axes.set(title="validation mAP", xlabel="epoch", ylim=(0.0, 1.0))
    for axes in (loss_axes, map_axes):
        axes.grid(alpha=0.3)
        if axes.lines:
            axes.legend()
    figures.save(figure, path, dpi=100)


def plot_precision_recall(metrics: DetectionMetrics, path: Path, title: str) -> None:
    """Each class's interpolated precision against recall at IoU 0.5 (COCO's 101 recall points), with its AP@0.5."""
    plt = figures.pyplot()
    figure, axes = plt.subplots(figsize=(6, 4.5))
    ap50 = metrics.per_class(0.5)
    for k, name in enumerate(metrics.classes):
        if metrics.num_targets[k]:  # a class without boxes in the split has no curve (COCO's -1)
            recall, precision = metrics.curve(k, 0.5)
            axes.plot(recall, precision, label=f"{name} (AP@0.5 {ap50[name]:.3f})")
    axes.set(title=title, xlabel="recall", ylabel="precision", xlim=(0.0, 1.0), ylim=(0.0, 1.02))
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend(fontsize="small")
    figures.save(figure, path, dpi=100)


def plot_gallery(
    images: torch.Tensor,
    found: Sequence[dict[str, np.ndarray]],
    truth: Sequence[np.ndarray],
    classes: Sequence[str],
    path: Path,
    threshold: float,
) -> None:
    """Images (N, C, S, S) uint8 with their annotated boxes (dashed white) and their best detections scoring
    ``threshold`` or more (solid, a colour per class, label and score), all in the images' own pixels."""
    plt = figures.pyplot()
    columns = min(GALLERY_COLUMNS, len(images))
    rows = -(-len(images) // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.6 * rows), squeeze=False)
    palette = plt.get_cmap("tab10")
    for axes, image, detection, boxes in zip(grid.flat, images, found, truth):
        figures.show_image(axes, image)
        for x1, y1, x2, y2 in boxes:
            axes.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", ls="--", lw=1))
        best = zip(detection["boxes"][:GALLERY_BOXES], detection["scores"], detection["labels"])  # best first
        for (x1, y1, x2, y2), score, label in best:
            if score >= threshold:
                colour = palette(int(label) % 10)
                axes.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec=colour, lw=1.5))
                axes.text(x1, y1, f"{classes[int(label)]} {score:.2f}", color="white", fontsize=6, va="bottom",
                          bbox={"facecolor": colour, "pad": 1, "lw": 0})  # fmt: skip
    for axes in list(grid.flat)[len(images) :]:
        axes.axis("off")
    figures.save(figure, path, dpi=100)


def write_split_figures(
    model: nn.Module,
    data: BoxedSet,
    metrics: DetectionMetrics,
    preprocessing: Preprocessing,
    device: torch.device,
    run_dir: Path,
    split: str,
) -> None:
    """``pr_curves.png`` from a split's metrics, and ``predictions.png``: its first images with their detections."""
    plot_precision_recall(metrics, run_dir / "pr_curves.png", f"{split}: precision-recall at IoU 0.5")
    shown = min(GALLERY_IMAGES, len(data))
    images = data.images[:shown]
    found = detect_images(model, images, preprocessing, device)
    truth = [placement.to_input(item.boxes) for placement, item in zip(data.placements, data.items[:shown])]
    plot_gallery(images, found, truth, data.classes, run_dir / "predictions.png", THRESHOLD)

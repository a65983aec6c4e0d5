"""A detection run's figures: the loss parts and the validation mAP per epoch (``curves.png``)."""

from __future__ import annotations

import math
from pathlib import Path

from cnnkit.understand import figures


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

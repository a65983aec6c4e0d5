"""Training curves and confusion matrices as PNG files (matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path

from cnnkit.figures import pyplot


def plot_curves(history: list[dict], path: Path) -> None:
    """Loss and accuracy per epoch, train against validation."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, accuracy_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "val"):
        loss_axes.plot(epochs, [row[f"{split}_loss"] for row in history], marker=".", label=split)
        accuracy_axes.plot(epochs, [row[f"{split}_acc"] for row in history], marker=".", label=split)
    loss_axes.set(title="loss", xlabel="epoch")
    accuracy_axes.set(title="accuracy", xlabel="epoch", ylim=(None, 1.0))
    for axes in (loss_axes, accuracy_axes):
        axes.grid(alpha=0.3)
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "confusion matrix") -> None:
    """Counts with rows as true classes, shaded by the share of each row."""
    plt = pyplot()
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    totals = [max(1, sum(row)) for row in confusion]
    shares = [[count / total for count in row] for row, total in zip(confusion, totals)]
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                axes.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if shares[i][j] > 0.5 else "black",
                )
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)

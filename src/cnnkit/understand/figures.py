"""Figures shared by ``explain``, the evaluation report and ``compare`` (matplotlib, imported only here).

Images are drawn with their heatmap over them; series and spectrograms (:func:`plot_signals`) with the
heat over time in a coloured band underneath, so the curve itself stays readable.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import torch

MAX_FEATURE_ROWS = 16  # deep networks (a ResNet-50 has 53 convolutions) show an evenly spaced selection
FEATURE_COLUMNS = 8


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def show_image(axes, image: torch.Tensor) -> None:
    """Draw a uint8 image (C, H, W), grayscale or RGB, without axes."""
    if image.shape[0] == 1:
        axes.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        axes.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    axes.axis("off")


def show_heatmap(axes, image: torch.Tensor, heatmap: torch.Tensor) -> None:
    """The image in gray with a [0, 1] heatmap (H, W) over it, as Grad-CAM figures are usually drawn."""
    axes.imshow(image.float().mean(0).numpy(), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    axes.imshow(heatmap.numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
    axes.axis("off")


def save(figure, path: Path, dpi: int = 80) -> None:
    plt = pyplot()
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    plt.close(figure)


def plot_explanations(image: torch.Tensor, rows: Sequence[tuple[str, Sequence[torch.Tensor]]], path: Path) -> None:
    """One row per explained class: the input, then one heatmap per method (Grad-CAM, Grad-CAM++, saliency)."""
    plt = pyplot()
    columns = ["input", "Grad-CAM", "Grad-CAM++", "saliency"]
    figure, grid = plt.subplots(len(rows), len(columns), figsize=(2.2 * len(columns), 2.3 * len(rows)), squeeze=False)
    for axes_row, (label, heatmaps) in zip(grid, rows):
        show_image(axes_row[0], image)
        axes_row[0].set_title(label, fontsize=9)
        for axes, title, heatmap in zip(axes_row[1:], columns[1:], heatmaps):
            show_heatmap(axes, image, heatmap)
            axes.set_title(title, fontsize=9)
        for axes in axes_row[1 + len(heatmaps) :]:
            axes.axis("off")
    save(figure, path)


def show_signal(axes, band, view: torch.Tensor, heat: torch.Tensor) -> None:
    """A series (C, L) as lines, or a spectrogram (F, T) with its heat over it; the heat over time in ``band``.

    Args:
        axes: Where the signal goes.
        band: A flat axes under it, sharing its time axis: the heat (L,) as a coloured strip (for a
            spectrogram, its heat (F, T) averaged over the frequencies).
        view: Series values (C, L), or a log-mel spectrogram (F, T) (frequency upwards).
        heat: [0, 1] heat (L,) for a series, (F, T) for a spectrogram.
    """
    steps = view.shape[-1]
    if heat.dim() == 2:
        extent = (0, steps, 0, view.shape[0])
        axes.imshow(view.numpy(), cmap="magma", origin="lower", aspect="auto", extent=extent, interpolation="nearest")
        overlay = heat.numpy()  # opaque where hot, so the spectrogram shows through where the model did not look
        axes.imshow(
            overlay, cmap="jet", alpha=0.6 * overlay, vmin=0, vmax=1, origin="lower", aspect="auto", extent=extent
        )
        axes.set_ylabel("mel band", fontsize=7)
        heat = heat.mean(0)
    else:
        for channel in view:
            axes.plot(range(steps), channel.numpy(), lw=1)
        axes.set_xlim(0, steps - 1)
        axes.grid(alpha=0.3)
    axes.tick_params(labelsize=7, labelbottom=False)
    band.imshow(heat[None].numpy(), cmap="jet", vmin=0, vmax=1, aspect="auto", extent=(0, steps, 0, 1))
    band.set_yticks([])
    band.tick_params(labelsize=7)


def plot_signals(rows: Sequence[tuple[str, torch.Tensor, torch.Tensor]], path: Path) -> None:
    """One panel per ``(title, view, heat)``: the series or spectrogram, its heat over time in a band underneath."""
    plt = pyplot()
    figure = plt.figure(figsize=(8, 1.9 * len(rows)))
    panels = figure.add_gridspec(len(rows), 1, hspace=0.45)
    for panel, (title, view, heat) in zip(panels, rows):
        pair = panel.subgridspec(2, 1, height_ratios=[4, 1], hspace=0.05)
        axes = figure.add_subplot(pair[0])
        band = figure.add_subplot(pair[1], sharex=axes)
        show_signal(axes, band, view, heat)
        axes.set_title(title, fontsize=8, loc="left")
    band.set_xlabel("frame" if rows[-1][2].dim() == 2 else "time step", fontsize=8)
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)


def spread(count: int, limit: int) -> list[int]:
    """Up to ``limit`` evenly spaced indices of ``range(count)``, always keeping the first and last."""
    if count <= limit:
        return list(range(count))
    return sorted({round(i * (count - 1) / (limit - 1)) for i in range(limit)})


def plot_feature_maps(maps: dict[str, torch.Tensor], path: Path) -> None:
    """One row per convolution: its most active channels for one image, each (C, H, W) map scaled on its own."""
    plt = pyplot()
    names = list(maps)
    chosen = [names[i] for i in spread(len(names), MAX_FEATURE_ROWS)]
    figure, grid = plt.subplots(
        len(chosen), FEATURE_COLUMNS, figsize=(1.3 * FEATURE_COLUMNS, 1.45 * len(chosen)), squeeze=False
    )
    for axes_row, name in zip(grid, chosen):
        activations = maps[name]  # (C, H, W) or (C, L)
        if activations.dim() == 2:
            activations = activations.unsqueeze(1)  # 1-D maps drawn as one-pixel-high strips
        strongest = activations.flatten(1).abs().mean(1).argsort(descending=True)[:FEATURE_COLUMNS]
        for column, axes in enumerate(axes_row):
            axes.axis("off")
            if column < len(strongest):
                axes.imshow(activations[strongest[column]].numpy(), cmap="viridis", interpolation="nearest")
        axes_row[0].set_title(f"{name} {tuple(maps[name].shape)}", fontsize=8, loc="left")
    save(figure, path)


def plot_filters(weights: torch.Tensor, path: Path, limit: int = 64) -> None:
    """First-layer filters (out, in, *kernel) as a grid: RGB when they read 3 channels, else their channel mean."""
    plt = pyplot()
    weights = weights[:limit].float()
    if weights.dim() == 3:  # 1-D kernels (out, in, k) drawn as strips
        weights = weights.unsqueeze(2)
    count = len(weights)
    columns = min(8, count)
    rows = -(-count // columns)
    figure, grid = plt.subplots(rows, columns, figsize=(1.1 * columns, 1.1 * rows), squeeze=False)
    for index, axes in enumerate(grid.flat):
        axes.axis("off")
        if index >= count:
            continue
        kernel = weights[index]
        kernel = (kernel - kernel.min()) / (kernel.max() - kernel.min()).clamp(min=1e-12)
        if kernel.shape[0] == 3:
            axes.imshow(kernel.permute(1, 2, 0).numpy(), interpolation="nearest")
        else:
            axes.imshow(kernel.mean(0).numpy(), cmap="gray", interpolation="nearest")
    figure.suptitle(f"first-layer filters ({count} shown)", fontsize=9)
    save(figure, path)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small HTML table; cells are escaped, floats shown with 4 significant digits."""

    def cell(value: object) -> str:
        return html.escape(f"{value:.4g}" if isinstance(value, float) else str(value))

    head = "".join(f"<th>{cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def html_page(title: str, body: str) -> str:
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


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
    save(figure, path, dpi=100)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: Path, title: str = "confusion matrix") -> None:
    """The confusion matrix figure of every run and report: counts (K, K), rows true classes, shaded by row share.

    Training writes it as ``confusion_matrix.png`` and the report as ``confusion.png``, from
    the same predictions (test-time flip included where the run has it), so they agree.
    """
    plt = pyplot()
    size = max(4.0, 0.5 * len(classes) + 2)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    totals = [max(1, sum(row)) for row in confusion]
    shares = [[count / total for count in row] for row, total in zip(confusion, totals)]
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    if len(classes) <= 30:
        for i, row in enumerate(confusion):
            for j, count in enumerate(row):
                color = "white" if shares[i][j] > 0.5 else "black"
                axes.text(j, i, str(count), ha="center", va="center", fontsize=8, color=color)
        axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
        axes.set_yticks(range(len(classes)), classes)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of true class")
    save(figure, path, dpi=100)

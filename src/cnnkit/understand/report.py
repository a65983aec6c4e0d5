"""The evaluation report: one HTML page with the numbers and pictures that say where a model fails.

Accuracy and per-class precision/recall/F1, the confusion matrix (counts and row shares),
the most confused pairs, a gallery of the most confidently wrong images with their
Grad-CAM, calibration (reliability diagram and expected calibration error) and
horizontal-flip test-time augmentation. ``cnnkit evaluate --report`` writes it, and so
does every training run (``report/`` in the run directory).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import ImageSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.classify.evaluate import predict_logits
from cnnkit.tasks.classify.metrics import confusion_matrix, per_class_report

CALIBRATION_BINS = 10
GALLERY_SIZE = 12
CONFUSED_PAIRS = 10


@dataclass
class CalibrationBin:
    """Predictions whose confidence fell in [low, high): how many, how confident on average, how often right."""

    low: float
    high: float
    count: int
    confidence: float
    accuracy: float


def calibration(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS
) -> tuple[list[CalibrationBin], float]:
    """Reliability bins of the top-class confidence, and the expected calibration error (Guo et al., 2017).

    The ECE is the count-weighted mean gap between confidence and accuracy over equal-width bins.

    Args:
        probabilities: Class probabilities (N, K).
        labels: True classes (N,).
        bins: Equal-width confidence bins over [0, 1]. Defaults to 10.
    """
    confidence, predictions = probabilities.max(1)
    correct = (predictions == labels).double()
    index = (confidence * bins).long().clamp(max=bins - 1)  # confidence 1.0 belongs to the last bin
    result, error = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        mean_confidence = float(confidence[members].double().mean()) if count else 0.0
        accuracy = float(correct[members].mean()) if count else 0.0
        result.append(CalibrationBin(b / bins, (b + 1) / bins, count, mean_confidence, accuracy))
        error += count * abs(mean_confidence - accuracy)
    return result, error / max(1, len(labels))


def most_confused(confusion: torch.Tensor, classes: list[str], limit: int = CONFUSED_PAIRS) -> list[tuple]:
    """(true class, predicted class, count) for the largest off-diagonal cells, largest first."""
    off = confusion.clone()
    off.fill_diagonal_(0)
    order = off.flatten().argsort(descending=True, stable=True)[:limit]
    k = len(classes)
    return [(classes[i // k], classes[i % k], int(off.flatten()[i])) for i in order.tolist() if off.flatten()[i] > 0]


def _plot_confusions(confusion: torch.Tensor, classes: list[str], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    size = max(4.0, 0.45 * len(classes) + 2)
    figure, axes_pair = plt.subplots(1, 2, figsize=(2 * size + 1, size))
    shares = confusion.double() / confusion.sum(1, keepdim=True).clamp(min=1)
    for axes, values, title in ((axes_pair[0], confusion, "counts"), (axes_pair[1], shares, "share of true class")):
        axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
        if len(classes) <= 20:
            for i in range(len(classes)):
                for j in range(len(classes)):
                    text = f"{int(values[i, j])}" if values is confusion else f"{float(values[i, j]):.2f}"
                    color = "white" if shares[i, j] > 0.5 else "black"
                    axes.text(j, i, text, ha="center", va="center", fontsize=7, color=color)
            axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=8)
            axes.set_yticks(range(len(classes)), classes, fontsize=8)
        axes.set(xlabel="predicted", ylabel="true", title=title)
    figures.save(figure, path)


def _plot_reliability(bins: list[CalibrationBin], ece: float, path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, axes = plt.subplots(figsize=(4.5, 4.2))
    filled = [b for b in bins if b.count]
    axes.bar([b.low for b in filled], [b.accuracy for b in filled], width=1 / len(bins), align="edge", label="accuracy")
    axes.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    axes.plot([b.confidence for b in filled], [b.accuracy for b in filled], "o", color="tab:red", label="bin mean")
    axes.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"reliability (ECE {ece:.3f})")
    axes.legend(fontsize=8, loc="upper left")
    figures.save(figure, path)


def _plot_gallery(images: torch.Tensor, heatmaps: list[torch.Tensor] | None, titles: list[str], path: Path) -> None:
    from cnnkit.understand import figures

    plt = figures.pyplot()
    rows = 2 if heatmaps else 1
    figure, grid = plt.subplots(rows, len(images), figsize=(1.7 * len(images), 1.9 * rows), squeeze=False)
    for column, (image, title) in enumerate(zip(images, titles)):
        figures.show_image(grid[0][column], image)
        grid[0][column].set_title(title, fontsize=7)
        if heatmaps:
            figures.show_heatmap(grid[1][column], image, heatmaps[column])
    figures.save(figure, path)


def _gallery(model, images, prep, device, probabilities, labels, classes, out_dir) -> list[dict]:
    """The most confidently wrong images, with the Grad-CAM of the class the model wrongly chose."""
    from cnnkit.understand.explain import class_activation_map, convolutions, find_target_layer

    confidence, predictions = probabilities.max(1)
    wrong = (predictions != labels).nonzero().flatten()
    if len(wrong) == 0:
        return []
    chosen = wrong[confidence[wrong].argsort(descending=True)[:GALLERY_SIZE]]
    heatmaps = None
    if convolutions(model):
        inputs = prep.normalize(images[chosen].to(device))
        layer = find_target_layer(model, inputs)
        heatmaps = list(class_activation_map(model, inputs, predictions[chosen].to(device), layer).cpu())
    titles = [f"true {classes[labels[i]]}\npred {classes[predictions[i]]} {confidence[i]:.0%}" for i in chosen]
    _plot_gallery(images[chosen], heatmaps, titles, out_dir / "top_losses.png")
    return [
        {"index": int(i), "true": classes[labels[i]], "predicted": classes[predictions[i]], "confidence": float(c)}
        for i, c in zip(chosen.tolist(), confidence[chosen].tolist())
    ]


def write_report(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    device: torch.device,
    out_dir: Path,
    title: str = "Evaluation report",
) -> dict:
    """Write ``report.html``, ``report.json`` and their PNGs into ``out_dir`` (created if needed).

    Args:
        model: The trained model.
        data: Labelled images to evaluate on; labels index ``data.classes``.
        preprocessing: The model's preprocessing.
        device: Where to run the model.
        out_dir: Output folder.
        title: Heading of the page. Defaults to ``Evaluation report``.

    Returns:
        The numbers of ``report.json``: accuracy, flip-TTA accuracy, ECE, per-class
        report, most confused pairs and the top losses.
    """
    from cnnkit.understand import figures

    out_dir.mkdir(parents=True, exist_ok=True)
    classes, labels = data.classes, data.labels
    logits = predict_logits(model, data.images, preprocessing, device)  # (N, K)
    probabilities = logits.softmax(1)
    flipped = predict_logits(model, data.images, preprocessing, device, flip=True).softmax(1)
    predictions = probabilities.argmax(1)
    confusion = confusion_matrix(predictions, labels, len(classes))
    bins, ece = calibration(probabilities, labels)
    results = {
        "count": len(labels),
        "accuracy": float((predictions == labels).double().mean()),
        "loss": float(nn.functional.cross_entropy(logits, labels)),
        "tta_flip_accuracy": float((((probabilities + flipped) / 2).argmax(1) == labels).double().mean()),
        "expected_calibration_error": ece,
        "per_class": [asdict(r) for r in per_class_report(confusion, classes)],
        "most_confused": most_confused(confusion, classes),
        "calibration": [asdict(b) for b in bins],
        "confusion": confusion.tolist(),
        "classes": classes,
    }
    _plot_confusions(confusion, classes, out_dir / "confusion.png")
    _plot_reliability(bins, ece, out_dir / "reliability.png")
    results["top_losses"] = _gallery(model, data.images, preprocessing, device, probabilities, labels, classes, out_dir)
    (out_dir / "report.json").write_text(json.dumps(results, indent=2))
    summary = figures.html_table(
        ["images", "accuracy", "loss", "flip-TTA accuracy", "expected calibration error"],
        [(results["count"], f"{results['accuracy']:.2%}", results["loss"], f"{results['tta_flip_accuracy']:.2%}", ece)],
    )
    per_class = figures.html_table(
        ["class", "precision", "recall", "F1", "support"],
        [(r["name"], r["precision"], r["recall"], r["f1"], r["support"]) for r in results["per_class"]],
    )
    pairs = figures.html_table(["true", "predicted as", "count"], results["most_confused"])
    gallery = (
        '<img src="top_losses.png" alt="top losses"><p>Top row: the image; bottom row (convolutional models): '
        "the Grad-CAM of the wrongly predicted class.</p>"
        if results["top_losses"]
        else "<p>No image was misclassified.</p>"
    )
    body = (
        f"{summary}<p>Flip-TTA averages the probabilities of each image and its mirror image; on data whose "
        "meaning changes when mirrored (digits, text) it is expected to hurt.</p>"
        f"<h2>Per class</h2>{per_class}<h2>Confusion matrix</h2>"
        f'<img src="confusion.png" alt="confusion matrix"><h2>Most confused pairs</h2>{pairs}'
        f"<h2>Most confidently wrong</h2>{gallery}<h2>Calibration</h2>"
        '<img src="reliability.png" alt="reliability diagram"><p>Bars below the diagonal: over-confident.</p>'
    )
    (out_dir / "report.html").write_text(figures.html_page(title, body))
    return results

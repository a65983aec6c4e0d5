"""The evaluation report: one HTML page with the numbers and pictures that say where a model fails.

Accuracy and per-class precision/recall/F1, the confusion matrix, the most confused
pairs, a gallery of the most confidently wrong images (named by file) with their
Grad-CAM (for series and audio clips: each curve or spectrogram with its Grad-CAM over
time underneath, :mod:`cnnkit.understand.signals`), and calibration (reliability
diagram and expected calibration error).
``cnnkit evaluate --report`` writes it, and so does every training run (``report/`` in
the run directory). Every number comes from the predictions the model makes, with the
run's test-time flip where it has one, so the page agrees with the console,
``results.json`` and ``cnnkit evaluate``; the accuracy of the other view (with or
without the flip) is shown beside it.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.data import ImageSet
from cnnkit.data.series import SeriesSet
from cnnkit.modelinfo import AudioPreprocessing, Preprocessing, SeriesPreprocessing
from cnnkit.tasks.classify.evaluate import predict_logits, score
from cnnkit.understand import figures

CALIBRATION_BINS = 10
GALLERY_SIZE = 12
SIGNAL_GALLERY_SIZE = 8  # series rows are a full figure wide: eight keep the page short
CONFUSED_PAIRS = 10
TITLE_CHARACTERS = 18  # of a file name above its gallery image; the table below holds the full path


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


def _plot_reliability(bins: list[CalibrationBin], ece: float, path: Path) -> None:
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
    plt = figures.pyplot()
    rows = 2 if heatmaps else 1
    figure, grid = plt.subplots(rows, len(images), figsize=(1.7 * len(images), 2.1 * rows), squeeze=False)
    for column, (image, title) in enumerate(zip(images, titles)):
        figures.show_image(grid[0][column], image)
        grid[0][column].set_title(title, fontsize=7)
        if heatmaps:
            figures.show_heatmap(grid[1][column], image, heatmaps[column])
    figures.save(figure, path)


def _gallery(model, data: ImageSet | SeriesSet, prep, device, probabilities, out_dir) -> list[dict]:
    """The most confidently wrong images (or series), with the Grad-CAM of the class the model wrongly chose."""
    classes, labels = data.classes, data.labels
    confidence, predictions = probabilities.max(1)
    wrong = (predictions != labels).nonzero().flatten()
    if len(wrong) == 0:
        return []
    signals = prep.modality != "image"
    chosen = wrong[confidence[wrong].argsort(descending=True)[: SIGNAL_GALLERY_SIZE if signals else GALLERY_SIZE]]
    draw = _draw_signals if signals else _draw_images
    draw(model, data, prep, device, chosen, predictions, confidence, out_dir / "top_losses.png")
    return [
        {
            "index": i,
            "source": data.sources[i],
            "true": classes[labels[i]],
            "predicted": classes[predictions[i]],
            "confidence": c,
        }
        for i, c in zip(chosen.tolist(), confidence[chosen].tolist())
    ]


def _draw_images(model, data: ImageSet, prep, device, chosen, predictions, confidence, path: Path) -> None:
    from cnnkit.understand.explain import class_activation_map, convolutions, find_target_layer

    classes, labels = data.classes, data.labels
    heatmaps = None
    if convolutions(model):
        inputs = prep.normalize(data.images[chosen].to(device))
        layer = find_target_layer(model, inputs)
        heatmaps = list(class_activation_map(model, inputs, predictions[chosen].to(device), layer).cpu())
    titles = [
        f"{n}. {Path(data.sources[i]).name[:TITLE_CHARACTERS]}\ntrue {classes[labels[i]]}\n"
        f"pred {classes[predictions[i]]} {confidence[i]:.0%}"
        for n, i in enumerate(chosen.tolist(), 1)
    ]
    _plot_gallery(data.images[chosen], heatmaps, titles, path)


def _draw_signals(model, data: SeriesSet, prep, device, chosen, predictions, confidence, path: Path) -> None:
    """One row per series: the curve (or the spectrogram a keyword spotter computes), its heat over time underneath."""
    from cnnkit.understand.signals import example_title, signal_maps

    classes, labels = data.classes, data.labels
    maps = signal_maps(model, prep.normalize(data.inputs[chosen].to(device)), predictions[chosen].to(device))
    rows = [
        (
            f"{n}. "
            + example_title(data.sources[i], classes[labels[i]], classes[predictions[i]], float(confidence[i])),
            v,
            h,
        )
        for n, (i, v, h) in enumerate(zip(chosen.tolist(), maps.views, maps.heat), 1)
    ]
    figures.plot_signals(rows, path)


def _gallery_section(top_losses: list[dict], signals: bool) -> str:
    if not top_losses:
        return f"<p>No {'series' if signals else 'image'} was misclassified.</p>"
    table = figures.html_table(
        ["", "file", "true", "predicted as", "confidence"],
        [(n, t["source"], t["true"], t["predicted"], f"{t['confidence']:.1%}") for n, t in enumerate(top_losses, 1)],
    )
    if signals:
        return (
            '<img src="top_losses.png" alt="top losses"><p>Top to bottom as in the table: each series (a clip: its '
            "log-mel spectrogram) with the Grad-CAM of the wrongly predicted class in the band underneath; warm "
            f"colours mark the time steps that pulled the model to it. Check these labels first.</p>{table}"
        )
    return (
        '<img src="top_losses.png" alt="top losses"><p>Left to right as in the table. Top row: the image; '
        "bottom row (convolutional models): the Grad-CAM of the wrongly predicted class. A confident mistake is "
        f"often a mislabelled file: check these first.</p>{table}"
    )


def write_report(
    model: nn.Module,
    data: ImageSet | SeriesSet,
    preprocessing: Preprocessing | SeriesPreprocessing | AudioPreprocessing,
    device: torch.device,
    out_dir: Path,
    title: str = "Evaluation report",
    *,
    tta: bool,
) -> dict:
    """Write ``report.html``, ``report.json`` and their PNGs into ``out_dir`` (created if needed).

    Args:
        model: The trained model.
        data: Labelled images (or series, or audio clips) to evaluate on; labels index ``data.classes``.
        preprocessing: The model's preprocessing.
        device: Where to run the model.
        out_dir: Output folder.
        title: Heading of the page. Defaults to ``Evaluation report``.
        tta: Whether the model predicts with test-time flip (the run's
            ``CheckpointInfo.test_time_flip``); no default, so the report cannot quietly
            disagree with ``evaluate``.

    Returns:
        The numbers of ``report.json``: accuracy, loss and macro F1 as the model predicts, the
        accuracy with and without flip, ECE, per-class report, most confused pairs and the top losses.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    classes, labels = data.classes, data.labels
    logits = predict_logits(model, data.inputs, preprocessing, device, tta=tta)  # (N, K)
    result = score(logits, labels, classes)
    signals = preprocessing.modality != "image"  # series and clips: time reversed is no mirror image, so no flip view
    other = (
        result
        if signals
        else score(predict_logits(model, data.inputs, preprocessing, device, tta=not tta), labels, classes)
    )
    probabilities = logits.softmax(1)
    confusion = torch.tensor(result.confusion)
    bins, ece = calibration(probabilities, labels)
    results = {
        "count": result.count,
        "test_time_flip": tta,
        "accuracy": result.accuracy,
        "loss": result.loss,
        "macro_f1": result.macro_f1,
        "absent_classes": result.absent,
        "tta_flip_accuracy": None if signals else result.accuracy if tta else other.accuracy,
        "no_flip_accuracy": result.accuracy if signals else other.accuracy if tta else result.accuracy,
        "expected_calibration_error": ece,
        "per_class": [asdict(r) for r in result.per_class],
        "most_confused": most_confused(confusion, classes),
        "calibration": [asdict(b) for b in bins],
        "confusion": result.confusion,
        "classes": classes,
    }
    flip = " (with test-time flip)" if tta else ""
    figures.plot_confusion(result.confusion, classes, out_dir / "confusion.png", f"confusion matrix{flip}")
    _plot_reliability(bins, ece, out_dir / "reliability.png")
    results["top_losses"] = _gallery(model, data, preprocessing, device, probabilities, out_dir)
    (out_dir / "report.json").write_text(json.dumps(results, indent=2))
    other_header = "accuracy without flip" if tta else "flip-TTA accuracy"
    items = {"series": "series", "audio": "clips"}.get(preprocessing.modality, "images")
    header = [items, f"accuracy{flip}", "loss", "macro F1", other_header, "expected calibration error"]
    row = [result.count, f"{result.accuracy:.2%}", result.loss, result.macro_f1, f"{other.accuracy:.2%}", ece]
    if signals:
        del header[4], row[4]
    summary = figures.html_table(header, [row])
    if signals:
        note = f"The {items} are read as the run read its own; there is no test-time flip for them."
    elif tta:
        note = (
            "This run predicts with test-time flip: each image's probabilities are averaged with those of its "
            "mirror image, as <code>cnnkit evaluate</code>, <code>predict</code> and <code>results.json</code> do. "
            "Every number and picture below uses those predictions."
        )
    else:
        note = (
            "This run predicts without test-time flip; flip-TTA accuracy shows what averaging each image with its "
            "mirror image would give. On data whose meaning changes when mirrored (digits, text) it is expected "
            "to hurt."
        )
    present = [row for row, kept in zip(results["per_class"], result.present) if kept]
    per_class = figures.html_table(
        ["class", "precision", "recall", "F1", "support"],
        [(r["name"], r["precision"], r["recall"], r["f1"], r["support"]) for r in present],
    )
    if result.absent:
        per_class += (
            f"<p>{len(result.absent)} of the model's {len(classes)} classes are absent from these {items} and were "
            f"never predicted; they are left out of the table and of macro F1: "
            f"{html.escape(', '.join(result.absent))}.</p>"
        )
    pairs = figures.html_table(["true", "predicted as", "count"], results["most_confused"])
    body = (
        f"{summary}<p>{note}</p><h2>Per class{flip}</h2>{per_class}<h2>Confusion matrix{flip}</h2>"
        f'<img src="confusion.png" alt="confusion matrix"><h2>Most confused pairs</h2>{pairs}'
        f"<h2>Most confidently wrong</h2>{_gallery_section(results['top_losses'], signals)}<h2>Calibration</h2>"
        '<img src="reliability.png" alt="reliability diagram"><p>Bars below the diagonal: over-confident.</p>'
    )
    (out_dir / "report.html").write_text(figures.html_page(title, body))
    return results

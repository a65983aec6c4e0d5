"""What a 1-D or audio CNN looks at: Grad-CAM over time for series, over the log-mel spectrogram for audio.

The maps are :func:`cnnkit.understand.explain.class_activation_map`, the images' code at
rank 1 and 2. A series model's last convolution keeps the series' length, so its map is a
heat value per time step. A keyword spotter computes its log-mel spectrogram inside the
model (``model.frontend``) and its last convolutions have pooled the frequencies away, so
its map is taken at the last convolution whose output still spans (frequency, time)
(``find_target_layer(..., rank=2)``) and drawn over the spectrogram the model saw. A model
without convolutions (an MLP) gets gradient saliency over its input instead.

:func:`explain_signals` writes, for every class, the most confident correct and wrong test
series with their heat (``class<k>.png``), tied together in ``index.html``.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.understand.explain import Explanation, class_activation_map, convolutions, find_target_layer, saliency

PER_CLASS = 3  # correct and wrong examples shown per class
TITLE_CHARACTERS = 40


@dataclass
class SignalMaps:
    """What to draw for each input and the class's heat over it.

    Attributes:
        views: The series or waveforms (N, C, L) as the model reads them, or for a model with a
            log-mel front end its spectrogram (N, F, T), averaged over the input channels.
        heat: [0, 1] heat (N, L) over time, or (N, F, T) over the spectrogram.
        layer: The target layer, or None where saliency stands in for a model without convolutions.
    """

    views: torch.Tensor
    heat: torch.Tensor
    layer: str | None


def signal_maps(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor, layer: str | None = None) -> SignalMaps:
    """Grad-CAM of ``classes`` for series or waveforms ``inputs`` (B, C, L) at the input's time or spectrogram size.

    Args:
        model: A series or audio classifier; it is put in eval mode.
        inputs: Model inputs (B, C, L).
        classes: The class to explain for each input (B,).
        layer: Target layer. Defaults to the last convolution (over (frequency, time) for a log-mel model).

    Example:
        >>> maps = signal_maps(model, series, logits.argmax(1))
        >>> maps.heat.shape  # (B, L) for a series model
    """
    model.eval()
    frontend = getattr(model, "frontend", None)  # the log-mel front end of a keyword spotter (models/frontend.py)
    views = inputs
    if frontend is not None:
        with torch.no_grad():
            views = frontend(inputs).mean(1)  # (B, F, T)
    if layer is None and not convolutions(model):
        return SignalMaps(views.cpu(), _saliency_over(model, inputs, classes, views).cpu(), None)
    if layer is None:
        layer = find_target_layer(model, inputs, rank=2 if frontend is not None else None)
    size = tuple(views.shape[1:]) if frontend is not None else None
    return SignalMaps(views.cpu(), class_activation_map(model, inputs, classes, layer, size=size).cpu(), layer)


def _saliency_over(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor, views: torch.Tensor) -> torch.Tensor:
    heat = saliency(model, inputs, classes)  # (B, L) over the waveform or series
    if views.dim() == 3 and views.shape[1:] != inputs.shape[1:]:  # a spectrogram is drawn: heat per frame
        frames = nn.functional.adaptive_max_pool1d(heat[:, None], views.shape[-1])[:, 0]  # (B, T)
        heat = frames[:, None].expand(-1, views.shape[1], -1)
    return heat


def choose_examples(labels: torch.Tensor, probabilities: torch.Tensor, per_class: int = PER_CLASS) -> list[list[int]]:
    """For each class, the indices of its ``per_class`` most confident correct and most confidently wrong series."""
    confidence, predictions = probabilities.max(1)
    chosen = []
    for label in range(probabilities.shape[1]):
        picked = []
        for correct in (True, False):
            members = ((labels == label) & ((predictions == labels) == correct)).nonzero().flatten()
            picked += members[confidence[members].argsort(descending=True, stable=True)[:per_class]].tolist()
        chosen.append(picked)
    return chosen


def example_title(source: str, true: str, predicted: str, confidence: float) -> str:
    """The heading of one drawn series: where it came from, its class and what the model said."""
    name = Path(source).name
    name = name if len(name) <= TITLE_CHARACTERS else "..." + name[-TITLE_CHARACTERS:]
    mark = "right" if true == predicted else "WRONG"
    return f"{name}  true {true}, predicted {predicted} ({confidence:.0%}, {mark})"


def explain_signals(classifier, data, out_dir: Path, class_name: str | None = None, layer: str | None = None):
    """Write per class the most confident right and wrong series with their Grad-CAM, ``explain.json`` and a page.

    Args:
        classifier: A :class:`cnnkit.deploy.torch_runtime.Classifier` of a series or audio run.
        data: Labelled series or clips (a :class:`cnnkit.data.series.SeriesSet`), labels in the model's classes.
        out_dir: An existing folder for ``class<k>.png``, ``explain.json`` and ``index.html``.
        class_name: Explain only the series of this class. Defaults to every class.
        layer: Target layer name; defaults to the last convolution.

    Returns:
        An :class:`~cnnkit.understand.explain.Explanation` whose records name each drawn series.
    """
    from cnnkit.understand import figures

    if not hasattr(classifier, "model"):
        raise CnnkitError("explain needs PyTorch weights for its gradients: give the run or checkpoint, not a .onnx")
    names = classifier.classes
    if class_name is not None and class_name not in names:
        raise CnnkitError(f"unknown class {class_name!r}; the model's classes are: {', '.join(names)}")
    if len(data) == 0:
        raise CnnkitError("explain found no labelled series to explain; give labelled data with --data")
    model, device = classifier.model, classifier.device
    probabilities = classifier.logits(data.inputs).softmax(1)  # (N, K), as evaluate scores them
    confidence, predictions = probabilities.max(1)
    records, sections, used_layer = [], [], layer
    for label, chosen in enumerate(choose_examples(data.labels, probabilities)):
        if not chosen or (class_name is not None and names[label] != class_name):
            continue
        index = torch.tensor(chosen)
        inputs = classifier.preprocessing.normalize(data.inputs[index].to(device))
        maps = signal_maps(model, inputs, predictions[index].to(device), layer)
        used_layer = maps.layer
        rows = []
        for row, i in enumerate(chosen):
            true, said = names[data.labels[i]], names[predictions[i]]
            rows.append(
                (example_title(data.sources[i], true, said, float(confidence[i])), maps.views[row], maps.heat[row])
            )
            records.append(
                {"source": data.sources[i], "true": true, "predicted": said, "probability": float(confidence[i])}
            )
        figure = f"class{label}.png"
        figures.plot_signals(rows, out_dir / figure)
        right = sum(1 for i in chosen if predictions[i] == data.labels[i])
        sections.append(
            f"<h2>class {html.escape(names[label])}</h2><p>{right} most confident correct and "
            f'{len(chosen) - right} most confidently wrong test series.</p><img src="{figure}" alt="{figure}">'
        )
    (out_dir / "explain.json").write_text(json.dumps({"layer": used_layer, "series": records}, indent=2))
    page = out_dir / "index.html"
    page.write_text(
        figures.html_page(
            f"What {classifier.info.model.name} looks at", _intro(used_layer, classifier) + "".join(sections)
        )
    )
    return Explanation(page, used_layer, records, [])


def _intro(layer: str | None, classifier) -> str:
    audio = classifier.preprocessing.modality == "audio" and hasattr(classifier.model, "frontend")
    where = "over the log-mel spectrogram the model computes (frequency upwards)" if audio else "over time"
    if layer is None:
        return f"<p>This model has no convolution, so gradient saliency is shown {where} instead of Grad-CAM.</p>"
    return (
        f"<p>Grad-CAM of the predicted class at <code>{html.escape(layer)}</code>, {where}. Warm colours in the "
        "band under each plot mark the time steps that raise the class score most.</p>"
    )

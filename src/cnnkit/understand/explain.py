"""What a CNN looks at: Grad-CAM, Grad-CAM++, gradient saliency, feature maps and first-layer filters.

Everything here works on any registered model by walking its modules: the target layer
of a class-activation map is the last convolution (1-D or 2-D) that runs in a forward
pass, found with hooks rather than by architecture-specific names. The maps are plain
tensors; :mod:`cnnkit.understand.figures` draws them and :func:`explain_images` writes the HTML page.

Grad-CAM (Selvaraju et al., 2017) weights each channel of the target layer's output by
its spatially averaged gradient; Grad-CAM++ (Chattopadhay et al., 2018) weights the
positive gradients by the closed-form coefficients of its equation 19. Both follow the
conventions of the ``grad-cam`` package (ReLU, then a per-image min-max scaling to
[0, 1] after resizing to the input), which the tests use as the reference.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.errors import CnnkitError

CAM_METHODS = ("gradcam", "gradcam++")
OVERLAY_SIDE = 224  # pixels of the service's heatmap overlay; small inputs are enlarged without blurring


def convolutions(model: nn.Module) -> dict[str, nn.Module]:
    """Every 1-D, 2-D or 3-D convolution of ``model`` by its qualified name, in registration order."""
    return {name: module for name, module in model.named_modules() if isinstance(module, nn.modules.conv._ConvNd)}


@contextmanager
def _record_outputs(modules: dict[str, nn.Module]) -> Iterator[dict[str, torch.Tensor]]:
    """Collect each module's output in execution order; copies, so later in-place operations cannot change them."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        module.register_forward_hook(
            lambda _module, _inputs, output, name=name: outputs.setdefault(name, output.detach().clone())
        )
        for name, module in modules.items()
    ]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def feature_maps(model: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The output of every convolution for normalised ``inputs`` (B, C, H, W), in the order they run.

    Returns:
        Layer name -> activations (B, C', H', W') (or (B, C', L) for 1-D convolutions).
    """
    model.eval()
    with _record_outputs(convolutions(model)) as outputs:
        model(inputs)
    return dict(outputs)


def find_target_layer(model: nn.Module, inputs: torch.Tensor, rank: int | None = None) -> str:
    """Name of the last convolution that runs on ``inputs``: the usual Grad-CAM target layer.

    Args:
        model: Any classifier.
        inputs: A batch it takes: images (B, C, H, W), series or waveforms (B, C, L).
        rank: Only convolutions whose output keeps this many spatial axes, each longer than one
            position: 2 picks the last map over (frequency, time) of a keyword spotter on log-mels,
            whose final convolutions have already pooled the frequencies away. Defaults to None (any).

    Raises:
        CnnkitError: The model has no convolution (a plain MLP, for example), or none of ``rank``.
    """
    ran = feature_maps(model, inputs[:1])
    if not ran:
        raise CnnkitError(f"{type(model).__name__} has no convolution layer, so it has no class-activation map")
    if rank is None:
        return list(ran)[-1]
    fitting = [name for name, output in ran.items() if output.dim() == rank + 2 and min(output.shape[2:]) > 1]
    if not fitting:
        raise CnnkitError(f"{type(model).__name__} has no convolution with a {rank}-D output; pick one with --layer")
    return fitting[-1]


def _layer(model: nn.Module, name: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        known = ", ".join(convolutions(model)) or "none"
        raise CnnkitError(f"the model has no layer {name!r}; its convolution layers are: {known}")
    return modules[name]


def _activations_and_gradients(
    model: nn.Module, layer: nn.Module, inputs: torch.Tensor, classes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The layer's output and the gradient of each image's class score with respect to it, plus the logits."""
    captured: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
        captured["activations"] = output.detach().clone()
        output.register_hook(lambda grad: captured.__setitem__("gradients", grad.detach()))

    model.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))  # (B, K); input grad makes every layer hookable
            model.zero_grad(set_to_none=True)
            logits.gather(1, classes.view(-1, 1)).sum().backward()
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    if "gradients" not in captured:
        raise CnnkitError(f"layer {type(layer).__name__} does not influence the output; pick another with --layer")
    return captured["activations"], captured["gradients"], logits.detach()


def _scale_per_image(maps: torch.Tensor) -> torch.Tensor:
    flat = maps.flatten(1)
    low = flat.min(1, keepdim=True).values
    high = (flat - low).max(1, keepdim=True).values
    return ((flat - low) / torch.where(high > 0, high, 1.0)).view_as(maps)  # an all-zero map stays zero


def _resize(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Maps (B, *spatial) resized to ``size``; a map of fewer axes (time alone) is spread over the leading ones."""
    if maps.dim() - 1 > len(size):
        raise CnnkitError(f"a {maps.dim() - 1}-D map cannot be drawn at the {len(size)}-D size {tuple(size)}")
    maps = maps.view(maps.shape[0], *(1,) * (len(size) + 1 - maps.dim()), *maps.shape[1:])
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return nn.functional.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False).squeeze(1)


def class_activation_map(
    model: nn.Module,
    inputs: torch.Tensor,
    classes: torch.Tensor,
    layer: str,
    method: str = "gradcam",
    size: tuple[int, ...] | None = None,
) -> torch.Tensor:
    """Grad-CAM or Grad-CAM++ heatmaps for one class per input, scaled to [0, 1] at the input's size.

    The same code serves every rank: images (B, C, H, W) give (B, H, W) maps, series (B, C, L)
    give (B, L) maps over time, and a keyword spotter's map over (frequency, time) is drawn at
    its spectrogram's size with ``size``.

    Args:
        model: Any classifier; it is put in eval mode.
        inputs: Normalised inputs (B, C, H, W), or series and waveforms (B, C, L).
        classes: The class to explain for each input (B,).
        layer: Name of the target module (see :func:`find_target_layer`).
        method: ``gradcam`` or ``gradcam++``. Defaults to ``gradcam``.
        size: Spatial size of the returned maps. Defaults to None, the input's (H, W) or (L,).

    Returns:
        Heatmaps (B, *size); 1 marks the region that raises the class score most.

    Example:
        >>> layer = find_target_layer(model, inputs)
        >>> heatmaps = class_activation_map(model, inputs, logits.argmax(1), layer)
    """
    if method not in CAM_METHODS:
        raise CnnkitError(f"unknown method {method!r}; use one of {', '.join(CAM_METHODS)}")
    activations, gradients, _ = _activations_and_gradients(model, _layer(model, layer), inputs, classes)
    if activations.dim() < 3:
        raise CnnkitError(
            f"layer {layer!r} has no spatial output (shape {tuple(activations.shape)}); "
            f"pick one of the convolution layers: {', '.join(convolutions(model))}"
        )
    spatial = tuple(range(2, activations.dim()))
    if method == "gradcam":
        weights = gradients.mean(spatial)  # (B, C)
    else:  # equation 19 of the Grad-CAM++ paper, with its ReLU on the gradients
        squared = gradients**2
        total = activations.sum(spatial, keepdim=True)
        alpha = squared / (2 * squared + total * squared * gradients + 1e-6)
        alpha = torch.where(gradients != 0, alpha, torch.zeros_like(alpha))
        weights = (gradients.clamp(min=0) * alpha).sum(spatial)  # (B, C)
    weights = weights.view(*weights.shape, *(1,) * len(spatial))
    cam = (weights * activations).sum(1).clamp(min=0)  # (B, H', W')
    return _scale_per_image(_resize(cam, tuple(size or inputs.shape[2:])))


def saliency(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """Gradient saliency (Simonyan et al., 2014): |d score / d pixel|, max over channels, scaled to [0, 1] (B, H, W)."""
    model.eval()
    inputs = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(inputs)
        (gradients,) = torch.autograd.grad(logits.gather(1, classes.view(-1, 1)).sum(), inputs)
    return _scale_per_image(gradients.abs().amax(1))


def first_layer_filters(model: nn.Module) -> torch.Tensor:
    """The weights of the first convolution that is registered, (out_channels, in_channels, *kernel)."""
    layers = convolutions(model)
    if not layers:
        raise CnnkitError(f"{type(model).__name__} has no convolution layer, so it has no filters to show")
    return next(iter(layers.values())).weight.detach().cpu()


@dataclass
class Explanation:
    """What ``explain_images`` wrote: the HTML page, the target layer and one record per explained image."""

    page: Path
    layer: str | None
    images: list[dict]
    skipped: list[tuple[str, str]]


def _classes_to_explain(probabilities: torch.Tensor, names: list[str], top_k: int, class_name: str | None) -> list:
    if class_name is not None:
        if class_name not in names:
            raise CnnkitError(f"unknown class {class_name!r}; the model's classes are: {', '.join(names)}")
        return [[names.index(class_name)] for _ in probabilities]
    k = max(1, min(top_k, len(names)))
    return probabilities.topk(k, dim=1).indices.tolist()


def explain_images(
    classifier,
    paths: Sequence[str | Path],
    out_dir: Path,
    top_k: int = 3,
    class_name: str | None = None,
    layer: str | None = None,
) -> Explanation:
    """Write heatmaps, feature maps, first-layer filters and an ``index.html`` tying them together.

    Args:
        classifier: A :class:`cnnkit.deploy.torch_runtime.Classifier`.
        paths: Image files; unreadable ones are skipped and returned in ``skipped``.
        out_dir: An existing folder for the PNGs, ``explain.json`` and ``index.html``.
        top_k: Explain this many most likely classes per image. Defaults to 3.
        class_name: Explain this class instead of the top-k.
        layer: Target layer name; defaults to the last convolution. Models without
            a convolution get saliency maps only.
    """
    from cnnkit.data import decode_image
    from cnnkit.data.decode import ImageDecodeError
    from cnnkit.understand import figures

    if not hasattr(classifier, "model"):  # an ONNX export: gradients need the PyTorch weights
        raise CnnkitError("explain needs PyTorch weights for its gradients: give the run or checkpoint, not a .onnx")
    model, prep, names = classifier.model, classifier.preprocessing, classifier.classes
    decoded, sources, skipped = [], [], []
    for path in paths:
        try:
            decoded.append(decode_image(path, prep.img_size, prep.channels, prep.resize))
            sources.append(str(path))
        except ImageDecodeError as error:
            skipped.append((str(path), str(error)))
    if not decoded:
        raise CnnkitError(f"none of the {len(paths)} images could be read: {skipped[0][1]}")
    images = torch.from_numpy(np.stack(decoded))  # uint8 (N, C, H, W)
    inputs = prep.normalize(images.to(classifier.device))
    probabilities = classifier.logits(images).softmax(1)  # as ``predict`` gives them: the run's test-time flip
    targets = _classes_to_explain(probabilities, names, top_k, class_name)
    if layer is None and convolutions(model):
        layer = find_target_layer(model, inputs)
    maps = feature_maps(model, inputs)
    if convolutions(model):
        figures.plot_filters(first_layer_filters(model), out_dir / "filters.png")

    records, sections = [], []
    for index, (image, source, chosen) in enumerate(zip(images, sources, targets)):
        repeated = inputs[index : index + 1].expand(len(chosen), *inputs.shape[1:])
        wanted = torch.tensor(chosen, device=inputs.device)
        heatmaps = [class_activation_map(model, repeated, wanted, layer, m).cpu() for m in CAM_METHODS] if layer else []
        heatmaps.append(saliency(model, repeated, wanted).cpu())
        rows = [
            (f"{names[c]} ({probabilities[index, c]:.1%})", [h[row] for h in heatmaps]) for row, c in enumerate(chosen)
        ]
        figures.plot_explanations(image, rows, out_dir / f"image{index}_heatmaps.png")
        shapes = {name: list(m.shape[1:]) for name, m in maps.items()}
        if maps:
            figures.plot_feature_maps(
                {n: m[index].cpu() for n, m in maps.items()}, out_dir / f"image{index}_features.png"
            )
        predictions = [{"label": names[c], "probability": float(probabilities[index, c])} for c in chosen]
        records.append({"path": source, "explained": predictions, "feature_map_shapes": shapes})
        table = figures.html_table(
            ["class", "probability"], [(p["label"], f"{p['probability']:.2%}") for p in predictions]
        )
        features = f'<img src="image{index}_features.png" alt="feature maps">' if maps else ""
        sections.append(
            f'<h2>{html.escape(source)}</h2>{table}<img src="image{index}_heatmaps.png" alt="heatmaps">'
            f"<h3>Feature maps (output of each convolution, strongest channels)</h3>{features}"
        )
    (out_dir / "explain.json").write_text(json.dumps({"layer": layer, "images": records}, indent=2))
    intro = (
        f"<p>Target layer for Grad-CAM: <code>{html.escape(layer)}</code>. Warm colours mark the pixels that raise "
        'the class score most.</p><img src="filters.png" alt="first-layer filters">'
        if layer
        else "<p>This model has no convolution, so only gradient saliency maps are shown.</p>"
    )
    page = out_dir / "index.html"
    page.write_text(figures.html_page(f"What {classifier.info.model.name} looks at", intro + "".join(sections)))
    return Explanation(page, layer, records, skipped)


def overlay_png(classifier, pixels: np.ndarray, class_index: int, side: int = OVERLAY_SIDE) -> bytes:
    """A PNG of one image with the Grad-CAM heatmap of ``class_index`` blended over it, ``side`` pixels square.

    For the prediction service: ``pixels`` is the image as decoded for its prediction,
    uint8 (1, C, H, W), explained at the last convolution (models without one get a
    saliency map).
    """
    import io

    from matplotlib import colormaps
    from PIL import Image

    model, prep = classifier.model, classifier.preprocessing
    images = torch.from_numpy(pixels)  # (1, C, H, W) uint8
    inputs = prep.normalize(images.to(classifier.device))
    classes = torch.tensor([class_index], device=classifier.device)
    if convolutions(model):
        heatmap = class_activation_map(model, inputs, classes, find_target_layer(model, inputs))[0]
    else:
        heatmap = saliency(model, inputs, classes)[0]
    colours = colormaps["jet"](heatmap.detach().cpu().numpy())[..., :3]  # (H, W, 3) in [0, 1]
    picture = images[0].permute(1, 2, 0).expand(-1, -1, 3).numpy() / 255.0
    blended = (0.55 * picture + 0.45 * colours) * 255
    image = Image.fromarray(blended.round().astype("uint8")).resize((side, side), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

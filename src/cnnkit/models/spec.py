"""Networks from the classic layer vocabulary: a one-line string, a YAML/JSON file, or Python.

One-line form, tokens separated by spaces (numbers follow the layer name; options are a
letter and a number)::

    conv32k3 relu pool2 conv64k3 relu pool2 flatten fc128 relu dropout0.5 fc

- ``conv32``, ``conv1d32``: convolution with 32 filters; options ``k`` kernel (3), ``s`` stride (1),
  ``p`` padding (default keeps the size at stride 1), ``d`` dilation (1), ``g`` groups (1).
- ``pool2``, ``avgpool2``, ``pool1d2``, ``avgpool1d2``: max / average pooling, window 2; ``s`` stride (the window).
- ``gap``, ``gmp``: global average / max pooling to one value per channel.
- ``bn``, ``dropout0.5``, ``flatten``: batch norm, dropout (p defaults to 0.5), flatten.
- ``relu`` ``lrelu`` ``elu`` ``gelu`` ``silu`` ``tanh`` ``sigmoid``: activations.
- ``fc128``: fully connected, 128 units; a bare ``fc`` is the output layer (one unit per class).

The same layers as YAML/JSON: ``{"input": [1, 28, 28], "layers": ["conv32k3", {"type": "relu"}, ...]}``;
a mapping names its options in full (``out_channels``, ``kernel_size``, ``stride``, ``padding``,
``dilation``, ``groups``, ``out_features``, ``p``). Building checks every layer against the
shape it receives, so a mistake names the layer, its position and that shape before any
training starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from cnnkit.errors import CnnkitError, describe_error, did_you_mean
from cnnkit.models.layers import avg_pool, batch_norm, conv, global_pool, max_pool
from cnnkit.models.network import Network
from cnnkit.models.registry import list_models, register_model

ACTIVATIONS = {
    "relu": nn.ReLU,
    "lrelu": nn.LeakyReLU,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
}
# name -> (main number's option, letter options)
LAYERS: dict[str, tuple[str | None, dict[str, str]]] = {
    "conv": ("out_channels", {"k": "kernel_size", "s": "stride", "p": "padding", "d": "dilation", "g": "groups"}),
    "conv1d": ("out_channels", {"k": "kernel_size", "s": "stride", "p": "padding", "d": "dilation", "g": "groups"}),
    "pool": ("kernel_size", {"s": "stride"}),
    "avgpool": ("kernel_size", {"s": "stride"}),
    "pool1d": ("kernel_size", {"s": "stride"}),
    "avgpool1d": ("kernel_size", {"s": "stride"}),
    "gap": (None, {}),
    "gmp": (None, {}),
    "bn": (None, {}),
    "dropout": ("p", {}),
    "flatten": (None, {}),
    "fc": ("out_features", {}),
    **{name: (None, {}) for name in ACTIVATIONS},
}
DEFAULT_SPEC = "conv32k3 relu pool2 conv64k3 relu pool2 flatten fc128 relu dropout0.5 fc"
_NUMBER = r"\d+(?:\.\d+)?"


def _number(text: str) -> int | float:
    return float(text) if "." in text else int(text)


def parse_token(token: str, position: int) -> dict[str, Any]:
    """One token such as ``conv64k3s2`` -> ``{"type": "conv", "out_channels": 64, "kernel_size": 3, "stride": 2}``."""
    for name in sorted(LAYERS, key=len, reverse=True):
        if not token.startswith(name):
            continue
        main, letters = LAYERS[name]
        rest = token[len(name) :]
        match = re.fullmatch(rf"({_NUMBER})?((?:[a-z]{_NUMBER})*)", rest)
        if match is None or (match.group(1) and main is None):
            continue
        layer: dict[str, Any] = {"type": name}
        if match.group(1):
            layer[main] = _number(match.group(1))
        for letter, value in re.findall(rf"([a-z])({_NUMBER})", match.group(2)):
            if letter not in letters:
                options = ", ".join(f"{k} ({v})" for k, v in letters.items()) or "none"
                raise CnnkitError(f"layer {position} {token!r}: unknown option {letter!r}; {name} takes {options}")
            layer[letters[letter]] = _number(value)
        return layer
    raise CnnkitError(f"layer {position} {token!r}: unknown layer; known layers: {', '.join(LAYERS)}")


def parse_spec(spec: str | Path | list) -> dict[str, Any]:
    """Read a spec (one-line string, ``.yaml``/``.yml``/``.json`` file, or list of layers) into its canonical form.

    Returns:
        ``{"input": [C, H, W] or [C, L] or None, "layers": [{"type": ..., option: value}, ...]}``.
    """
    document: Any = spec
    if isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml", ".json"))):
        path = Path(spec).expanduser()
        try:
            text = path.read_text()
            document = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (OSError, ValueError, yaml.YAMLError) as error:
            raise CnnkitError(f"cannot read network spec {path}: {describe_error(error)}") from None
    if isinstance(document, str):
        document = {"layers": document.split()}
    if isinstance(document, list):
        document = {"layers": document}
    if not isinstance(document, dict) or not isinstance(document.get("layers"), list) or not document["layers"]:
        raise CnnkitError("a network spec needs a non-empty list of layers under 'layers'")
    unknown = sorted(set(document) - {"input", "layers"})
    if unknown:
        raise CnnkitError(f"network spec: unknown key(s) {', '.join(unknown)}; use 'input' and 'layers'")
    layers = []
    for position, item in enumerate(document["layers"], 1):
        if isinstance(item, str):
            layers.append(parse_token(item.strip().lower(), position))
        elif isinstance(item, dict) and item.get("type") in LAYERS:
            main, letters = LAYERS[item["type"]]
            allowed = {main, *letters.values(), "type"} - {None}
            extra = sorted(set(item) - allowed)
            if extra:
                raise CnnkitError(f"layer {position} {item['type']}: unknown option(s) {', '.join(extra)}")
            layers.append(dict(item))
        else:
            raise CnnkitError(f"layer {position} {item!r}: unknown layer; known layers: {', '.join(LAYERS)}")
    return {"input": document.get("input"), "layers": layers}


def _describe(layer: dict[str, Any]) -> str:
    return " ".join([layer["type"], *(f"{k}={v}" for k, v in layer.items() if k != "type")])


def _out_side(side: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (side + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _build_layer(layer: dict[str, Any], shape: tuple[int, ...], seen_conv: bool, num_classes: int):
    """The module for one layer and the shape it produces; raises ValueError with the reason when it cannot apply."""
    kind = layer["type"]
    rank = len(shape) - 1  # spatial dimensions: 2 for images, 1 for signals, 0 once flat
    if kind in ACTIVATIONS:
        return ACTIVATIONS[kind](), shape
    if kind == "dropout":
        p = float(layer.get("p", 0.5))
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        return nn.Dropout(p), shape
    if kind == "bn":  # flat (B, F) features normalise like rank 1's (B, C, L)
        return batch_norm(shape[0], rank=max(rank, 1)), shape
    if kind == "flatten":
        if not seen_conv:
            raise ValueError("flatten before any convolution throws the image's layout away; convolve first")
        return nn.Flatten(), (int(torch.tensor(shape).prod()),)
    if kind == "fc":
        if rank:
            raise ValueError("a fully connected layer needs flat features; add flatten or gap before it")
        units = int(layer.get("out_features", num_classes))
        if units < 1:
            raise ValueError("a fully connected layer needs at least 1 unit")
        return nn.Linear(shape[0], units), (units,)
    if kind in ("gap", "gmp"):
        if rank == 0:
            raise ValueError("global pooling needs a feature map, but the features are already flat")
        return nn.Sequential(global_pool("avg" if kind == "gap" else "max", rank), nn.Flatten()), (shape[0],)
    want = 1 if kind.endswith("1d") else 2
    if rank != want:
        layout = "(channels, length)" if want == 1 else "(channels, height, width)"
        raise ValueError(f"{kind} expects a {layout} input")
    if kind.startswith("conv"):
        filters, kernel = int(layer.get("out_channels", 0)), int(layer.get("kernel_size", 3))
        stride, dilation, groups = (
            int(layer.get("stride", 1)),
            int(layer.get("dilation", 1)),
            int(layer.get("groups", 1)),
        )
        padding = int(layer.get("padding", (kernel - 1) // 2 * dilation))
        if min(filters, kernel, stride, dilation, groups) < 1 or padding < 0:
            raise ValueError("filters, kernel, stride, dilation and groups must be positive and padding not negative")
        if shape[0] % groups or filters % groups:
            raise ValueError(f"groups={groups} must divide both input channels {shape[0]} and filters {filters}")
        module = conv(shape[0], filters, kernel, stride, padding, dilation, groups, rank=want)
    else:
        kernel = int(layer.get("kernel_size", 2))
        stride, padding, dilation = int(layer.get("stride", kernel)), 0, 1
        if kernel < 1 or stride < 1:
            raise ValueError("pool window and stride must be positive")
        module = (avg_pool if kind.startswith("avg") else max_pool)(kernel, stride, rank=want)
    sides = tuple(_out_side(side, kernel, stride, padding, dilation) for side in shape[1:])
    if min(sides) < 1:
        raise ValueError(f"a window of {kernel} does not fit; the map would be {sides}: remove it or use larger inputs")
    return module, (module.out_channels if kind.startswith("conv") else shape[0], *sides)


class SpecNet(Network):
    """A network built from a layer spec; the final fully connected layer is its classifier.

    Args:
        layers: Canonical layer dicts (see :func:`parse_spec`); the last must be ``fc``.
        num_classes: Units of a bare ``fc``.
        input_shape: (C, H, W) for images or (C, L) for signals.

    Example:
        >>> net = SpecNet(parse_spec("conv16k3 relu gap fc")["layers"], num_classes=10, input_shape=(1, 28, 28))
        >>> net(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, layers: list[dict[str, Any]], num_classes: int, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        shape, seen_conv, modules = tuple(input_shape), False, []
        for position, layer in enumerate(layers, 1):
            try:
                module, shape = _build_layer(layer, shape, seen_conv, num_classes)
            except (ValueError, TypeError) as error:
                raise CnnkitError(f"layer {position} ({_describe(layer)}) received shape {shape}: {error}") from None
            seen_conv = seen_conv or layer["type"].startswith("conv")
            modules.append(module)
        if not isinstance(modules[-1], nn.Linear) or shape != (num_classes,):
            raise CnnkitError(
                f"the last layer ({_describe(layers[-1])}) gives shape {shape}; a classifier must end with "
                f"fc (no size), giving one output per class ({num_classes})"
            )
        self.features = nn.Sequential(*modules[:-1])
        self.classifier = modules[-1]
        self.num_features = self.classifier.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, num_features)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(x)  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.classifier


@register_model
def spec(
    num_classes: int, in_channels: int = 3, img_size: int = 32, layers: list | str = DEFAULT_SPEC, input=None
) -> SpecNet:
    """A network from a layer spec (string, file or list; default: :data:`DEFAULT_SPEC`)."""
    parsed = parse_spec(layers)
    shape = tuple(input or parsed["input"] or (in_channels, img_size, img_size))
    if len(shape) == 3 and shape != (in_channels, img_size, img_size):  # a file's input, passed on or not
        raise CnnkitError(
            f"the spec's input {list(shape)} does not match the data ({in_channels}, {img_size}, {img_size}); "
            "change or remove its 'input:'"
        )
    return SpecNet(parsed["layers"], num_classes, shape)


def resolve_model(model: str) -> tuple[str, dict[str, Any]]:
    """A registry name, a spec file or a one-line spec -> (registry name, builder keyword arguments)."""
    if model in list_models():
        return model, {}
    if model in list_models(task="detect"):
        raise CnnkitError(f"{model} is a detector (boxes, not labels): `cnnkit train --task detect --model {model}`")
    looks_like_file = model.endswith((".yaml", ".yml", ".json"))
    if looks_like_file and not Path(model).expanduser().is_file():
        raise CnnkitError(f"network spec file not found: {model}")
    if not looks_like_file and " " not in model.strip():
        try:
            parse_token(model.strip().lower(), 1)
        except CnnkitError:
            raise CnnkitError(
                f"unknown model {model!r}{did_you_mean(model, list_models())}; choose one of: "
                f"{', '.join(list_models())}, a spec file, or a layer string "
                f"such as {DEFAULT_SPEC!r}"
            ) from None
    parsed = parse_spec(model)
    return "spec", {"layers": parsed["layers"], **({"input": parsed["input"]} if parsed["input"] else {})}

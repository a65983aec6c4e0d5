"""A registry of model builders and their facts: ``@register_model``, ``create_model`` and ``list_models``.

Every builder takes ``num_classes``, ``in_channels`` and ``img_size`` plus its own
keyword arguments and returns a :class:`cnnkit.models.network.Network`, which maps
(B, C, H, W) images (or (B, C, L) signals) to (B, K) logits; a detector (``task="detect"``)
returns a :class:`cnnkit.models.detector.Detector`, which maps images to boxes. A
checkpoint stores a :class:`ModelSpec`, which is enough to rebuild the model.

What is true of a model rather than of one instance is recorded with its builder, as
timm's ``default_cfgs``: where its pretrained weights come from and the preprocessing
they expect (a :class:`WeightSource`), and which builder arguments follow from the
training data. Nothing elsewhere branches on a model's name.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from cnnkit.errors import CnnkitError, did_you_mean
from cnnkit.modelinfo import ModelSpec, Preprocessing

ModelBuilder = Callable[..., nn.Module]

MODALITIES = ("image", "series", "audio")  # what a model's input is: (B, C, H, W) images, (B, C, L) series, waveforms
TASKS = ("classify", "detect", "generate")  # what it returns: (B, K) logits (embedding models too), boxes, or images


class WeightSource(Protocol):
    """Where a model's pretrained weights come from (see :mod:`cnnkit.models.pretrained`)."""

    def preprocessing(self, name: str) -> Preprocessing:
        """The RGB input size, mean and std the weights were trained with."""

    def locate(self, name: str) -> Path:
        """The weights file, fetched or found; raises ``CnnkitError`` saying how to supply it."""

    def convert(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The file's tensors in the model's parameter names."""


@dataclass(frozen=True)
class ModelEntry:
    """A registered builder and its facts.

    Args:
        builder: The function that builds the model; its name is the model's name.
        pretrained: Where ImageNet weights come from; None when there are none.
        kwargs_for_data: Training-set size -> builder arguments chosen for it; None when none depend on it.
        modality: The input it is built for, one of ``MODALITIES``.
        task: What it returns, one of ``TASKS``.
    """

    builder: ModelBuilder
    pretrained: WeightSource | None = None
    kwargs_for_data: Callable[[int], dict[str, Any]] | None = None
    modality: str = "image"
    task: str = "classify"


_ENTRIES: dict[str, ModelEntry] = {}


def register_model(
    builder: ModelBuilder | None = None,
    *,
    pretrained: WeightSource | None = None,
    kwargs_for_data: Callable[[int], dict[str, Any]] | None = None,
    modality: str = "image",
    task: str = "classify",
) -> Any:
    """Register a builder under its function name (the model's one name everywhere), with its facts.

    Use bare, ``@register_model``, or with facts, ``@register_model(pretrained=TorchvisionWeights())``.

    Args:
        builder: The builder, when used bare.
        pretrained: Where its pretrained weights come from. Defaults to None (no weights).
        kwargs_for_data: Training-set size -> builder arguments. Defaults to None (none depend on the data).
        modality: The input it is built for: "image" (B, C, H, W), "series" (B, C, L) or "audio". Defaults to "image".
        task: What it returns: "classify" (B, K) logits, "detect" boxes or "generate" images (models/gan.py).
            Defaults to "classify".
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not one of {MODALITIES}")  # a programming error, not user input
    if task not in TASKS:
        raise ValueError(f"task {task!r} is not one of {TASKS}")

    def record(function: ModelBuilder) -> ModelBuilder:
        _ENTRIES[function.__name__] = ModelEntry(function, pretrained, kwargs_for_data, modality, task)
        return function

    return record(builder) if builder is not None else record


def list_models(
    pattern: str = "*", pretrained: bool = False, modality: str | None = None, task: str | None = "classify"
) -> list[str]:
    """Names of registered models matching a shell-style pattern, e.g. ``list_models("res*")``.

    Args:
        pattern: Shell-style pattern. Defaults to every model.
        pretrained: Only models with pretrained weights. Defaults to False.
        modality: Only models built for this input ("image", "series", "audio"). Defaults to None (every one).
        task: Only models for this task ("classify", "detect"); None for every one. Defaults to "classify",
            so callers that build classifiers never meet a detector.

    Example:
        >>> list_models(modality="series")
        ['fcn', 'inception_time', 'resnet1d']
    """
    names = [
        name
        for name, entry in _ENTRIES.items()
        if (entry.pretrained is not None or not pretrained)
        and modality in (None, entry.modality)
        and task in (None, entry.task)
    ]
    return sorted(fnmatch.filter(names, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``; raises ``CnnkitError`` listing the known names."""
    if name not in _ENTRIES:
        raise CnnkitError(
            f"unknown model {name!r}{did_you_mean(name, _ENTRIES)}; choose one of: {', '.join(list_models())}"
        )
    return _ENTRIES[name]


def create_model(name: str, num_classes: int, in_channels: int = 3, img_size: int = 224, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Number of output classes.
        in_channels: Image channels (1 or 3). Defaults to 3.
        img_size: Side of the square input (length of a signal), used to adapt stems to small inputs.
            Defaults to 224.
        **kwargs: Builder-specific options.

    Example:
        >>> model = create_model("convnet", num_classes=10, in_channels=1, img_size=28)
    """
    return model_entry(name).builder(num_classes=num_classes, in_channels=in_channels, img_size=img_size, **kwargs)


def build(spec: ModelSpec) -> nn.Module:
    return create_model(spec.name, spec.num_classes, spec.in_channels, spec.img_size, **spec.kwargs)


def kwargs_for_data(name: str, train_images: int) -> dict[str, Any]:
    """The builder arguments of ``name`` that follow from the training set's size (recorded in the spec).

    Example:
        >>> kwargs_for_data("convnet", 54_000)
        {'hidden': 256}
    """
    rule = model_entry(name).kwargs_for_data
    return rule(train_images) if rule else {}

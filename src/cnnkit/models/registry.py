"""A registry of model builders: ``@register_model``, ``create_model`` and ``list_models``.

Every builder takes ``num_classes``, ``in_channels`` and ``img_size`` plus its own
keyword arguments and returns an ``nn.Module`` that maps (B, C, H, W) images to (B, K)
logits. A checkpoint stores a :class:`ModelSpec`, which is enough to rebuild the model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import ModelSpec

ModelBuilder = Callable[..., nn.Module]
_BUILDERS: dict[str, ModelBuilder] = {}


def register_model(builder: ModelBuilder) -> ModelBuilder:
    """Register a builder under its function name (the model's one name everywhere)."""
    _BUILDERS[builder.__name__] = builder
    return builder


def list_models(pattern: str = "*") -> list[str]:
    """Names of registered models matching a shell-style pattern, e.g. ``list_models("res*")``."""
    return sorted(fnmatch.filter(_BUILDERS, pattern))


def create_model(name: str, num_classes: int, in_channels: int = 3, img_size: int = 224, **kwargs: Any) -> nn.Module:
    """Build a registered model.

    Args:
        name: A name from :func:`list_models`.
        num_classes: Number of output classes.
        in_channels: Image channels (1 or 3). Defaults to 3.
        img_size: Side of the square input, used to adapt stems to small images. Defaults to 224.
        **kwargs: Builder-specific options.

    Example:
        >>> model = create_model("convnet", num_classes=10, in_channels=1, img_size=28)
    """
    if name not in _BUILDERS:
        raise CnnkitError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    return _BUILDERS[name](num_classes=num_classes, in_channels=in_channels, img_size=img_size, **kwargs)


def build(spec: ModelSpec) -> nn.Module:
    return create_model(spec.name, spec.num_classes, spec.in_channels, spec.img_size, **spec.kwargs)

"""What a saved model says about itself: architecture, class names and preprocessing.

Checkpoints carry this in their safetensors header and ONNX exports in their metadata.
The module needs no PyTorch, so an install with ONNX Runtime alone can read an export.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cnnkit.data.preprocess import Preprocessing

CHECKPOINT_FORMAT = "cnnkit.checkpoint/1"
DESCRIBED = ("format", "model", "classes", "preprocessing")  # keys with fields of their own; the rest is ``extra``


@dataclass
class ModelSpec:
    """Everything needed to rebuild a model: its registry name and constructor arguments."""

    name: str
    num_classes: int
    in_channels: int = 3
    img_size: int = 224
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        return cls(
            values["name"],
            int(values["num_classes"]),
            int(values["in_channels"]),
            int(values["img_size"]),
            dict(values.get("kwargs", {})),
        )


@dataclass
class CheckpointInfo:
    """What a checkpoint or an export says about itself; ``extra`` holds the training config, metrics and versions."""

    model: ModelSpec
    classes: list[str]
    preprocessing: Preprocessing
    extra: dict[str, Any]

    @property
    def test_time_flip(self) -> bool:
        """Whether the run predicts with test-time flip (``tta`` recorded by ``fit``; see :mod:`cnnkit.tta`)."""
        return self.extra.get("tta") == "flip"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "model": self.model.to_dict(),
            "classes": self.classes,
            "preprocessing": self.preprocessing.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> CheckpointInfo:
        """The inverse of :meth:`to_dict` (the ``format`` key is the caller's to check).

        Raises KeyError, ValueError or TypeError when a field is missing or malformed.
        """
        return cls(
            model=ModelSpec.from_dict(values["model"]),
            classes=[str(name) for name in values["classes"]],
            preprocessing=Preprocessing.from_dict(values["preprocessing"]),
            extra={key: value for key, value in values.items() if key not in DESCRIBED},
        )

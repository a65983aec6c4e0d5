"""The preprocessing contract shared by training, evaluation, prediction and export.

A checkpoint stores a :class:`Preprocessing` so that every later use of the model turns
an image file into exactly the tensor the model was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # no PyTorch at import: an ONNX Runtime install reads Preprocessing from an export's metadata
    import torch

RESIZE_RULES = ("crop", "squash", "pad")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes a model input.

    Args:
        img_size: Side of the square model input, in pixels.
        channels: 1 (grayscale) or 3 (RGB).
        mean: Per-channel mean subtracted after scaling pixels to [0, 1].
        std: Per-channel standard deviation divided after subtracting the mean.
        resize: ``crop`` scales the shorter side to ``img_size`` and centre-crops;
            ``squash`` scales both sides to ``img_size`` ignoring the aspect ratio;
            ``pad`` scales the longer side to ``img_size`` and pads with black.
    """

    img_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "crop"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Preprocessing:
        return cls(
            img_size=int(values["img_size"]),
            channels=int(values["channels"]),
            mean=tuple(float(v) for v in values["mean"]),
            std=tuple(float(v) for v in values["std"]),
            resize=str(values.get("resize", "crop")),
        )

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 images (B, C, H, W) into normalised float32 model inputs."""
        pixels = images.float()
        mean = pixels.new_tensor(self.mean).view(1, -1, 1, 1) * 255.0
        inv_std = 1.0 / (pixels.new_tensor(self.std).view(1, -1, 1, 1) * 255.0)
        return (pixels - mean) * inv_std

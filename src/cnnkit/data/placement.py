"""Where an image's original pixels land in the square model input, and detections back: no PyTorch.

:class:`Placement` is :func:`cnnkit.data.decode.resize_image`'s rule as a map of
coordinates, ``x -> scale * x + offset`` per axis, so boxes go to the input for training
and detections back to the original image for evaluation and prediction. It lives apart
from the decoded sets (:mod:`cnnkit.data.boxset`, which need torch) because an ONNX
export predicts boxes with ONNX Runtime alone (``cnnkit predict model.onnx``), through
the same map as a checkpoint.

- ``squash``: each side scaled to the input, no offset; the aspect ratio changes.
- ``pad``: the longer side scaled to the input, the image centred (letterbox): every box kept.
- ``crop``: the shorter side scaled to the input, the overhang cut at both ends.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

# EXIF orientations 5 to 8 turn the image a quarter: the upright image has width and height swapped.
_QUARTER_TURNS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112
_EXIF_IN_HEADER = frozenset({"JPEG", "MPO", "TIFF", "WEBP"})


@dataclass(frozen=True)
class Placement:
    """Where an image's original pixels land in the square model input: ``x -> scale * x + offset`` per axis."""

    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    @classmethod
    def of(cls, size: tuple[int, int], img_size: int, resize: str) -> Placement:
        """The map :func:`cnnkit.data.decode.resize_image` applies to an image of (width, height) ``size``.

        Example:
            >>> Placement.of((200, 100), 64, "pad")
            Placement(scale_x=0.32, scale_y=0.32, offset_x=0.0, offset_y=16.0)
        """
        width, height = size
        if width == height == img_size or resize == "squash":
            return cls(img_size / width, img_size / height, 0.0, 0.0)
        if resize == "crop":
            scale = img_size / min(width, height)
            new_width, new_height = max(img_size, round(width * scale)), max(img_size, round(height * scale))
            left, top = -((new_width - img_size) // 2), -((new_height - img_size) // 2)
        else:  # pad, the rule's only other value (resize_image refuses the rest)
            scale = img_size / max(width, height)
            new_width, new_height = max(1, round(width * scale)), max(1, round(height * scale))
            left, top = (img_size - new_width) // 2, (img_size - new_height) // 2
        return cls(new_width / width, new_height / height, float(left), float(top))

    def to_input(self, boxes: np.ndarray) -> np.ndarray:
        """Original-pixel boxes (M, 4) xyxy -> the model input's pixels."""
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float64)
        offset = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float64)
        return (np.asarray(boxes, np.float64).reshape(-1, 4) * scale + offset).astype(np.float32)

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """The model input's boxes (M, 4) xyxy -> original pixels (the inverse of :meth:`to_input`)."""
        scale = np.array([self.scale_x, self.scale_y] * 2, dtype=np.float64)
        offset = np.array([self.offset_x, self.offset_y] * 2, dtype=np.float64)
        return ((np.asarray(boxes, np.float64).reshape(-1, 4) - offset) / scale).astype(np.float32)


def to_original(detection: dict[str, np.ndarray], placement: Placement, size: tuple[int, int]) -> dict[str, np.ndarray]:
    """One image's detections moved from input pixels to its original (width, height) image, clipped to it."""
    boxes = placement.to_original(detection["boxes"])
    boxes = np.clip(boxes, 0, np.array([size[0], size[1]] * 2, dtype=np.float32))
    return {**detection, "boxes": boxes}


def upright_size(source: str | Path | bytes) -> tuple[int, int] | str:
    """(width, height) of a file or encoded image once upright (EXIF applied), from its header only; or why not."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            width, height = image.size
            # PNG may store EXIF after its pixels: asking for it then decodes the whole image.
            header_exif = image.format in _EXIF_IN_HEADER or "exif" in image.info
            turned = header_exif and image.getexif().get(_ORIENTATION_TAG) in _QUARTER_TURNS
    except UnidentifiedImageError:
        return "not an image Pillow can read (empty, truncated or another format)"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return f"cannot open: {error}"
    return (height, width) if turned else (width, height)


def image_sizes(root: Path, images: Sequence[str], workers: int | None = None) -> dict[str, tuple[int, int] | str]:
    """(width, height) of each upright image, read from its header only, or why it cannot be read."""
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return dict(zip(images, pool.map(lambda rel: upright_size(root / rel), images)))

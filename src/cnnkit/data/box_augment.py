"""Augmentation of whole batches of images with their boxes, for detection: flips, scale jitter, crops, colour.

The conventions of :mod:`cnnkit.data.augment`: every random number comes from one
``torch.Generator`` (a seeded or resumed run draws the same stream; how many numbers are
drawn depends on the settings only, never on the data), each operation is vectorised over
the batch and runs on the device the batch is on. Each random operation draws its amounts
and calls a deterministic function of them (:func:`hflip`, :func:`zoom`), which the tests
check exactly.

Boxes follow :mod:`cnnkit.data.boxes`: ``[x1, y1, x2, y2]`` in continuous pixel coordinates
of the batch's images, ``(0, 0)`` the top-left corner and ``(W, H)`` the bottom-right one.
They travel as a :class:`BoxBatch`, padded to the most boxes any image holds with a mask,
so that every step here is one tensor operation over the whole batch (no loop over images)
and a batched loss can assign anchors or points to every image's boxes in one (B, A, M)
operation; :meth:`BoxBatch.to_targets` gives the per-image ``{"boxes", "labels"}`` dicts
that cnnkit's and torchvision's detectors take (:mod:`cnnkit.models.detector`).

Scale jitter and crops are one affine resample per image (bilinear), so an image is
interpolated once however many of them act. A box cut by the new image border is clipped
to it, and dropped with its label when less than ``min_visible`` (a quarter) of its area
remains or it ends up under ``min_size`` (2) pixels wide or high: too little of the object
is left to ask the detector to find it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from cnnkit.data.augment import _uniform, colour_jitter, parse_spec, read_switch
from cnnkit.errors import CnnkitError


@dataclass
class BoxBatch:
    """The boxes of a batch of B images, padded to M, the most any image holds.

    Attributes:
        boxes: float32 (B, M, 4) ``[x1, y1, x2, y2]`` in pixels of the batch's images; 0 at padding.
        labels: int64 (B, M) class indices; -1 at padding, so a padded slot cannot pass for a class.
        mask: bool (B, M), True for a real box.
    """

    boxes: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def from_targets(cls, targets: Sequence[Mapping[str, Any]], device: torch.device | str | None = None) -> BoxBatch:
        """Pad per-image targets ``{"boxes": (M_i, 4), "labels": (M_i,)}`` (arrays, lists or tensors) into a batch.

        Example:
            >>> batch = BoxBatch.from_targets([{"boxes": [[0.0, 0, 4, 4]], "labels": [1]}, {"boxes": [], "labels": []}])
            >>> batch.mask.tolist()
            [[True], [False]]
        """
        boxes = [torch.as_tensor(t["boxes"], dtype=torch.float32).reshape(-1, 4) for t in targets]
        labels = [torch.as_tensor(t["labels"], dtype=torch.int64).reshape(-1) for t in targets]
        count = max((len(b) for b in boxes), default=0)
        padded = torch.zeros(len(boxes), count, 4, dtype=torch.float32, device=device)
        classes = torch.full((len(boxes), count), -1, dtype=torch.int64, device=device)
        mask = torch.zeros(len(boxes), count, dtype=torch.bool, device=device)
        for i, (box, label) in enumerate(zip(boxes, labels)):
            if len(box) != len(label):
                raise CnnkitError(f"image {i} of the batch has {len(box)} boxes but {len(label)} labels")
            padded[i, : len(box)] = box.to(padded.device)
            classes[i, : len(box)] = label.to(classes.device)
            mask[i, : len(box)] = True
        return cls(padded, classes, mask)

    def to(self, device: torch.device | str) -> BoxBatch:
        """The same boxes on ``device``, the device of the images they go with."""
        return BoxBatch(self.boxes.to(device), self.labels.to(device), self.mask.to(device))

    def to_targets(self) -> list[dict[str, torch.Tensor]]:
        """Each image's real boxes (M_i, 4) and labels (M_i,) as ``{"boxes", "labels"}``, as detectors take targets."""
        return [{"boxes": b[m], "labels": c[m]} for b, c, m in zip(self.boxes, self.labels, self.mask)]


@dataclass(frozen=True)
class BoxAugmentation:
    """Which detection augmentations to apply, and how strongly.

    Args:
        hflip: Mirror half of the images left to right, their boxes with them. Defaults to False.
        scale: Maximum relative zoom, drawn in [1 - scale, 1 + scale] per image and placed at a
            random offset: a smaller image sits inside a border of its mean colour, a larger one
            is cut to the frame. Bilinear without anti-aliasing, so keep it at 0.5 or below. Defaults to 0.
        crop: Largest share of the side a crop removes: a window of side share drawn in
            [1 - crop, 1] (aspect kept), at a random position, is resized to the full image. Defaults to 0.
        brightness: Maximum relative brightness change. Defaults to 0.
        contrast: Maximum relative contrast change. Defaults to 0.
        saturation: Maximum relative saturation change (RGB only). Defaults to 0.
        min_visible: A clipped box is kept only if at least this share of its area remains. Defaults to 0.25.
        min_size: ... and only if it stays at least this many pixels wide and high. Defaults to 2.

    Example:
        >>> augmentation = BoxAugmentation(hflip=True, scale=0.25, crop=0.3)
        >>> images, boxes = augmentation(images, boxes, torch.Generator().manual_seed(0))
    """

    hflip: bool = False
    scale: float = 0.0
    crop: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    min_visible: float = 0.25
    min_size: float = 2.0

    def __post_init__(self) -> None:
        problems = [f"{key}={getattr(self, key)} must be >= 0" for key in _FLOAT_KEYS if getattr(self, key) < 0]
        problems += [
            f"{key}={getattr(self, key)} must be below 1" for key in ("scale", "crop") if getattr(self, key) >= 1
        ]
        problems += [f"min_visible={self.min_visible} is a share in [0, 1]"] if self.min_visible > 1 else []
        if problems:
            raise CnnkitError(f"box augmentation: {'; '.join(problems)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The settings that differ from the defaults, e.g. ``hflip, scale=0.25, crop=0.3``."""
        changed = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        return ", ".join(key if value is True else f"{key}={value}" for key, value in changed.items()) or "none"

    def __call__(
        self, images: torch.Tensor, boxes: BoxBatch, generator: torch.Generator
    ) -> tuple[torch.Tensor, BoxBatch]:
        """Augment images (B, C, H, W) with pixel values in [0, 255] and their boxes; returns float32 images.

        Args:
            images: The batch, uint8 or float.
            boxes: Its boxes in the images' pixel coordinates.
            generator: Draws every random amount.
        """
        x = images
        if self.hflip:  # on the 4x smaller uint8 batch, exactly
            flip = torch.rand(len(x), generator=generator, device=generator.device).to(x.device) < 0.5
            x, boxes = hflip(x, boxes, flip)
        x = x.float()
        if self.scale or self.crop:
            factor, offset = random_zoom(len(x), x.shape[-2:], self.scale, self.crop, generator, x.device)
            x, boxes = zoom(x, boxes, factor, offset, self.min_visible, self.min_size)
        if self.brightness or self.contrast or self.saturation:
            x = colour_jitter(x, self.brightness, self.contrast, self.saturation, generator)
        return x, boxes


def hflip(x: torch.Tensor, boxes: BoxBatch, flip: torch.Tensor) -> tuple[torch.Tensor, BoxBatch]:
    """Mirror the images (B, C, H, W) chosen by ``flip`` (B,) left to right, and their boxes: x -> W - x."""
    width = x.shape[-1]
    x1, y1, x2, y2 = boxes.boxes.unbind(-1)
    mirrored = torch.stack([width - x2, y1, width - x1, y2], -1)  # (B, M, 4)
    chosen = (flip[:, None] & boxes.mask)[..., None]  # (B, M, 1); padding stays 0
    flipped = torch.where(flip[:, None, None, None], x.flip(3), x)
    return flipped, BoxBatch(torch.where(chosen, mirrored, boxes.boxes), boxes.labels, boxes.mask)


def random_zoom(
    batch: int, size: Sequence[int], scale: float, crop: float, generator: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw each image's crop window and zoom as one map x -> factor * x + offset: (factor (B,), offset (B, 2)).

    The crop window of side share c in [1 - crop, 1] sits at a uniform position inside the
    image; the zoom s in [1 - scale, 1 + scale] places the zoomed window at a uniform offset
    in [0, (1 - s) * side] (a border when s < 1, a cut when s > 1).
    """
    height, width = size
    sides = torch.tensor([width, height], dtype=torch.float32, device=device)  # (2,) in x, y order
    share = _uniform(batch, 1 - crop, 1, generator, device)
    corner = _uniform(2 * batch, 0, 1, generator, device).view(batch, 2) * (1 - share[:, None]) * sides
    zoomed = _uniform(batch, 1 - scale, 1 + scale, generator, device)
    place = _uniform(2 * batch, 0, 1, generator, device).view(batch, 2) * (1 - zoomed[:, None]) * sides
    factor = zoomed / share
    return factor, place - corner * factor[:, None]


def zoom(
    x: torch.Tensor,
    boxes: BoxBatch,
    factor: torch.Tensor,
    offset: torch.Tensor,
    min_visible: float = 0.25,
    min_size: float = 2.0,
) -> tuple[torch.Tensor, BoxBatch]:
    """Resample images (B, C, H, W) by x -> factor (B,) * x + offset (B, 2) in pixels; boxes moved, clipped, dropped.

    Pixels from outside the image take the image's mean colour per channel (replicating the
    edge, as classification's :func:`cnnkit.data.augment.affine` does, would smear a border
    object into stripes a detector could learn as objects).
    """
    batch, _, height, width = x.shape
    # theta maps output to input coordinates in [-1, 1] grid units, u = 2 x / W - 1: the inverse map.
    theta = torch.zeros(batch, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / factor
    theta[:, 0, 2] = (1 - 2 * offset[:, 0] / width) / factor - 1
    theta[:, 1, 2] = (1 - 2 * offset[:, 1] / height) / factor - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
    mean = x.mean(dim=(2, 3), keepdim=True)
    resampled = F.grid_sample(x - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mean
    moved = boxes.boxes * factor[:, None, None] + offset.repeat(1, 2)[:, None, :]  # (B, M, 4)
    return resampled, clip_boxes(BoxBatch(moved, boxes.labels, boxes.mask), (height, width), min_visible, min_size)


def clip_boxes(boxes: BoxBatch, size: Sequence[int], min_visible: float = 0.25, min_size: float = 2.0) -> BoxBatch:
    """Clip boxes to an image of (H, W) pixels; drop, with their labels, those mostly or wholly cut off.

    A box stays when at least ``min_visible`` of its area is inside the image and the inside
    part is at least ``min_size`` pixels wide and high. Dropped slots become padding.
    """
    height, width = size
    b = boxes.boxes
    limits = torch.tensor([width, height, width, height], dtype=b.dtype, device=b.device)
    clipped = torch.minimum(b.clamp(min=0), limits)
    area = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    inside_w, inside_h = clipped[..., 2] - clipped[..., 0], clipped[..., 3] - clipped[..., 1]
    keep = boxes.mask & (inside_w >= min_size) & (inside_h >= min_size) & (inside_w * inside_h >= min_visible * area)
    return BoxBatch(torch.where(keep[..., None], clipped, 0.0), torch.where(keep, boxes.labels, -1), keep)


# A common starting point for photos (flips, mild zoom and crops, colour); not yet tuned on a detection benchmark.
AUTO_BOX_AUGMENTATION = "hflip,scale=0.25,crop=0.3,brightness=0.2,contrast=0.2,saturation=0.2"

_FLOAT_KEYS = tuple(f.name for f in fields(BoxAugmentation) if isinstance(f.default, float))


def parse_box_augmentation(spec: str) -> BoxAugmentation | None:
    """Turn ``--augment`` of a detection run into a :class:`BoxAugmentation`, or None for no augmentation.

    ``auto`` is :data:`AUTO_BOX_AUGMENTATION`; otherwise a comma-separated list such as
    ``hflip,scale=0.5,crop=0.4,brightness=0.2,min_visible=0.5``.

    Example:
        >>> parse_box_augmentation("hflip,scale=0.25").describe()
        'hflip, scale=0.25'
    """
    readers = {"hflip": read_switch} | dict.fromkeys(_FLOAT_KEYS, float)
    example = "hflip,scale=0.25,crop=0.3,brightness=0.2,contrast=0.2,saturation=0.2,min_visible=0.25,min_size=2"
    values = parse_spec(spec, AUTO_BOX_AUGMENTATION, readers, "box augmentation", example)
    return None if values is None else BoxAugmentation(**values)

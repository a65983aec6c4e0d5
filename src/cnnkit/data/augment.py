"""Augmentation of whole batches on tensors: one vectorised call per batch instead of per-sample PIL.

Every operation draws its random numbers from one ``torch.Generator`` so a seeded run is
repeatable, and runs on whatever device the batch is on, so CPU and GPU give the same
results up to floating-point rounding.

In a distributed run each process holds one share of a global batch, and all processes
hold generators in the same state. With ``shard=(rank, world_size)`` every process draws
the parameters of the whole global batch (a few numbers per image) and applies those of
its own images, which the loader deals out as every ``world_size``-th image of the global
batch: each image gets its own draw, exactly the one a single process augmenting the
whole global batch would give it, and the generators stay in step on every rank, so the
state rank 0 saves resumes every rank exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Which augmentations to apply, and how strongly.

    Args:
        crop_padding: Pad by this many pixels (edge-replicated), then crop back at a random offset. Defaults to 0.
        hflip: Flip half of the images left to right. Defaults to False (wrong for digits and text).
        rotate: Maximum rotation in degrees, drawn uniformly in [-rotate, rotate]. Defaults to 0.
        scale: Maximum relative zoom, drawn in [1 - scale, 1 + scale]. Defaults to 0.
        translate: Maximum shift as a share of the image side. Defaults to 0.
        brightness: Maximum relative brightness change. Defaults to 0.
        contrast: Maximum relative contrast change. Defaults to 0.
        saturation: Maximum relative saturation change (RGB only). Defaults to 0.
        erasing: Probability of blanking one random rectangle per image (random erasing). Defaults to 0.
    """

    crop_padding: int = 0
    hflip: bool = False
    rotate: float = 0.0
    scale: float = 0.0
    translate: float = 0.0
    brightness: float = 0.0
    contrast: float = 0.0
    saturation: float = 0.0
    erasing: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The changed settings only, e.g. ``crop_padding=4, hflip``."""
        chosen = {key: value for key, value in asdict(self).items() if value}
        return ", ".join(key if value is True else f"{key}={value}" for key, value in chosen.items()) or "none"

    def __call__(
        self, images: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
    ) -> torch.Tensor:
        """Augment a batch of images (B, C, H, W) with pixel values in [0, 255]; returns float32.

        Args:
            images: The batch, or with ``shard`` this process's share of the global batch.
            generator: Draws every random amount.
            shard: ``(rank, world_size)``: ``images`` are images ``rank``, ``rank + world_size``, ...
                of a global batch of ``B * world_size``, whose parameters are drawn whole. Defaults to
                ``(0, 1)``, one process.
        """
        x = images  # crops and flips move pixels, so they run on the 4x smaller uint8 batch
        if self.crop_padding:
            x = random_crop(x, self.crop_padding, generator, hflip=self.hflip, shard=shard)
        elif self.hflip:
            x = random_hflip(x, generator, shard)
        x = x.float()
        if self.rotate or self.scale or self.translate:
            x = random_affine(x, self.rotate, self.scale, self.translate, generator, shard)
        if self.brightness or self.contrast or self.saturation:
            x = colour_jitter(x, self.brightness, self.contrast, self.saturation, generator, shard)
        if self.erasing:
            x = random_erasing(x, self.erasing, generator, shard)
        return x


def _uniform(count: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(count, generator=generator, device=generator.device).to(device) * (high - low) + low


def _own(drawn: torch.Tensor, shard: tuple[int, int], dim: int = 0) -> torch.Tensor:
    """This rank's rows (along ``dim``) of draws made for the whole global batch: every world_size-th, from rank."""
    rank, world_size = shard
    return drawn[(slice(None),) * dim + (slice(rank, None, world_size),)]


def random_crop(
    x: torch.Tensor, padding: int, generator: torch.Generator, hflip: bool = False, shard: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """Pad every image (edges replicated) and cut a same-sized window at a per-image random offset.

    With ``hflip``, half of the windows are also mirrored left to right in the same gather,
    drawing the same random numbers as :func:`random_hflip` after the crop would.

    Implemented as one row gather over the pixels (channels last) with clamped row and
    column indices: that equals replicate padding without building the padded batch, works
    on uint8 as well as float images, and ran 2.5x faster than advanced indexing.
    """
    batch, channels, height, width = x.shape
    drawn = (batch * shard[1],)  # the global batch's
    top = _own(torch.randint(0, 2 * padding + 1, drawn, generator=generator, device=generator.device), shard)
    left = _own(torch.randint(0, 2 * padding + 1, drawn, generator=generator, device=generator.device), shard)
    top, left = top.to(x.device), left.to(x.device)
    rows = (top[:, None] - padding + torch.arange(height, device=x.device)).clamp(0, height - 1)[:, :, None]
    cols = (left[:, None] - padding + torch.arange(width, device=x.device)).clamp(0, width - 1)[:, None, :]
    if hflip:
        flip = _own(torch.rand(drawn, generator=generator, device=generator.device), shard).to(x.device) < 0.5
        cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    first = torch.arange(batch, device=x.device)[:, None, None] * (height * width)
    pixels = x.permute(0, 2, 3, 1).reshape(batch * height * width, channels)  # (B*H*W, C)
    cropped = pixels.index_select(0, (first + rows * width + cols).reshape(-1))
    return cropped.view(batch, height, width, channels).permute(0, 3, 1, 2)  # (B, C, H, W), channels last


def random_hflip(x: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
    drawn = torch.rand(len(x) * shard[1], generator=generator, device=generator.device)
    flip = _own(drawn, shard).to(x.device) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def random_affine(
    x: torch.Tensor,
    rotate: float,
    scale: float,
    translate: float,
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """Rotate, zoom and shift each image by its own random amount (bilinear, edges replicated)."""
    batch = len(x) * shard[1]  # the global batch's draws
    degrees = _own(_uniform(batch, -rotate, rotate, generator, x.device), shard)
    zoom = _own(_uniform(batch, 1 - scale, 1 + scale, generator, x.device), shard)
    shift = _own(_uniform(2 * batch, -translate, translate, generator, x.device).view(batch, 2), shard)
    return affine(x, degrees, zoom, shift)


def affine(x: torch.Tensor, degrees: torch.Tensor, zoom: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image (B,) degrees counter-clockwise about its centre, zoom (B,), shift (B, 2) by image sides."""
    angle = degrees * (math.pi / 180)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # theta maps output to input coordinates in [-1, 1] grid units: the inverse of the wanted transform.
    row_x = torch.stack([cos, -sin, -2 * shift[:, 0]], 1)
    row_y = torch.stack([sin, cos, -2 * shift[:, 1]], 1)
    grid = F.affine_grid(torch.stack([row_x, row_y], 1), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def colour_jitter(
    x: torch.Tensor,
    brightness: float,
    contrast: float,
    saturation: float,
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> torch.Tensor:
    """Scale brightness, contrast (around each image's mean) and saturation (around its grayscale)."""
    batch = len(x) * shard[1]  # the global batch's draws
    factor = _own(_uniform(3 * batch, -1, 1, generator, x.device).view(3, batch, 1, 1, 1), shard, dim=1)
    x = x * (1 + brightness * factor[0])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + contrast * factor[1]) + mean
    if saturation and x.shape[1] == 3:
        gray = (x * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (x - gray) * (1 + saturation * factor[2]) + gray
    return x.clamp(0, 255)


def random_erasing(
    x: torch.Tensor, probability: float, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
) -> torch.Tensor:
    """Blank one rectangle (2-25% of the area, aspect 0.3-3.3) per chosen image with its mean value."""
    batch, _, height, width = x.shape
    batch *= shard[1]  # the global batch's draws

    def draw(low: float, high: float) -> torch.Tensor:  # (B,) of this rank's images
        return _own(_uniform(batch, low, high, generator, x.device), shard)

    area = draw(0.02, 0.25) * height * width
    aspect = torch.exp(draw(math.log(0.3), math.log(3.3)))
    box_h = (area * aspect).sqrt().clamp(1, height)
    box_w = (area / aspect).sqrt().clamp(1, width)
    top = draw(0, 1) * (height - box_h)
    left = draw(0, 1) * (width - box_w)
    chosen = draw(0, 1) < probability
    rows = torch.arange(height, device=x.device).view(1, height, 1)
    cols = torch.arange(width, device=x.device).view(1, 1, width)
    inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1))
    inside = inside & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
    mask = (inside & chosen.view(-1, 1, 1))[:, None]  # (B, 1, H, W)
    return torch.where(mask, x.mean(dim=(2, 3), keepdim=True), x)


# Chosen on validation splits: flips suit clothing and photos but not digits; padded crops
# pay off only in longer runs, so the short default recipes leave them out.
AUTO_AUGMENTATION = {
    "digits": "none",
    "mnist": "none",
    "fashion-mnist": "hflip",
    "cifar10": "crop=4,hflip",
}
FOLDER_AUGMENTATION = "hflip"

_FLOAT_KEYS = tuple(f.name for f in fields(Augmentation) if isinstance(f.default, float))  # rotate, ..., erasing


def read_switch(value: str) -> bool:
    """A bare key, ``=1``, ``=true`` or ``=yes`` switches an augmentation on (``hflip``)."""
    return value in ("", "1", "true", "yes")


def parse_spec(
    spec: str, auto: str, readers: Mapping[str, Callable[[str], Any]], kind: str, example: str
) -> dict[str, Any] | None:
    """Read an ``--augment`` list into keyword arguments, or None for ``none``.

    The one reader of the flag for images, audio and boxes, so that all three accept the
    same syntax (``auto``, ``none``, or ``key=value`` and bare ``key`` items separated by
    commas) and refuse a bad item with the same one line.

    Args:
        spec: The flag's value.
        auto: The list that ``auto`` stands for.
        readers: Each accepted key -> what reads its value text (raising ValueError when it cannot).
        kind: What is augmented, named in the error, e.g. "audio augmentation".
        example: A valid list, shown in the error.
    """
    from cnnkit.errors import CnnkitError

    spec = auto if spec == "auto" else spec
    if spec in ("none", ""):
        return None
    values: dict[str, Any] = {}
    for item in spec.split(","):
        key, _, value = item.strip().partition("=")
        try:
            values[key] = readers[key](value)
        except (KeyError, ValueError):
            raise CnnkitError(
                f"cannot read {kind} {item!r} in --augment {spec!r}; use none, auto, or a list such as {example}"
            ) from None
    return values


def parse_augmentation(spec: str, dataset: str = "", img_size: int = 32) -> Augmentation | None:
    """Turn ``--augment`` into an :class:`Augmentation`, or None for no augmentation.

    ``auto`` picks per dataset (see :data:`AUTO_AUGMENTATION`; image folders get flips);
    otherwise a comma-separated list such as ``crop=4,hflip,rotate=10,erasing=0.25``.

    Example:
        >>> parse_augmentation("crop=2,hflip")
        Augmentation(crop_padding=2, hflip=True, rotate=0.0, scale=0.0, translate=0.0, brightness=0.0, ...)
    """
    readers = {"hflip": read_switch, "crop": lambda value: int(value or max(1, img_size // 8))}
    values = parse_spec(
        spec,
        AUTO_AUGMENTATION.get(dataset, FOLDER_AUGMENTATION),
        readers | dict.fromkeys(_FLOAT_KEYS, float),
        "augmentation",
        "crop=4,hflip,rotate=10,scale=0.1,translate=0.1,brightness=0.2,contrast=0.2,saturation=0.2,erasing=0.25",
    )
    if values is None:
        return None
    if "crop" in values:
        values["crop_padding"] = values.pop("crop")
    return Augmentation(**values)

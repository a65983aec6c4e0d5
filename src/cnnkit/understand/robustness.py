"""Perturbed copies of test images: shift, rotation, scale, noise and brightness, as `cnnkit compare` measures them.

Every function takes and returns uint8 images (N, C, H, W) and is deterministic: the
direction of a shift and the sign of a rotation alternate with the image's index, so
two models are always measured on exactly the same perturbed pictures. Pixels moved in
from outside the frame are black (0), the background of digits and Fashion-MNIST.
"""

from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as F

# The levels ``cnnkit compare`` measures; "noise" is a Gaussian standard deviation in units of the full pixel range.
PERTURBATIONS: dict[str, list[float]] = {
    "shift": [1, 2, 3, 4, 5, 6],
    "rotation": [5, 10, 15, 20, 25, 30],
    "scale": [0.8, 0.9, 1.1, 1.2],
    "noise": [0.05, 0.1, 0.2, 0.3],
    "brightness": [0.5, 0.75, 1.25, 1.5],
}
UNITS = {"shift": "pixels", "rotation": "degrees", "scale": "factor", "noise": "std", "brightness": "factor"}
_DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1))  # right, left, down, up


def _by_group(images: torch.Tensor, groups: int, transform) -> torch.Tensor:
    """Apply ``transform(batch, group)`` to the images whose index is ``group`` modulo ``groups``."""
    out = torch.empty_like(images)
    for group in range(groups):
        out[group::groups] = transform(images[group::groups], group)
    return out


def perturb(images: torch.Tensor, kind: str, level: float) -> torch.Tensor:
    """A perturbed copy of uint8 images (N, C, H, W).

    Args:
        images: The clean images.
        kind: ``shift`` (pixels, in one of four directions), ``rotation`` (degrees,
            alternating sign), ``scale`` (zoom factor about the centre), ``noise``
            (Gaussian, standard deviation as a share of 255, fixed seed) or ``brightness``
            (pixel values multiplied by the factor).
        level: How much.
    """
    if kind == "shift":
        step = int(level)
        return _by_group(
            images,
            4,
            lambda batch, g: F.affine(
                batch, angle=0.0, translate=[_DIRECTIONS[g][0] * step, _DIRECTIONS[g][1] * step], scale=1.0, shear=[0.0]
            ),
        )
    if kind == "rotation":
        return _by_group(
            images,
            2,
            lambda batch, g: F.rotate(batch, level if g == 0 else -level, F.InterpolationMode.BILINEAR),
        )
    if kind == "scale":
        return F.affine(
            images, angle=0.0, translate=[0, 0], scale=level, shear=[0.0], interpolation=F.InterpolationMode.BILINEAR
        )
    if kind == "noise":
        noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0)) * (255.0 * level)
        return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)
    if kind == "brightness":
        return (images.float() * level).round().clamp(0, 255).to(torch.uint8)
    raise ValueError(f"unknown perturbation {kind!r}; use one of {', '.join(PERTURBATIONS)}")

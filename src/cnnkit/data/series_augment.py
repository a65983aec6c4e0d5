"""Augmentation of whole batches of time series (B, C, L): window slicing, amplitude scaling and jitter.

The conventions of :mod:`cnnkit.data.augment`: every random number comes from one
``torch.Generator`` (a seeded or resumed run draws the same stream), each operation is
vectorised over the batch and runs on the batch's device, and each random operation draws
its amounts and calls a deterministic function of them (``slice_windows``, ``scale``),
which the tests check exactly.

Window slicing (Le Guennec, Malinowski and Tavenard, "Data Augmentation for Time Series
Classification using Convolutional Neural Networks", ECML/PKDD AALTD workshop 2016) trains
on a random window of each series, stretched back to the full length by linear
interpolation, so that the model sees a class's shape at slightly different positions and
speeds; the full series is classified at test time. Scaling multiplies each series by one
random factor (Um et al. 2017). Scaling and jitter keep a series' padding zero; the window
is taken over the padded length (the batch carries no lengths), so a short series of an
unequal-length set is stretched with its padding, by the same factor as the rest.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch

from cnnkit.data.augment import _own, _uniform, parse_spec
from cnnkit.errors import CnnkitError

# What ``auto`` stands for: none until a TRAIN-only comparison (benchmarks/ucr.py --select --augments ...,
# docs/benchmarks.md) measures a list that helps; the loaded dev machine could not run one (issue 16).
AUTO_SERIES_AUGMENTATION = "none"


@dataclass(frozen=True)
class SeriesAugmentation:
    """Which series augmentations to apply, and how strongly.

    Args:
        window: Share of the length a training window may leave out: each series becomes a random
            window of ``(1 - window)`` of its steps stretched back to the full length. Defaults to 0.
        scale: Largest amplitude change: each series is multiplied by a factor in [1 - scale, 1 + scale].
            Defaults to 0.
        jitter: Standard deviation of Gaussian noise added to every step (the units of the
            series; about 1 for z-normalised ones). Defaults to 0.
    """

    window: float = 0.0
    scale: float = 0.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        for name, value, top in (("window", self.window, 0.9), ("scale", self.scale, 0.9), ("jitter", self.jitter, 10)):
            if not 0 <= value <= top:
                raise CnnkitError(f"--augment {name}={value:g}: use a value from 0 to {top:g} for series")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The settings that act, e.g. ``window=0.1, scale=0.1``; ``none`` when none does."""
        return ", ".join(f"{f.name}={getattr(self, f.name):g}" for f in fields(self) if getattr(self, f.name)) or "none"

    def __call__(self, x: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)) -> torch.Tensor:
        """Augment one training batch (B, C, L), one process's share (``shard`` is the loop's ``(rank, world_size)``).

        The amounts are drawn for the whole global batch, ``B * world_size`` series, and the
        rank takes its own rows of them, as image augmentation does.
        """
        count = len(x) * shard[1]
        device = x.device
        if self.window:
            starts = _own(_uniform(count, 0.0, self.window, generator, device), shard)
            x = slice_windows(x, starts, 1.0 - self.window)
        if self.scale:
            x = scale(x, _own(_uniform(count, 1 - self.scale, 1 + self.scale, generator, device), shard))
        if self.jitter:
            noise = torch.randn((count, *x.shape[1:]), generator=generator, device=generator.device).to(device)
            x = x + self.jitter * _own(noise, shard).to(x.dtype) * (x != 0)  # padding stays zero
        return x


def slice_windows(x: torch.Tensor, starts: torch.Tensor, width: float) -> torch.Tensor:
    """Each series of (B, C, L) cut to the window from ``starts`` (B,) of ``width``, both shares of L, stretched to L.

    Linear interpolation between the two steps around each of the L new positions.

    Example:
        >>> slice_windows(torch.tensor([[[0.0, 2.0, 4.0]]]), torch.tensor([0.0]), 2 / 3)
        tensor([[[0., 1., 2.]]])
    """
    length = x.shape[-1]
    # (B, L) positions in the original steps: from start to start + width of the last step
    fraction = torch.linspace(0, 1, length, device=x.device, dtype=torch.float32)
    positions = (starts.to(x.device, torch.float32)[:, None] + width * fraction) * (length - 1)
    low = positions.floor().clamp(0, length - 1)
    weight = (positions - low)[:, None, :].to(x.dtype)  # (B, 1, L)
    low = low.long()[:, None, :].expand(-1, x.shape[1], -1)  # (B, C, L)
    high = (low + 1).clamp(max=length - 1)
    return x.gather(2, low) * (1 - weight) + x.gather(2, high) * weight


def scale(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Each series of (B, C, L) times its (B,) factor."""
    return x * factors.to(x.device, x.dtype)[:, None, None]


def parse_series_augmentation(spec: str) -> SeriesAugmentation | None:
    """Turn ``--augment`` of a series run into a :class:`SeriesAugmentation`, or None for ``none``.

    ``auto`` is :data:`AUTO_SERIES_AUGMENTATION` (none so far); otherwise a comma-separated list of
    ``key=value`` of the fields, e.g. ``window=0.1,scale=0.1,jitter=0.03``.

    Example:
        >>> parse_series_augmentation("window=0.2").describe()
        'window=0.2'
    """
    readers = {f.name: float for f in fields(SeriesAugmentation)}
    values = parse_spec(spec, AUTO_SERIES_AUGMENTATION, readers, "series augmentation", "window=0.1,scale=0.1")
    return None if values is None else SeriesAugmentation(**values)

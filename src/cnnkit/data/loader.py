"""Batches from an in-memory :class:`ImageSet` or :class:`SeriesSet`: no worker processes, no per-sample Python."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from cnnkit.data.imageset import ImageSet
from cnnkit.data.series import SeriesSet

STATS_BLOCK_VALUES = 1 << 22  # pixel values per block when summing channel statistics (32 MB as float64)


def iterate_batches(
    data: ImageSet | SeriesSet,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    start: int = 0,
    weights: torch.Tensor | None = None,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (inputs, labels (B,)) batches of ``data.inputs``, shuffled with ``generator`` when asked.

    The inputs are uint8 images (B, C, H, W) or float32 series (B, C, L).
    ``start`` skips that many batches of the same order (a resumed epoch); ``weights`` (N,)
    draws the epoch's images with replacement in proportion to them (balanced sampling).
    ``shard=(rank, world_size)`` gives process ``rank`` every ``world_size``-th image of the
    epoch's order: with generators seeded alike, the processes of a distributed run see
    disjoint parts of one shuffled epoch, all reading the same memory-mapped cache.
    """
    rank, world_size = shard
    if not 0 <= rank < world_size:
        raise ValueError(f"shard rank {rank} is outside 0..{world_size - 1}")
    count = len(data)
    if weights is not None:
        order = torch.multinomial(weights, count, replacement=True, generator=generator)
    else:
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    order = order[rank::world_size]
    for first in range(start * batch_size, len(order), batch_size):
        index = order[first : first + batch_size]
        yield data.inputs[index], data.labels[index]


def num_batches(data: ImageSet | SeriesSet, batch_size: int) -> int:
    return -(-len(data) // batch_size)


def channel_stats(images: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of pixels scaled to [0, 1].

    Summed in blocks of images, so a memory-mapped set larger than memory is read once, never copied whole.
    """
    channels = images.images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    step = max(1, STATS_BLOCK_VALUES // max(1, images.images[0].numel()))
    for start in range(0, len(images), step):
        block = images.images[start : start + step].transpose(0, 1).reshape(channels, -1).double()
        total += block.sum(1)
        squares += (block * block).sum(1)
    count = max(1, len(images) * images.images.shape[2] * images.images.shape[3])
    mean = total / count / 255.0
    variance = (squares / count / 255.0**2 - mean * mean) * count / max(1, count - 1)
    std = variance.clamp(min=0).sqrt().clamp(min=1e-3)
    return tuple(mean.tolist()), tuple(std.tolist())

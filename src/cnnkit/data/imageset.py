"""Decoded images held as one uint8 tensor, and the train/val/test split of a dataset."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class ImageSet:
    """Images ready for the model, with their labels and where each came from.

    Attributes:
        images: uint8 tensor (N, C, H, W); for image folders a channels-last view of the
            memory-mapped cache, so take batches by index rather than copying it whole.
        labels: int64 tensor (N,).
        classes: Class names; ``labels`` index into it.
        sources: One provenance string per image: a file path relative to the dataset
            root, or ``name[index]`` for built-in arrays.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    sources: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def inputs(self) -> torch.Tensor:
        """The tensor batches are taken from, named alike for every kind of data (``SeriesSet.inputs``)."""
        return self.images

    def subset(self, indices: Sequence[int] | torch.Tensor) -> ImageSet:
        """The images at ``indices``, copied; every index in order returns this set itself."""
        index = torch.as_tensor(indices, dtype=torch.long)
        if len(index) == len(self) and bool((index == torch.arange(len(self))).all()):
            return self
        return ImageSet(self.images[index], self.labels[index], self.classes, [self.sources[i] for i in index.tolist()])

    def slice(self, start: int, stop: int) -> ImageSet:
        """Images ``start:stop`` as a view: no pixels are copied."""
        return ImageSet(self.images[start:stop], self.labels[start:stop], self.classes, self.sources[start:stop])


@dataclass
class SkippedFile:
    """A file that was left out, and why."""

    path: str
    reason: str


@dataclass
class DataSplits:
    """The three splits of one dataset, plus what was skipped or worth a warning while reading it."""

    name: str
    train: ImageSet
    val: ImageSet
    test: ImageSet
    split_rule: str
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes


def _stable_order(source: str) -> str:
    return hashlib.sha1(source.encode("utf-8")).hexdigest()


def stratified_split(labels: torch.Tensor, sources: Sequence[str], fractions: Sequence[float]) -> list[list[int]]:
    """Split indices per class into parts of the given fractions; the remainder is the last part.

    The order within a class comes from a hash of each image's source, so the split
    depends only on the files themselves: no seed, and adding an image to a class does
    not move any other image between parts.
    """
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in labels.unique().tolist():
        members = sorted((labels == label).nonzero().flatten().tolist(), key=lambda i: _stable_order(sources[i]))
        start = 0
        for part, fraction in zip(parts, fractions):
            count = round(len(members) * fraction)
            count = min(count, max(0, len(members) - start - 1))  # always leave one for training
            part.extend(members[start : start + count])
            start += count
        parts[-1].extend(members[start:])
    return [sorted(part) for part in parts]

"""Annotated images decoded for a detector: pixels through the image cache, boxes moved to the model input.

:func:`cnnkit.data.annotations.load_detection` gives boxes in original pixels; training
needs each image at the model's square input size, decoded once into the memory-mapped
cache (:func:`cnnkit.data.cache.decode_cached`, the classification path's), and its boxes
in that input's pixels. The resize rules are :func:`cnnkit.data.decode.resize_image`'s,
and :class:`Placement` is the same rule as a map of coordinates, ``x -> scale * x + offset``
per axis, so boxes go to the input and detections back to the original image:

- ``squash``: each side scaled to the input, no offset; the aspect ratio changes.
- ``pad``: the longer side scaled to the input, the image centred (letterbox): every box kept.
- ``crop``: the shorter side scaled to the input, the overhang cut at both ends: a box
  there is clipped, and dropped when too little of it is left (:func:`cnnkit.data.box_augment.clip_boxes`).

A JPEG may be decoded at a reduced scale first (the decoder's draft mode); its side then
rounds to a whole pixel, so a box can land up to one input pixel from the exact map.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.boxes import BoxedImage, DetectionSplits
from cnnkit.data.cache import decode_cached
from cnnkit.data.imageset import ImageSet, SkippedFile
from cnnkit.data.placement import Placement


@dataclass
class BoxedSet:
    """One split's images decoded at the model input size, with their boxes.

    Attributes:
        images: uint8 (N, C, S, S), a view of the memory-mapped cache: take batches by index.
        items: Each image's annotations in original pixels (what evaluation compares against).
        placements: Each image's map from original pixels to the input.
        classes: The class names that labels index.
    """

    images: torch.Tensor
    items: list[BoxedImage]
    placements: list[Placement]
    classes: list[str]

    def __len__(self) -> int:
        return len(self.items)

    @property
    def sources(self) -> list[str]:
        """Each image's path relative to the dataset root (what ``split.json`` records)."""
        return [item.path for item in self.items]

    def targets(self, rows: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """``{"boxes": (M, 4) in input pixels, "labels": (M,)}`` of the images at ``rows``, as detectors take them.

        COCO's crowd boxes are left out, as Detectron2 leaves them out of training: one box
        around many objects is no example of one (evaluation ignores detections on them).
        """
        targets = []
        for row in rows:
            item, single = self.items[row], ~self.items[row].crowd
            targets.append({"boxes": self.placements[row].to_input(item.boxes[single]), "labels": item.labels[single]})
        return targets

    def index_set(self) -> ImageSet:
        """The images as an :class:`ImageSet` whose labels are row numbers: the classification loader's batches
        (order, resume position) then name the rows whose boxes go with them."""
        rows = torch.arange(len(self.items))
        return ImageSet(self.images, rows, self.classes, self.sources)


@dataclass
class DecodedDetection:
    """The train/val/test :class:`BoxedSet` of a dataset, with what was skipped and worth a warning.

    It has the fields of :class:`cnnkit.data.imageset.DataSplits` that run records read
    (``name``, ``split_rule``, ``classes``, each split's ``sources``, ``skipped``).
    """

    name: str
    format: str
    classes: list[str]
    train: BoxedSet
    val: BoxedSet
    test: BoxedSet
    split_rule: str
    skipped: list[SkippedFile] = field(default_factory=list)
    unreadable: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def decode_boxed(
    root: Path,
    items: list[BoxedImage],
    classes: list[str],
    img_size: int,
    channels: int | None,
    resize: str,
    workers: int,
) -> tuple[BoxedSet, list[SkippedFile]]:
    """Decode one split's images at ``img_size`` through the image cache; (the set, the files that failed).

    ``channels=None`` decodes grayscale when every image is, else RGB, as image folders do.
    """
    decoded = decode_cached(root, [item.path for item in items], img_size, channels, resize, workers)
    kept = [items[i] for i in decoded.kept]
    placements = [Placement.of(item.size, img_size, resize) for item in kept]
    failed = [SkippedFile(items[i].path, reason) for i, reason in decoded.failures]
    return BoxedSet(decoded.images, kept, placements, classes), failed


def decode_detection(
    splits: DetectionSplits, img_size: int, channels: int | None, resize: str, workers: int
) -> DecodedDetection:
    """Decode every split :func:`cnnkit.data.annotations.load_detection` read; val and test take train's channels."""
    root = Path(splits.name)
    train, unreadable = decode_boxed(root, splits.train, splits.classes, img_size, channels, resize, workers)
    channels = train.images.shape[1]
    val, failed_val = decode_boxed(root, splits.val, splits.classes, img_size, channels, resize, workers)
    test, failed_test = decode_boxed(root, splits.test, splits.classes, img_size, channels, resize, workers)
    unreadable += failed_val + failed_test
    return DecodedDetection(
        splits.name,
        splits.format,
        splits.classes,
        train,
        val,
        test,
        splits.split_rule,
        [*splits.skipped, *unreadable],
        unreadable,
        list(splits.warnings),
    )

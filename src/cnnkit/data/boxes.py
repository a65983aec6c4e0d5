"""Boxed images for detection, and the rules every annotation format shares.

One coordinate convention holds inside cnnkit: a box is ``[x1, y1, x2, y2]`` in pixels of
the original, upright image (EXIF orientation applied, as :mod:`cnnkit.data.decode` does),
continuous coordinates with ``(0, 0)`` the image's top-left corner and ``(W, H)`` its
bottom-right one, so a box's width is ``x2 - x1``. Each format converts into it once
(:func:`from_coco`, :func:`from_yolo`, :func:`from_voc`); the box rules
(:func:`box_issue`, :func:`overshoot`) then decide which boxes are kept, for the readers
and ``cnnkit check`` alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cnnkit.data.folder import SPLIT_FOLDERS
from cnnkit.data.imageset import SkippedFile
from cnnkit.data.placement import image_sizes as image_sizes  # the readers' (coco, voc, yolo) size lookup

Box = tuple[float, float, float, float]

# A pixel-format box whose four coordinates all lie in [0, 1] is normalised by mistake once the
# image is larger than this: a real box there would be under one pixel in a corner.
NORMALISED_MIN_SIDE = 2

# YOLO values up to this pass (and are clipped to the image by the box rules): exporters round
# boxes that touch the border to 1.0000001. Larger values are pixels written where YOLO wants [0, 1].
YOLO_MAX_VALUE = 1.01

# A box that reaches past its image by more than this is reported; it is clipped either way.
REPORTED_OVERSHOOT = 1.0


@dataclass
class SkippedAnnotation(SkippedFile):
    """A :class:`SkippedFile` from an annotation set: ``path`` is the file, ``reason`` names the annotation.

    ``kind`` groups the problem for ``cnnkit check``: ``malformed``, ``missing-image``,
    ``unannotated``, ``convention``, ``unknown-class``, ``box`` or ``unreadable-image``.
    """

    kind: str = "malformed"


@dataclass
class RawAnnotations:
    """One image's boxes as its annotation file states them, in pixel ``[x1, y1, x2, y2]``, before the box rules.

    Attributes:
        path: The image, relative to the dataset root.
        size: (width, height) of the upright image.
        source: The annotation file, relative to the dataset root, for messages.
        boxes: One box per annotation.
        names: The class name of each box.
        where: Where each box is in ``source``: ``line 3``, ``annotation 12``, ``object 2``.
        crowd: COCO's ``iscrowd`` per box.
        difficult: Pascal VOC's ``difficult`` per box.
        dropped: Annotations of this image its reader already skipped (malformed, wrong convention).
    """

    path: str
    size: tuple[int, int]
    source: str
    boxes: list[Box] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    crowd: list[bool] = field(default_factory=list)
    difficult: list[bool] = field(default_factory=list)
    dropped: int = 0

    @property
    def negative(self) -> bool:
        """The file states no objects at all: an image without objects, to train on as background."""
        return not self.boxes and not self.dropped

    def add(self, box: Box, name: str, where: str, crowd: bool = False, difficult: bool = False) -> None:
        self.boxes.append(box)
        self.names.append(name)
        self.where.append(where)
        self.crowd.append(crowd)
        self.difficult.append(difficult)


@dataclass
class ParsedSplit:
    """What one format reader found in one split: images with their raw boxes, class names, problems."""

    images: list[RawAnnotations]
    classes: list[str]
    classes_source: str
    skipped: list[SkippedAnnotation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass
class BoxedImage:
    """One image and its boxes, ready for a detector.

    Attributes:
        path: The image file, relative to the dataset root.
        size: (width, height) of the upright image, in pixels.
        boxes: float32 (M, 4) ``[x1, y1, x2, y2]`` in original pixel coordinates; M may be 0 (a negative).
        labels: int64 (M,), indices into the dataset's classes.
        crowd: bool (M,), COCO's ``iscrowd`` (evaluation ignores these boxes).
        difficult: bool (M,), Pascal VOC's ``difficult`` (likewise).
    """

    path: str
    size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    crowd: np.ndarray
    difficult: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class DetectionSplits:
    """The train/val/test splits of an annotated dataset, one class list for all, and what was skipped."""

    name: str
    format: str
    classes: list[str]
    train: list[BoxedImage]
    val: list[BoxedImage]
    test: list[BoxedImage]
    split_rule: str
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def from_coco(x: float, y: float, width: float, height: float) -> Box:
    """COCO's ``[x, y, w, h]`` (top-left corner and size, pixels) as ``[x1, y1, x2, y2]``."""
    return x, y, x + width, y + height


def from_yolo(cx: float, cy: float, width: float, height: float, size: tuple[int, int]) -> Box:
    """YOLO's centre and size, normalised by the image's (width, height), as pixel ``[x1, y1, x2, y2]``."""
    image_width, image_height = size
    return (
        (cx - width / 2) * image_width,
        (cy - height / 2) * image_height,
        (cx + width / 2) * image_width,
        (cy + height / 2) * image_height,
    )


def from_voc(xmin: float, ymin: float, xmax: float, ymax: float) -> Box:
    """Pascal VOC's 1-based, inclusive pixel indices as continuous ``[x1, y1, x2, y2]``.

    VOC's ``xmin = 1`` is the first pixel column and ``xmax = W`` the last, so the box covers
    ``xmax - xmin + 1`` pixels: subtracting 1 from ``xmin`` and ``ymin`` (the rule Detectron2
    uses) makes a full-image box ``[0, 0, W, H]``.
    """
    return xmin - 1, ymin - 1, xmax, ymax


def looks_normalised(values: Sequence[float], size: tuple[int, int]) -> bool:
    """True when a pixel-format box's values all lie in [0, 1] on an image where that means under a pixel."""
    return max(size) > NORMALISED_MIN_SIDE and all(0.0 <= value <= 1.0 for value in values)


def box_issue(box: Box, size: tuple[int, int]) -> tuple[str, str] | None:
    """Why a box cannot be trained on, as (kind, reason), or None when it can.

    The kinds: ``not-finite``, ``inverted`` (x2 < x1 or y2 < y1), ``zero-area``, ``outside``
    (no part of it inside the image).
    """
    x1, y1, x2, y2 = box
    width, height = size
    shown = f"[{x1:g}, {y1:g}, {x2:g}, {y2:g}]"
    if not all(math.isfinite(value) for value in box):
        return "not-finite", f"box {shown} has a coordinate that is not a finite number"
    if x2 < x1 or y2 < y1:
        return "inverted", f"inverted box {shown}: x2 < x1 or y2 < y1"
    if x2 == x1 or y2 == y1:
        return "zero-area", f"zero-area box {shown}"
    if x2 <= 0 or y2 <= 0 or x1 >= width or y1 >= height:
        return "outside", f"box {shown} lies wholly outside the {width}x{height} image"
    return None


def overshoot(box: Box, size: tuple[int, int]) -> float:
    """How far, in pixels, a box reaches past its image's edges (0 when inside)."""
    x1, y1, x2, y2 = box
    return max(0.0, -x1, -y1, x2 - size[0], y2 - size[1])


def clip(box: Box, size: tuple[int, int]) -> Box:
    """The part of a box inside its image."""
    x1, y1, x2, y2 = box
    return max(x1, 0.0), max(y1, 0.0), min(x2, float(size[0])), min(y2, float(size[1]))


def review(
    raw: RawAnnotations, class_index: dict[str, int]
) -> tuple[BoxedImage | None, list[SkippedAnnotation], float]:
    """Apply the box rules to one image: unusable boxes and unknown classes skipped, the rest clipped.

    An image whose every annotation was skipped is skipped too: it is not a negative, since
    its objects are there, only unusable, and training on it as background would teach the
    model to miss them.

    Returns:
        The image with its kept boxes (None when it is skipped), one skipped annotation per
        dropped box (and one for a skipped image), and the largest overshoot among boxes
        reported as reaching past the image (0 when none did).
    """
    kept: list[int] = []
    skipped: list[SkippedAnnotation] = []
    reported = 0.0
    for i, (box, name) in enumerate(zip(raw.boxes, raw.names)):
        issue = box_issue(box, raw.size)
        if name not in class_index:
            known = ", ".join(class_index) or "none"
            reason = f"{raw.where[i]}: unknown class {name!r} (classes: {known}); box skipped"
            skipped.append(SkippedAnnotation(raw.source, reason, "unknown-class"))
        elif issue:
            skipped.append(SkippedAnnotation(raw.source, f"{raw.where[i]}: {issue[1]}; box skipped", "box"))
        else:
            kept.append(i)
            if (distance := overshoot(box, raw.size)) > REPORTED_OVERSHOOT:
                reported = max(reported, distance)
    if not kept and not raw.negative:
        reason = "every annotation of this image was skipped (see above); not used as a negative"
        return None, [*skipped, SkippedAnnotation(raw.path, reason, "box")], reported
    boxes = np.array([clip(raw.boxes[i], raw.size) for i in kept], dtype=np.float32).reshape(-1, 4)  # (M, 4)
    image = BoxedImage(
        raw.path,
        raw.size,
        boxes,
        np.array([class_index[raw.names[i]] for i in kept], dtype=np.int64),
        np.array([raw.crowd[i] for i in kept], dtype=bool),
        np.array([raw.difficult[i] for i in kept], dtype=bool),
    )
    return image, skipped, reported


def split_of(name: str, within: bool = False) -> str | None:
    """The split a folder name stands for (``valid`` is ``val``), or None.

    With ``within``, a split's name anywhere in ``name`` counts: ``instances_train2017`` is ``train``.
    """
    lowered = name.lower()
    for split, names in SPLIT_FOLDERS.items():
        if lowered in names or (within and any(word in lowered for word in names)):
            return split
    return None

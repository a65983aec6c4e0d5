"""``cnnkit check`` for detection data: every annotation problem, duplicates, and what the boxes look like.

The scan reads the annotations the way training does (:func:`cnnkit.data.annotations.parse_dataset`),
but measures instead of repairing: a box the reader would clip is reported with how far it
reaches past its image. Every image file is decoded and hashed by the image-folder scan's
own per-file check, so unreadable images and identical files (within a split, or leaking
across splits) are found the same way. Files are only read.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cnnkit.data.annotations import class_warnings, parse_dataset, shared_images
from cnnkit.data.boxes import REPORTED_OVERSHOOT, RawAnnotations, box_issue, overshoot
from cnnkit.data.check import check_files, duplicate_warnings
from cnnkit.data.imageset import SkippedFile

# Box sizes are binned by the square root of their area in original pixels (COCO's measure of size).
SIZE_BINS = (0, 20, 40, 80, 160, 320)
SMALL_BOX = (20, 40)  # boxes this size are small enough to decide the detector's finest stride and input size


def size_bin(side: float) -> str:
    """The histogram bin of a box whose square root of area is ``side`` pixels: ``"20-40"``, ``">=320"``."""
    for low, high in itertools.pairwise(SIZE_BINS):
        if side < high:
            return f"{low}-{high}"
    return f">={SIZE_BINS[-1]}"


@dataclass
class DetectionReport:
    """What a detection-data scan found.

    Attributes:
        root: The dataset folder.
        format: ``coco``, ``yolo`` or ``voc``.
        classes: The training split's classes, shared by every split.
        images: Annotated images read, per split.
        negatives: Of those, images with no boxes, per split.
        problems: ``path: reason`` lines by kind (``outside``, ``inverted``, ``zero-area``,
            ``unknown-class``, ``unannotated``, ``missing-image``, ``malformed``, ``convention``,
            ``duplicate``, ``leak``, ...).
        bad: Image files that cannot be decoded.
        warnings: Dataset-wide notes: class mismatches between splits, declared sizes, small boxes.
        class_counts: Boxes per class, per split.
        size_histogram: Boxes per size bin (square root of the area, original pixels).
    """

    root: str
    format: str
    classes: list[str]
    images: dict[str, int] = field(default_factory=dict)
    negatives: dict[str, int] = field(default_factory=dict)
    problems: dict[str, list[str]] = field(default_factory=dict)
    bad: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    class_counts: dict[str, dict[str, int]] = field(default_factory=dict)
    size_histogram: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def add(self, kind: str, line: str) -> None:
        self.problems.setdefault(kind, []).append(line)

    def summary(self) -> str:
        boxes = sum(sum(counts.values()) for counts in self.class_counts.values())
        found = ", ".join(f"{len(lines)} {kind}" for kind, lines in self.problems.items()) or "no problems"
        return (
            f"{self.root}: {self.format} annotations, {sum(self.images.values())} image(s), {boxes} box(es) "
            f"in {len(self.classes)} class(es); {len(self.bad)} unreadable image(s); {found}"
        )


def _measure(report: DetectionReport, raw: RawAnnotations, classes: set[str]) -> Counter:
    """Report one image's unusable boxes; the classes of the usable ones, counted."""
    counts: Counter = Counter()
    for box, name, where in zip(raw.boxes, raw.names, raw.where):
        issue = box_issue(box, raw.size)
        if name not in classes:
            report.add("unknown-class", f"{raw.source}: {where}: class {name!r} is not among the training classes")
        elif issue:
            report.add(issue[0], f"{raw.source}: {where}: {issue[1]}")
        else:
            counts[name] += 1
            if (distance := overshoot(box, raw.size)) > REPORTED_OVERSHOOT:
                shown = ", ".join(f"{value:g}" for value in box)
                line = f"box [{shown}] reaches {distance:.1f} px past the {raw.size[0]}x{raw.size[1]} image (clipped)"
                report.add("outside", f"{raw.source}: {where}: {line}")
            side = ((box[2] - box[0]) * (box[3] - box[1])) ** 0.5
            report.size_histogram[size_bin(side)] = report.size_histogram.get(size_bin(side), 0) + 1
    return counts


def scan_detection(folder: str | Path, workers: int | None = None) -> DetectionReport:
    """Scan an annotated image folder (COCO, YOLO or VOC) and report every problem with its file.

    Args:
        folder: The dataset folder.
        workers: Threads that read images; defaults to the number of cores.

    Returns:
        The report: annotation problems by kind, each naming its file and annotation;
        unreadable and duplicate images; boxes per class and a size histogram.

    Raises:
        CnnkitError: the folder is missing or holds no annotations this reader knows.

    Example:
        >>> report = scan_detection("shelves")
        >>> report.problems.get("outside", [])
    """
    dataset = parse_dataset(folder, workers)
    classes = dataset.base.classes
    report = DetectionReport(str(dataset.root), dataset.format, classes, warnings=class_warnings(dataset))
    report.size_histogram = {size_bin(low): 0 for low in SIZE_BINS}
    split_of: dict[str, str] = {}
    for split, parsed in dataset.splits.items():
        name = split or "all"
        report.warnings += parsed.warnings
        for item in parsed.skipped:
            report.add(item.kind, f"{item.path}: {item.reason}")
        counts: Counter = Counter()
        for raw in parsed.images:
            counts += _measure(report, raw, set(classes))
            split_of[raw.path] = name
        report.images[name] = len(parsed.images)
        report.negatives[name] = sum(1 for raw in parsed.images if raw.negative)
        report.class_counts[name] = {cls: counts[cls] for cls in classes}
    paths = list(split_of)
    digests: dict[str, list[str]] = {}
    for path, (reason, warning, digest) in zip(paths, check_files(dataset.root, paths, True, workers)):
        if reason:
            report.bad.append(SkippedFile(path, reason))
        if warning:
            report.warnings.append(warning)
        if digest:
            digests.setdefault(digest, []).append(path)
    for kind, line, _ in duplicate_warnings(digests.values(), split_of.__getitem__):
        report.add(kind, line)
    for line in shared_images(dataset):
        report.add("leak", line)
    report.warnings += _size_warnings(report.size_histogram)
    return report


def _size_warnings(histogram: dict[str, int]) -> list[str]:
    total = sum(histogram.values())
    tiny, small = histogram[size_bin(0)], histogram[size_bin(SMALL_BOX[0])]
    lines = []
    if small:
        lines.append(
            f"{small} of {total} box(es) are small ({SMALL_BOX[0]}-{SMALL_BOX[1]} px, square root of the area): "
            "keep the input size large enough that they stay over ~16 px, and use a detector with a stride-8 level"
        )
    if tiny:
        lines.append(
            f"{tiny} of {total} box(es) are under {SMALL_BOX[0]} px: hard for any detector unless the input size "
            "is larger than the original image"
        )
    return lines

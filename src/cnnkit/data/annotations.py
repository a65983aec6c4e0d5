"""Annotated images for detection, found in a folder: COCO JSON, YOLO txt or Pascal VOC XML.

The format is recognised from the files (first match wins): COCO (``annotations.json``,
``_annotations.coco.json`` or ``instances_*.json``, in the folder or its ``annotations/``),
YOLO (``images/`` + ``labels/``), VOC (``Annotations/`` or XML files beside the images).

Splits, in this order: ``train/``, ``val/`` (``valid/``, ``validation/``) and ``test/``
folders that each hold one annotated set; otherwise the splits the format names
(``instances_val2017.json``, ``images/val``, ``ImageSets/Main/val.txt``); a split still
missing is carved from the training images by the image folders' rule (a hash of each
image's path, so adding an image moves no other). Every split shares the training split's
class list; a class only another split names is reported and its boxes skipped. Files are
only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cnnkit.data import coco, voc, yolo
from cnnkit.data.boxes import BoxedImage, DetectionSplits, ParsedSplit, review, split_of
from cnnkit.data.imageset import SkippedFile, stratified_split
from cnnkit.errors import CnnkitError

# The formats in the order they are tried; each module has locate(folder) and read(root, *located, workers).
FORMATS = {"coco": coco, "yolo": yolo, "voc": voc}
SPLITS = ("train", "val", "test")


@dataclass
class ParsedDataset:
    """Every split of an annotated folder as its files state it, before the box rules."""

    root: Path
    format: str
    splits: dict[str | None, ParsedSplit]
    given: str

    @property
    def base(self) -> ParsedSplit:
        """The split whose classes every split shares: ``train``, else the one unsplit set."""
        return self.splits["train" if "train" in self.splits else None]


def _locate(folder: Path) -> tuple[str, dict] | None:
    for name, module in FORMATS.items():
        if found := module.locate(folder):
            return name, found
    return None


def has_annotations(root: str | Path) -> bool:
    """Whether a folder (or its ``train/`` folder) holds annotations of a format here: a detection dataset."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    train = next((e for e in sorted(root.iterdir()) if e.is_dir() and split_of(e.name) == "train"), None)
    return _locate(train) is not None if train is not None else _locate(root) is not None


def _no_annotations(root: Path) -> CnnkitError:
    return CnnkitError(
        f"no detection annotations found in {root}: expected COCO (annotations.json or instances_*.json beside "
        "an image folder), YOLO (images/ and labels/ with data.yaml or classes.txt) or Pascal VOC (Annotations/ "
        "and JPEGImages/, or an .xml beside each image)"
    )


def parse_dataset(root: str | Path, workers: int | None = None) -> ParsedDataset:
    """Find the format and the splits of an annotated folder and read every annotation file.

    Raises:
        CnnkitError: the folder is missing, holds no annotations this reader knows, mixes
            formats across split folders, or has no training split.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise CnnkitError(f"data folder not found: {root}; give a folder of annotated images")
    split_dirs = {split_of(e.name): e for e in sorted(root.iterdir()) if e.is_dir() and split_of(e.name)}
    located: dict[str | None, tuple] = {}
    found = _locate(split_dirs["train"]) if "train" in split_dirs else None
    if found:
        name = found[0]
        for split, folder in split_dirs.items():
            inside = _locate(folder)
            if inside is None or inside[0] != name or None not in inside[1]:
                what = f"holds {inside[0]} annotations" if inside else "holds no annotations"
                raise CnnkitError(f"{folder} {what}, but {split_dirs['train']} holds {name}; use one format in all")
            located[split] = inside[1][None]
        given = "given folders"
    else:
        found = _locate(root)
        if found is None:
            raise _no_annotations(root)
        name, located = found
        given = "given by the annotation files" if None not in located else ""
    if None not in located and "train" not in located:
        raise CnnkitError(f"{root} names no training split (found {', '.join(map(str, located))}); add one")
    module = FORMATS[name]
    splits = {split: module.read(root, *args, workers=workers) for split, args in located.items()}
    for parsed in splits.values():
        if repeated := sorted({cls for cls in parsed.classes if parsed.classes.count(cls) > 1}):
            raise CnnkitError(
                f"{root / parsed.classes_source} names class(es) {', '.join(repeated)} more than once; "
                "give each class one name"
            )
    return ParsedDataset(root, name, splits, given)


def class_warnings(dataset: ParsedDataset) -> list[str]:
    """One line per split whose classes differ from the training split's."""
    base = dataset.base
    lines = []
    for split, parsed in dataset.splits.items():
        if parsed is base or parsed.classes == base.classes or not parsed.images:
            continue
        extra = [name for name in parsed.classes if name not in base.classes]
        what = f"{split} ({parsed.classes_source})"
        if extra:
            lines.append(
                f"class-name mismatch: {what} has class(es) {', '.join(extra)} that the training split "
                f"({base.classes_source}) lacks; their boxes are skipped"
            )
        elif set(parsed.classes) == set(base.classes):
            lines.append(f"{what} lists the classes in another order than {base.classes_source}; matched by name")
    return lines


def shared_images(dataset: ParsedDataset) -> list[str]:
    """One line per image file that two splits list (COCO files or ImageSets lists that overlap): leakage."""
    seen: dict[str, str] = {}
    lines = []
    for split, parsed in dataset.splits.items():
        for raw in parsed.images:
            if raw.path in seen and seen[raw.path] != split:
                lines.append(
                    f"{raw.path} is in both {seen[raw.path]} and {split} (leakage: test scores will be optimistic); "
                    f"list it in one split only"
                )
            seen.setdefault(raw.path, str(split))
    return lines


def _carve(images: list[BoxedImage], fractions: list[float]) -> list[list[BoxedImage]]:
    """Test, val and train parts of ``images`` by the image folders' rule (one stratum: images have many labels)."""
    parts = stratified_split(torch.zeros(len(images), dtype=torch.long), [image.path for image in images], fractions)
    return [[images[i] for i in part] for part in parts]


def load_detection(
    root: str | Path, val_split: float = 0.1, test_split: float = 0.2, workers: int | None = None
) -> DetectionSplits:
    """Read an annotated image folder (COCO, YOLO or VOC, found automatically) as train/val/test splits.

    Boxes come back in one convention: float32 ``[x1, y1, x2, y2]`` in original pixel
    coordinates (see :mod:`cnnkit.data.boxes`). A bad annotation is skipped and listed in
    ``skipped`` with its file and its line, index or object; the rest are kept. Images are
    not decoded here (only their headers are read for the size): the image cache decodes
    them for training.

    Args:
        root: The dataset folder.
        val_split: Share of training images held out for validation when no split is given.
        test_split: Share held out for testing when the data has no test split.
        workers: Threads reading image headers; defaults to the number of cores.

    Returns:
        The splits, the shared classes, skipped annotations and warnings.

    Raises:
        CnnkitError: no annotations found, or no usable training image.

    Example:
        >>> splits = load_detection("shelves")
        >>> splits.train[0].boxes.shape
        (3, 4)
    """
    dataset = parse_dataset(root, workers)
    classes = dataset.base.classes
    index = {name: i for i, name in enumerate(classes)}
    skipped: list[SkippedFile] = []
    warnings = class_warnings(dataset) + shared_images(dataset)
    reviewed: dict[str | None, list[BoxedImage]] = {}
    clipped: list[tuple[float, str]] = []
    for split, parsed in dataset.splits.items():
        skipped += parsed.skipped
        warnings += parsed.warnings
        reviewed[split] = []
        for raw in parsed.images:
            image, dropped, distance = review(raw, index)
            if image is not None:
                reviewed[split].append(image)
            skipped += dropped
            if distance:
                clipped.append((distance, raw.source))
    if clipped:
        worst = max(clipped)
        warnings.append(
            f"{len(clipped)} image(s) have boxes reaching up to {worst[0]:.1f} px past the image (e.g. {worst[1]}); "
            "clipped to the image"
        )
    base = reviewed.pop("train" if "train" in reviewed else None)
    if not base:
        example = f", e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise CnnkitError(
            f"{dataset.root}: no usable training images: {len(skipped)} annotation problem(s){example}; "
            f"`cnnkit check {dataset.root}` lists them all"
        )
    missing = [split for split in ("test", "val") if split not in reviewed]
    fractions = [test_split if "test" in missing else 0.0, val_split if "val" in missing else 0.0]
    test, val, train = _carve(base, fractions)
    carved = ", ".join(f"{split} {fraction:.0%}" for split, fraction in zip(("test", "val"), fractions) if fraction)
    rule = ", ".join(filter(None, [dataset.given, carved and f"{carved} carved by image-path hash"]))
    return DetectionSplits(
        name=str(dataset.root),
        format=dataset.format,
        classes=classes,
        train=train,
        val=reviewed.get("val", val),
        test=reviewed.get("test", test),
        split_rule=rule,
        skipped=skipped,
        warnings=warnings,
    )

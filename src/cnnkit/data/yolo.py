"""YOLO txt annotations: ``images/`` and ``labels/`` with the same relative paths, one ``.txt`` per image.

Each line is ``class cx cy w h``, the class an index into the names of ``data.yaml``
(``names:`` a list or an ``{index: name}`` mapping), ``classes.txt`` or ``obj.names`` (one
name per line), the box its centre and size normalised to [0, 1] by the image's size.
An empty ``.txt`` marks a negative. An image without a ``.txt`` is skipped, not used as a
negative: a missing file more often means an image nobody labelled, and training on it as
background would teach the model to ignore the objects in it.
"""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from cnnkit.data.boxes import YOLO_MAX_VALUE, ParsedSplit, RawAnnotations, SkippedAnnotation, from_yolo, image_sizes
from cnnkit.data.boxes import split_of as name_split
from cnnkit.data.folder import list_images
from cnnkit.errors import CnnkitError, describe_error

NAME_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names")
TEXT = frozenset({".txt"})


def locate(folder: Path) -> dict[str | None, tuple[Path, Path]]:
    """(images folder, labels folder) per split in ``folder`` (``images/train`` + ``labels/train`` are splits)."""
    images, labels = folder / "images", folder / "labels"
    if not (images.is_dir() and labels.is_dir()):
        return {}
    found: dict[str | None, tuple[Path, Path]] = {}
    for entry in sorted(images.iterdir()):
        split = name_split(entry.name) if entry.is_dir() else None
        if split is not None and split not in found:
            found[split] = (entry, labels / entry.name)
    return found or {None: (images, labels)}


def find_names(folder: Path, root: Path) -> tuple[list[str], str]:
    """The class names for labels in ``folder``, from the nearest names file up to ``root``, and that file.

    Raises:
        CnnkitError: no names file, or one that cannot be read.
    """
    for place in [folder, *folder.parents]:
        for name in NAME_FILES:
            if (place / name).is_file():
                return _read_names(place / name), str((place / name).relative_to(root))
        if place == root:
            break
    raise CnnkitError(
        f"no class names for the YOLO labels in {folder}: add data.yaml with `names: [cat, dog]` "
        "or classes.txt with one name per line"
    )


def _read_names(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Windows tools write a byte-order mark
        if path.suffix != ".yaml":
            return [line.strip() for line in text.splitlines() if line.strip()]
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise CnnkitError(f"cannot read class names from {path}: {describe_error(error)}") from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict) and all(isinstance(key, int) for key in names):
        if sorted(names) != list(range(len(names))):
            raise CnnkitError(f"{path}: names keys must be 0 to {len(names) - 1} without gaps")
        return [str(names[key]) for key in sorted(names)]
    if isinstance(names, list):
        return [str(name) for name in names]
    raise CnnkitError(f"{path}: needs `names:` as a list [cat, dog] or a mapping {{0: cat, 1: dog}}")


def _parse_line(line: str, classes: list[str]) -> tuple[str, tuple[float, ...] | None, str]:
    """(problem or "", class and values, kind) for one label line."""
    tokens = line.split()
    if len(tokens) != 5:
        extra = " (polygon labels are not boxes)" if len(tokens) > 5 else ""
        return f"expected 5 values `class cx cy w h`, got {len(tokens)}{extra}", None, "malformed"
    try:
        values = tuple(float(token) for token in tokens)
    except ValueError:
        return f"{line.strip()!r} is not five numbers", None, "malformed"
    if not all(math.isfinite(value) for value in values) or values[0] != int(values[0]) or values[0] < 0:
        return f"{line.strip()!r}: the class must be a whole number >= 0 and every value finite", None, "malformed"
    if int(values[0]) >= len(classes):
        return (
            f"class id {int(values[0])} is not among the {len(classes)} names (0-{len(classes) - 1})",
            None,
            "unknown-class",
        )
    if max(values[1:]) > YOLO_MAX_VALUE:
        problem = (
            f"values {' '.join(tokens[1:])} exceed 1: they look like pixels, but YOLO wants cx cy w h "
            "normalised to [0, 1] by the image's width and height"
        )
        return problem, None, "convention"
    return "", values, ""


def read(root: Path, images_dir: Path, labels_dir: Path, workers: int | None = None) -> ParsedSplit:
    """Read one YOLO split; every line that cannot be used is skipped and named, the rest kept.

    Raises:
        CnnkitError: no class names file up to ``root``, or one that cannot be read.
    """
    classes, names_file = find_names(labels_dir, root)
    files, _, _ = list_images(images_dir, [""])
    image_prefix, label_prefix = images_dir.relative_to(root), labels_dir.relative_to(root)
    by_label = {str(Path(rel).with_suffix(".txt")): str(image_prefix / rel) for rel, _ in files}
    skipped: list[SkippedAnnotation] = []
    labels = [rel for rel, _ in list_images(labels_dir, [""], TEXT)[0]]
    for rel in labels:
        if rel not in by_label and Path(rel).name not in NAME_FILES:
            reason = f"label file for a missing image: no {image_prefix / Path(rel).with_suffix('')}.* image; skipped"
            skipped.append(SkippedAnnotation(str(label_prefix / rel), reason, "missing-image"))
    present = set(labels)
    for rel, image in by_label.items():
        if rel not in present:
            reason = (
                f"no label file {label_prefix / rel}: skipped, not used as a negative "
                "(YOLO marks an image without objects with an empty .txt; add one if it has none)"
            )
            skipped.append(SkippedAnnotation(image, reason, "unannotated"))
    annotated = [(rel, image) for rel, image in by_label.items() if rel in present]
    sizes = image_sizes(root, [image for _, image in annotated], workers)
    images: list[RawAnnotations] = []
    for rel, image in annotated:
        source = str(label_prefix / rel)
        size = sizes[image]
        if isinstance(size, str):
            skipped.append(SkippedAnnotation(image, f"{size}; its labels skipped", "unreadable-image"))
            continue
        try:
            lines = (labels_dir / rel).read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            reason = f"cannot read as text ({describe_error(error)}); its image skipped"
            skipped.append(SkippedAnnotation(source, reason))
            continue
        raw = RawAnnotations(image, size, source)
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            problem, values, kind = _parse_line(line, classes)
            if values is None:
                skipped.append(SkippedAnnotation(source, f"line {number}: {problem}; skipped", kind))
                raw.dropped += 1
                continue
            raw.add(from_yolo(*values[1:], size=size), classes[int(values[0])], f"line {number}")
        images.append(raw)
    return ParsedSplit(images, list(classes), names_file, skipped)

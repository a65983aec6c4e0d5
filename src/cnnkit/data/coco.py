"""COCO JSON annotations: ``annotations.json`` (or ``instances_*.json``) beside an image folder.

A COCO file lists ``images`` (``id``, ``file_name``, ``width``, ``height``), ``annotations``
(``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]`` in pixels, ``iscrowd``) and
``categories`` (``id``, ``name``). An image listed with no annotations is a negative; an
image file the JSON does not list is skipped, since nothing says what it holds.
"""

from __future__ import annotations

import json
import numbers
from pathlib import Path

from cnnkit.data.boxes import ParsedSplit, RawAnnotations, SkippedAnnotation, from_coco, image_sizes, looks_normalised
from cnnkit.data.boxes import split_of as name_split
from cnnkit.data.folder import list_images
from cnnkit.errors import CnnkitError

# Files that hold one split's annotations (Roboflow writes ``_annotations.coco.json`` in each split folder).
SINGLE_FILES = ("annotations.json", "_annotations.coco.json")


def _image_dir(folder: Path, name: str | None) -> Path:
    """The folder ``file_name`` is relative to: ``<name>/``, ``images/<name>/``, ``images/``, else ``folder``."""
    candidates = [folder / name, folder / "images" / name] if name else []
    return next((path for path in [*candidates, folder / "images"] if path.is_dir()), folder)


def locate(folder: Path) -> dict[str | None, tuple[Path, Path]]:
    """(annotation file, image folder) per split found in ``folder`` (key None: one unsplit set); {} when none."""
    places = [folder, folder / "annotations"]
    for place in places:
        for name in SINGLE_FILES:
            if (place / name).is_file():
                return {None: (place / name, _image_dir(folder, None))}
    found: dict[str | None, tuple[Path, Path]] = {}
    files = sorted(path for place in places if place.is_dir() for path in place.glob("instances_*.json"))
    for path in files:
        name = path.stem.removeprefix("instances_")
        split = name_split(name, within=True) if len(files) > 1 else None
        if split is None and len(files) > 1:
            raise CnnkitError(f"{path}: cannot tell which split it holds; name it instances_train/val/test*.json")
        if split in found:
            raise CnnkitError(f"{path} and {found[split][0]} both hold the {split} split; keep one")
        found[split] = (path, _image_dir(folder, name))
    return found


def _number(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _categories(data: dict, source: str, skipped: list[SkippedAnnotation]) -> dict[int, str]:
    names: dict[int, str] = {}
    for i, category in enumerate(data.get("categories") or []):
        if not isinstance(category, dict) or not isinstance(category.get("id"), int) or "name" not in category:
            skipped.append(SkippedAnnotation(source, f"categories[{i}]: needs an integer id and a name; skipped"))
        else:
            names[category["id"]] = str(category["name"])
    return names


def _images(data: dict, source: str, skipped: list[SkippedAnnotation]) -> dict[int, dict]:
    images: dict[int, dict] = {}
    for i, entry in enumerate(data.get("images") or []):
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("id"), int | str)
            or not isinstance(entry.get("file_name"), str)
        ):
            skipped.append(SkippedAnnotation(source, f"images[{i}]: needs an id and a file_name; skipped"))
        else:
            images[entry["id"]] = entry
    return images


def read(root: Path, annotation_file: Path, image_dir: Path, workers: int | None = None) -> ParsedSplit:
    """Read one COCO file; every entry that cannot be used is skipped and named, the rest kept."""
    source = str(annotation_file.relative_to(root))
    try:
        data = json.loads(annotation_file.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        reason = f"malformed COCO JSON ({' '.join(str(error).split())}); no image of this file is used"
        return ParsedSplit([], [], source, [SkippedAnnotation(source, reason)])
    if not isinstance(data, dict) or not all(isinstance(data.get(key), list) for key in ("images", "annotations")):
        # Without an annotations list (COCO's image_info files) every image would pass for a negative.
        reason = "not a COCO instances file: needs an object with images, annotations and categories lists"
        return ParsedSplit([], [], source, [SkippedAnnotation(source, reason)])
    skipped: list[SkippedAnnotation] = []
    categories = _categories(data, source, skipped)
    entries = _images(data, source, skipped)
    prefix = image_dir.relative_to(root)
    paths = {image_id: str(prefix / entry["file_name"]) for image_id, entry in entries.items()}
    sizes = image_sizes(root, [paths[image_id] for image_id in entries if (root / paths[image_id]).is_file()], workers)
    listed: dict[int, RawAnnotations] = {}
    warnings = []
    for image_id, entry in entries.items():
        size = sizes.get(paths[image_id])
        if size is None:
            reason = f"image id {image_id}: file {entry['file_name']} not found in {prefix or '.'}; its boxes skipped"
            skipped.append(SkippedAnnotation(source, reason, "missing-image"))
        elif isinstance(size, str):
            skipped.append(SkippedAnnotation(paths[image_id], f"{size}; its boxes skipped", "unreadable-image"))
        else:
            listed[image_id] = RawAnnotations(paths[image_id], size, source)
            declared = (entry.get("width"), entry.get("height"))
            if all(_number(value) for value in declared) and tuple(declared) != size:
                warnings.append(
                    f"{source}: image id {image_id} declares {declared[0]}x{declared[1]} but {paths[image_id]} is "
                    f"{size[0]}x{size[1]} upright (EXIF orientation?); boxes are read against the file"
                )
    for i, annotation in enumerate(data.get("annotations") or []):
        problem, where, kind = _annotation_problem(annotation, categories, entries, i)
        image_id = annotation.get("image_id") if isinstance(annotation, dict) else None
        image = listed.get(image_id) if isinstance(image_id, int | str) else None
        if not problem and image is None:
            continue  # the image itself was skipped and named above
        if not problem and looks_normalised(annotation["bbox"], image.size):
            kind = "convention"
            problem = (
                f"bbox {annotation['bbox']} looks normalised to [0, 1], but COCO's bbox is "
                "[x, y, w, h] in pixels: multiply by the image's width and height"
            )
        if problem:
            skipped.append(SkippedAnnotation(source, f"{where}: {problem}; skipped", kind))
            if image is not None:
                image.dropped += 1
            continue
        name = categories[annotation["category_id"]]
        image.add(from_coco(*(float(v) for v in annotation["bbox"])), name, where, bool(annotation.get("iscrowd")))
    classes = [categories[key] for key in sorted(categories)]
    files, _, _ = list_images(image_dir, [""])
    known = set(paths.values())
    for rel, _ in files:
        path = str(prefix / rel)
        if path not in known:
            reason = f"not listed in {source}: skipped (list a negative in images with no annotations)"
            skipped.append(SkippedAnnotation(path, reason, "unannotated"))
    return ParsedSplit(list(listed.values()), classes, source, skipped, warnings)


def _annotation_problem(annotation: object, categories: dict, images: dict, index: int) -> tuple[str | None, str, str]:
    """Why one ``annotations`` entry cannot be used (None when it can), how to name it, and the problem's kind."""
    if not isinstance(annotation, dict):
        return "not an object", f"annotations[{index}]", "malformed"
    where = f"annotations[{index}] (id {annotation.get('id')})"
    bbox = annotation.get("bbox")
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(value) for value in bbox):
        return f"bbox must be four numbers [x, y, w, h], got {json.dumps(bbox)[:60]}", where, "malformed"
    category, image = annotation.get("category_id"), annotation.get("image_id")
    if not isinstance(category, int) or category not in categories:
        return f"unknown category_id {category!r} (not in categories)", where, "unknown-class"
    if not isinstance(image, int | str) or image not in images:
        return f"image_id {image!r} is not in images", where, "malformed"
    return None, where, "malformed"

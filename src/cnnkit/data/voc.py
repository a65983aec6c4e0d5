"""Pascal VOC XML annotations: ``Annotations/`` + ``JPEGImages/``, or an XML beside each image.

Each XML holds ``<object>`` elements with a ``<name>``, a ``<difficult>`` flag and a
``<bndbox>`` of 1-based pixel indices (converted by :func:`cnnkit.data.boxes.from_voc`).
An image pairs with the XML of the same name; ``<filename>`` is not used, since tools
often leave it stale after renaming. An XML with no objects marks a negative; an image
without an XML is skipped. ``ImageSets/Main/{train,val,test}.txt`` (``trainval.txt`` when
there is no ``train.txt``) name each split's images when present. The classes are the
object names found, sorted.

XML is parsed by the standard library's expat (2.4.1 and later refuse entity-expansion bombs).
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

from cnnkit.data.boxes import ParsedSplit, RawAnnotations, SkippedAnnotation, from_voc, image_sizes, looks_normalised
from cnnkit.data.folder import list_images

XML = frozenset({".xml"})
SET_FILES = {"train": ("train.txt", "trainval.txt"), "val": ("val.txt",), "test": ("test.txt",)}


def locate(folder: Path) -> dict[str | None, tuple[Path, Path, Path | None]]:
    """(XML folder, image folder, split list or None) per split in ``folder``; {} when it holds no VOC XML."""
    annotations = folder / "Annotations"
    if annotations.is_dir():
        images = next((path for path in (folder / "JPEGImages", folder / "images") if path.is_dir()), folder)
        found: dict[str | None, tuple[Path, Path, Path | None]] = {}
        for split, names in SET_FILES.items():
            lists = [folder / "ImageSets" / "Main" / name for name in names]
            if chosen := next((path for path in lists if path.is_file()), None):
                found[split] = (annotations, images, chosen)
        return found or {None: (annotations, images, None)}
    files, _, _ = list_images(folder, [""], XML)
    return {None: (folder, folder, None)} if files else {}


def _number(element: ElementTree.Element, tag: str) -> float | None:
    try:
        return float((element.findtext(tag) or "").strip())
    except ValueError:
        return None


def _read_xml(path: Path, raw: RawAnnotations, skipped: list[SkippedAnnotation], warnings: list[str]) -> bool:
    """Add the objects of one XML to ``raw``; False when the file cannot be parsed at all."""
    try:
        tree = ElementTree.parse(path)
    except ElementTree.ParseError as error:
        reason = f"malformed XML ({error}); its image skipped"
        skipped.append(SkippedAnnotation(raw.source, reason))
        return False
    except OSError as error:
        skipped.append(SkippedAnnotation(raw.source, f"cannot read: {error.strerror or error}; its image skipped"))
        return False
    node = tree.getroot()
    if node.tag != "annotation":
        skipped.append(SkippedAnnotation(raw.source, f"root element is <{node.tag}>, not <annotation>; image skipped"))
        return False
    size = node.find("size")
    declared = (_number(size, "width"), _number(size, "height")) if size is not None else (None, None)
    if None not in declared and declared != raw.size and declared != (0, 0):
        warnings.append(
            f"{raw.source}: declares {declared[0]:g}x{declared[1]:g} but {raw.path} is {raw.size[0]}x{raw.size[1]} "
            "upright (EXIF orientation?); boxes are read against the file"
        )
    for k, element in enumerate(node.findall("object"), start=1):
        where = f"object {k}"
        name = (element.findtext("name") or "").strip()
        bndbox = element.find("bndbox")
        values = [_number(bndbox, tag) for tag in ("xmin", "ymin", "xmax", "ymax")] if bndbox is not None else []
        if not name or len(values) != 4 or None in values:
            problem = "has no <name>" if not name else "needs a <bndbox> with numeric xmin, ymin, xmax, ymax"
            skipped.append(SkippedAnnotation(raw.source, f"{where} {problem}; skipped"))
            raw.dropped += 1
        elif looks_normalised(values, raw.size):
            reason = (
                f"{where} ({name}): bndbox {values} looks normalised to [0, 1], but VOC's bndbox is in "
                "1-based pixels: multiply by the image's width and height; skipped"
            )
            skipped.append(SkippedAnnotation(raw.source, reason, "convention"))
            raw.dropped += 1
        else:
            raw.add(from_voc(*values), name, where, difficult=(element.findtext("difficult") or "").strip() == "1")
    return True


def _listed(set_file: Path | None) -> set[str] | None:
    if set_file is None:
        return None
    lines = set_file.read_text(encoding="utf-8", errors="replace").splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def read(root: Path, xml_dir: Path, image_dir: Path, set_file: Path | None, workers: int | None = None) -> ParsedSplit:
    """Read one VOC split; every object that cannot be used is skipped and named, the rest kept."""
    listed = _listed(set_file)
    beside = xml_dir == image_dir
    xml_prefix, image_prefix = xml_dir.relative_to(root), image_dir.relative_to(root)
    # Pairs by relative path without suffix: Annotations/a/b.xml goes with JPEGImages/a/b.jpg.
    xmls = {str(Path(rel).with_suffix("")): rel for rel, _ in list_images(xml_dir, [""], XML)[0]}
    files = {str(Path(rel).with_suffix("")): rel for rel, _ in list_images(image_dir, [""])[0]}
    if listed is not None:
        # ImageSets name images by their id (the file stem).
        xmls = {key: rel for key, rel in xmls.items() if Path(key).name in listed}
        files = {key: rel for key, rel in files.items() if Path(key).name in listed}
        source = str(set_file.relative_to(root))
        found = {Path(key).name for key in xmls}
        skipped = [
            SkippedAnnotation(source, f"id {name} has no {xml_prefix / name}.xml; skipped", "unannotated")
            for name in sorted(listed - found)
        ]
    else:
        skipped = []
    where_image = "beside it" if beside else f"in {image_prefix}"
    for key in sorted(set(xmls) - set(files)):
        reason = f"annotation for a missing image: no {Path(key).name}.* {where_image}; skipped"
        skipped.append(SkippedAnnotation(str(xml_prefix / xmls[key]), reason, "missing-image"))
    for key in sorted(set(files) - set(xmls)):
        reason = f"no annotation file {xml_prefix / key}.xml: skipped (an XML without objects marks a negative)"
        skipped.append(SkippedAnnotation(str(image_prefix / files[key]), reason, "unannotated"))
    paired = sorted(set(files) & set(xmls))
    sizes = image_sizes(root, [str(image_prefix / files[key]) for key in paired], workers)
    images, warnings = [], []
    for key in paired:
        path = str(image_prefix / files[key])
        if isinstance(sizes[path], str):
            skipped.append(SkippedAnnotation(path, f"{sizes[path]}; its annotation skipped", "unreadable-image"))
            continue
        raw = RawAnnotations(path, sizes[path], str(xml_prefix / xmls[key]))
        if _read_xml(xml_dir / xmls[key], raw, skipped, warnings):
            images.append(raw)
    classes = sorted({name for image in images for name in image.names})
    return ParsedSplit(images, classes, "the object names", skipped, warnings)

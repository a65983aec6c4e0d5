"""Image folders: one subfolder per class, optionally inside train/, val/ and test/."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnkit.data.cache import cache_root, decode_cached
from cnnkit.data.decode import IMAGE_EXTENSIONS
from cnnkit.data.imageset import DataSplits, ImageSet, SkippedFile, stratified_split
from cnnkit.errors import CnnkitError

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}

# Images from folders of mixed sizes are resized to this side unless img_size is given.
DEFAULT_FOLDER_IMG_SIZE = 64

# Files that only cnnkit writes together: a folder holding them is a run directory (train, export,
# explain, compare, evaluate --report), whose figures must never become training images.
RUN_RECORDS = frozenset({"metrics.csv", "state.safetensors", "results.json", "split.json", "environment.json"})
RUN_FILES = ("export.json", "explain.json")


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def _is_run_dir(folder: Path) -> bool:
    try:
        names = set(os.listdir(folder))
    except OSError:
        return False
    report = "report.html" in names and bool(names & {"results.json", "report.json"})  # compare, evaluate --report
    return report or any(name in names for name in RUN_FILES) or ("config.yaml" in names and bool(names & RUN_RECORDS))


def is_cnnkit_output(folder: Path) -> bool:
    """True for what cnnkit wrote, never data: a run directory, a folder of them with no images (``runs/``), the cache.

    ``cnnkit train --data .`` inside the dataset puts ``runs/`` there; without this its second
    run would read ``runs/`` as a class and the report's figures as training images.
    """
    if folder.resolve() == cache_root().resolve() or _is_run_dir(folder):
        return True
    try:
        entries = list(folder.iterdir())
    except OSError:
        return False
    holds_images = any(entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file() for entry in entries)
    return not holds_images and any(entry.is_dir() and _is_run_dir(entry) for entry in entries)


def ignored_output_warning(rel: str) -> str:
    """The one console line for a folder of cnnkit output left out of the data (``rel`` from the dataset root)."""
    return f"ignored {rel}/: cnnkit output"


def list_classes(root: Path) -> tuple[list[str], list[str]]:
    """Class names (the sorted visible subfolders of ``root``), and the subfolders left out as cnnkit output."""
    folders = sorted(entry.name for entry in root.iterdir() if entry.is_dir() and _visible(entry.name))
    outputs = [name for name in folders if is_cnnkit_output(root / name)]
    return [name for name in folders if name not in outputs], outputs


def list_images(
    root: Path, classes: list[str], extensions: frozenset[str] = IMAGE_EXTENSIONS
) -> tuple[list[tuple[str, int]], int, list[str]]:
    """(relative path, label) for every file with one of ``extensions`` (images by default) under each class
    folder, how many other files were seen, and the folders left out as cnnkit output (relative paths)."""
    files: list[tuple[str, int]] = []
    others = 0
    outputs: list[str] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        for folder, subfolders, names in os.walk(class_dir):
            visible = sorted(d for d in subfolders if _visible(d))
            subfolders[:] = [d for d in visible if not is_cnnkit_output(Path(folder, d))]
            outputs += [os.path.relpath(os.path.join(folder, d), root) for d in visible if d not in subfolders]
            for file_name in sorted(names):
                if not _visible(file_name):
                    continue
                if Path(file_name).suffix.lower() in extensions:
                    files.append((os.path.relpath(os.path.join(folder, file_name), root), label))
                else:
                    others += 1
    return files, others, outputs


def read_images(
    root: Path,
    files: list[tuple[str, int]],
    classes: list[str],
    img_size: int,
    channels: int | None,
    resize: str,
    workers: int,
) -> tuple[ImageSet, list[SkippedFile], list[str]]:
    """Decode files (through the image cache) into an :class:`ImageSet`; unreadable files are skipped and returned.

    With ``channels=None`` the set is grayscale when every image is, otherwise RGB. The
    images keep the order of ``files``, as a view of the memory-mapped cache entry. The
    last item holds Pillow's warnings about files that were read, as ``path: warning``.
    """
    decoded = decode_cached(root, [rel for rel, _ in files], img_size, channels, resize, workers)
    labels = torch.tensor([files[i][1] for i in decoded.kept], dtype=torch.long)
    skipped = [SkippedFile(files[i][0], reason) for i, reason in decoded.failures]
    notes = [f"{files[i][0]}: {note}" for i, note in decoded.notes]
    return ImageSet(decoded.images, labels, classes, [files[i][0] for i in decoded.kept]), skipped, notes


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def no_images_error(folder: Path) -> CnnkitError:
    """The error for a folder without images in class subfolders: what it holds instead, and the layout expected."""
    entries = [entry for entry in folder.iterdir() if _visible(entry.name)] if folder.is_dir() else []
    loose = sum(1 for entry in entries if entry.suffix.lower() in IMAGE_EXTENSIONS and entry.is_file())
    subfolders = sorted(entry.name for entry in entries if entry.is_dir())
    layout = f"expected one subfolder per class holding its images, e.g. {folder / 'cat' / '1.jpg'}"
    if loose:
        where = f"its subfolders ({', '.join(subfolders[:3])}{', ...' if len(subfolders) > 3 else ''}) hold none"
        return CnnkitError(
            f"no images found in class subfolders of {folder}: {loose} image(s) lie directly in it and "
            f"{where if subfolders else 'it has no subfolders'}; {layout}: move each image into its class's folder"
        )
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    others = len(entries) - len(subfolders)
    found = f"{len(subfolders)} subfolder(s), {others} other file(s)" if entries else "it is empty"
    return CnnkitError(f"no images found in {folder} ({found}; image extensions: {extensions}); {layout}")


def has_split_folders(root: Path) -> bool:
    return _split_dir(root, "train") is not None


def read_folder(
    root: Path, img_size: int, channels: int | None, resize: str, workers: int, classes: list[str] | None = None
) -> tuple[ImageSet, list[SkippedFile]]:
    """Read every image of a class-per-subfolder tree (no split) into one :class:`ImageSet`."""
    if not root.is_dir():
        raise CnnkitError(f"data folder not found: {root}; give a folder with one subfolder per class")
    found, _ = list_classes(root)
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise CnnkitError(f"{root} has class folders the model does not know: {', '.join(unknown)}")
    files, _, _ = list_images(root, classes)
    if not files:
        raise no_images_error(root)
    images, skipped, _ = read_images(root, files, classes, img_size, channels, resize, workers)
    return images, skipped


def load_folder(
    root: Path,
    img_size: int | None,
    channels: int | None,
    resize: str,
    val_split: float,
    test_split: float,
    workers: int,
) -> DataSplits:
    """Read an image folder and split it.

    ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` subfolders are used as
    given; a missing val or test split is carved from the training images with a
    deterministic stratified split (see :func:`stratified_split`).
    """
    if not root.exists():
        raise CnnkitError(
            f"data not found: {root}; give a folder with one subfolder per class, or a built-in dataset name"
        )
    if not root.is_dir():
        raise CnnkitError(f"{root} is a file; --data needs a folder with one subfolder per class")
    img_size = img_size or DEFAULT_FOLDER_IMG_SIZE
    train_dir = _split_dir(root, "train") or root
    classes, outputs = list_classes(train_dir)
    files, ignored, nested_outputs = list_images(train_dir, classes)
    prefix = "" if train_dir == root else f"{train_dir.name}/"
    used_labels = {label for _, label in files}
    empty = [name for label, name in enumerate(classes) if label not in used_labels]
    classes = [name for name in classes if name not in empty]
    warnings = [ignored_output_warning(prefix + name) for name in outputs + nested_outputs]
    warnings += [f"empty class folder left out: {train_dir / name}" for name in empty]
    if ignored:
        warnings.append(f"{ignored} file(s) without an image extension ignored under {train_dir}")
    if not files:
        raise no_images_error(train_dir)
    if len(classes) < 2:
        raise CnnkitError(
            f"{train_dir} has only one class ({classes[0]}); a classifier needs at least two class subfolders"
        )
    relabel = {old: new for new, old in enumerate(sorted(used_labels))}  # labels index the non-empty classes
    # The split is drawn from the file list, before decoding, so the cache can store each
    # split as one contiguous block (no copies, even for data larger than memory) and a
    # file that fails to decode moves no other file between splits.
    labels = torch.tensor([relabel[label] for _, label in files], dtype=torch.long)
    sources = [prefix + rel for rel, _ in files]
    missing = [split for split in ("test", "val") if train_dir == root or _split_dir(root, split) is None]
    fractions = [test_split if "test" in missing else 0.0, val_split if "val" in missing else 0.0]
    parts = stratified_split(labels, sources, fractions)  # test, val, train
    ordered = [(files[i][0], int(labels[i])) for part in parts for i in part]
    everything, failed, notes = read_images(train_dir, ordered, classes, img_size, channels, resize, workers)
    if notes:
        warnings.append(
            f"Pillow warned {len(notes)} time(s) while decoding (images used as decoded), e.g. {prefix}{notes[0]}"
        )
    channels = everything.images.shape[1]
    skipped = [SkippedFile(prefix + item.path, item.reason) for item in failed]
    everything.sources = [prefix + source for source in everything.sources]
    failed_paths = {item.path for item in failed}
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + sum(1 for i in part if files[i][0] not in failed_paths))
    carved = {name: everything.slice(bounds[k], bounds[k + 1]) for k, name in enumerate(("test", "val", "train"))}

    given: dict[str, ImageSet] = {}
    for split in ("val", "test"):
        split_dir = _split_dir(root, split) if train_dir != root else None
        if split_dir is None:
            continue
        images, split_skipped = read_folder(split_dir, img_size, channels, resize, workers, classes)
        skipped += [SkippedFile(f"{split_dir.name}/{s.path}", s.reason) for s in split_skipped]
        images.sources = [f"{split_dir.name}/{source}" for source in images.sources]
        given[split] = images

    rule = (
        "given folders"
        if not fractions[0] and not fractions[1]
        else (
            f"stratified by file-name hash: test {fractions[0]:.0%}, val {fractions[1]:.0%} of {prefix or 'the folder'}"
        )
    )
    return DataSplits(
        name=str(root),
        train=carved["train"],
        val=given.get("val", carved["val"]),
        test=given.get("test", carved["test"]),
        split_rule=rule,
        skipped=skipped,
        warnings=warnings,
    )

"""Image folders: one subfolder per class, optionally inside train/, val/ and test/."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.decode import IMAGE_EXTENSIONS, ImageDecodeError, load_image, resize_image, to_array
from cnnkit.data.imageset import DataSplits, ImageSet, SkippedFile, stratified_split
from cnnkit.errors import CnnkitError

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}

# Images from folders of mixed sizes are resized to this side unless img_size is given.
DEFAULT_FOLDER_IMG_SIZE = 64


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def list_classes(root: Path) -> list[str]:
    """Class names: the sorted visible subfolders of ``root``."""
    return sorted(entry.name for entry in root.iterdir() if entry.is_dir() and _visible(entry.name))


def list_images(root: Path, classes: list[str]) -> tuple[list[tuple[str, int]], int]:
    """Return (relative path, label) for every image under each class folder, and how many other files were seen."""
    files: list[tuple[str, int]] = []
    others = 0
    for label, name in enumerate(classes):
        class_dir = root / name
        if not class_dir.is_dir():
            continue
        for folder, subfolders, names in os.walk(class_dir):
            subfolders[:] = sorted(d for d in subfolders if _visible(d))
            for file_name in sorted(names):
                if not _visible(file_name):
                    continue
                if Path(file_name).suffix.lower() in IMAGE_EXTENSIONS:
                    files.append((os.path.relpath(os.path.join(folder, file_name), root), label))
                else:
                    others += 1
    return files, others


def _decode_file(path: Path, img_size: int, resize: str) -> tuple[np.ndarray, bool]:
    image = load_image(path)
    return to_array(resize_image(image, img_size, resize), 3), image.mode == "L"


def read_images(
    root: Path,
    files: list[tuple[str, int]],
    classes: list[str],
    img_size: int,
    channels: int | None,
    resize: str,
    workers: int,
) -> tuple[ImageSet, list[SkippedFile]]:
    """Decode files in parallel into an :class:`ImageSet`; unreadable files are skipped and returned.

    With ``channels=None`` the set is grayscale when every image is, otherwise RGB.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = [pool.submit(_decode_file, root / rel, img_size, resize) for rel, _ in files]
    arrays, labels, sources, grays, skipped = [], [], [], [], []
    for (rel, label), future in zip(files, futures):
        try:
            array, is_gray = future.result()
        except ImageDecodeError as error:
            skipped.append(SkippedFile(rel, str(error).replace(str(root / rel), "file")))
            continue
        arrays.append(array)
        labels.append(label)
        sources.append(rel)
        grays.append(is_gray)
    if channels is None:
        channels = 1 if grays and all(grays) else 3
    stacked = np.stack(arrays) if arrays else np.zeros((0, 3, img_size, img_size), np.uint8)
    images = torch.from_numpy(stacked[:, :1].copy() if channels == 1 else stacked)
    return ImageSet(images, torch.tensor(labels, dtype=torch.long), classes, sources), skipped


def _split_dir(root: Path, split: str) -> Path | None:
    for name in SPLIT_FOLDERS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def _no_images(folder: Path) -> CnnkitError:
    extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
    return CnnkitError(f"no images found in {folder}; expected one subfolder per class holding images ({extensions})")


def has_split_folders(root: Path) -> bool:
    return _split_dir(root, "train") is not None


def read_folder(
    root: Path, img_size: int, channels: int | None, resize: str, workers: int, classes: list[str] | None = None
) -> tuple[ImageSet, list[SkippedFile]]:
    """Read every image of a class-per-subfolder tree (no split) into one :class:`ImageSet`."""
    if not root.is_dir():
        raise CnnkitError(f"data folder not found: {root}; give a folder with one subfolder per class")
    found = list_classes(root)
    classes = classes if classes is not None else found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise CnnkitError(f"{root} has class folders the model does not know: {', '.join(unknown)}")
    files, _ = list_images(root, classes)
    if not files:
        raise _no_images(root)
    return read_images(root, files, classes, img_size, channels, resize, workers)


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
    classes = list_classes(train_dir)
    files, ignored = list_images(train_dir, classes)
    used_labels = {label for _, label in files}
    empty = [name for label, name in enumerate(classes) if label not in used_labels]
    classes = [name for name in classes if name not in empty]
    warnings = [f"empty class folder left out: {train_dir / name}" for name in empty]
    if ignored:
        warnings.append(f"{ignored} file(s) without an image extension ignored under {train_dir}")
    if not files:
        raise _no_images(train_dir)
    if len(classes) < 2:
        raise CnnkitError(
            f"{train_dir} has only one class ({classes[0]}); a classifier needs at least two class subfolders"
        )
    relabel = {old: new for new, old in enumerate(sorted(used_labels))}  # labels index the non-empty classes
    files = [(rel, relabel[label]) for rel, label in files]
    train, skipped = read_images(train_dir, files, classes, img_size, channels, resize, workers)
    channels = train.images.shape[1]
    prefix = "" if train_dir == root else f"{train_dir.name}/"
    for item in skipped:
        item.path = prefix + item.path

    given: dict[str, ImageSet] = {}
    for split in ("val", "test"):
        split_dir = _split_dir(root, split) if train_dir != root else None
        if split_dir is None:
            continue
        images, split_skipped = read_folder(split_dir, img_size, channels, resize, workers, classes)
        skipped += [SkippedFile(f"{split_dir.name}/{s.path}", s.reason) for s in split_skipped]
        images.sources = [f"{split_dir.name}/{source}" for source in images.sources]
        given[split] = images
    train.sources = [prefix + source for source in train.sources]

    fractions = [test_split if "test" not in given else 0.0, val_split if "val" not in given else 0.0]
    test_idx, val_idx, train_idx = stratified_split(train.labels, train.sources, fractions)
    rule = (
        "given folders"
        if not fractions[0] and not fractions[1]
        else (
            f"stratified by file-name hash: test {fractions[0]:.0%}, val {fractions[1]:.0%} of {prefix or 'the folder'}"
        )
    )
    return DataSplits(
        name=str(root),
        train=train.subset(train_idx),
        val=given["val"] if "val" in given else train.subset(val_idx),
        test=given["test"] if "test" in given else train.subset(test_idx),
        split_rule=rule,
        skipped=skipped,
        warnings=warnings,
    )

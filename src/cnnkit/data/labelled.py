"""The labelled images a trained model is evaluated on, with its class indices."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from cnnkit.data import BUILTINS, load_data
from cnnkit.data.folder import has_split_folders, read_folder
from cnnkit.data.imageset import ImageSet, SkippedFile
from cnnkit.errors import CnnkitError


def labelled_images(
    data: str | None, split: str, classes: list[str] | None, size: tuple[int, int, str], config: dict
) -> tuple[ImageSet, list[SkippedFile]]:
    """The labelled images a trained model is evaluated on, and any skipped files.

    The images are relabelled to the model's ``classes`` (None keeps the data's own, as
    retrieval needs) and decoded at its ``size``
    (img_size, channels, resize rule). ``data`` defaults to the data named in the model's
    training ``config``; the rules are those of ``Classifier.evaluate``.
    """
    if split not in ("train", "val", "test"):
        raise CnnkitError(f"unknown split {split!r}; use train, val or test")
    img_size, channels, resize = size
    trained_on = config.get("data")
    data = data or trained_on
    if data is None:
        raise CnnkitError("this checkpoint does not record its training data; pass --data")
    if takes_split(data, config):
        splits = load_data(
            data,
            img_size,
            channels,
            resize,
            config.get("val_split", 0.1),
            config.get("test_split", 0.2),
            config.get("data_dir") if data == trained_on else None,
        )
        return relabel(getattr(splits, split), classes, data), splits.skipped
    return read_folder(
        Path(data).expanduser(),
        img_size,
        channels,
        resize,
        workers=os.cpu_count() or 1,
        classes=classes,
    )


def takes_split(data: str | None, config: dict) -> bool:
    """Whether :func:`labelled_images` takes a split of ``data`` (default: the training data in ``config``).

    Built-in datasets, folders with train/val/test subfolders and the model's own training
    folder (split as in training) are split; any other folder is evaluated whole.
    """
    trained_on = config.get("data")
    data = data or trained_on
    if data is None:
        return False
    if data in BUILTINS:
        return True
    same_folder = (
        trained_on is not None
        and trained_on not in BUILTINS
        and Path(data).expanduser().resolve() == Path(trained_on).expanduser().resolve()
    )
    return same_folder or has_split_folders(Path(data).expanduser())


def relabel(images: ImageSet, classes: list[str] | None, data: str) -> ImageSet:
    """Map the dataset's class indices onto the model's ``classes``, by name; None keeps them."""
    if classes is None or images.classes == classes:
        return images
    unknown = sorted(set(images.classes) - set(classes))
    if unknown:
        raise CnnkitError(f"{data} has classes the model does not know: {', '.join(unknown)}")
    mapping = torch.tensor([classes.index(name) for name in images.classes])
    return ImageSet(images.images, mapping[images.labels], classes, images.sources)

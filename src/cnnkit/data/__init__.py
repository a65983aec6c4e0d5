"""Where tensors are born: image folders and built-in datasets, decoded one way.

Decoding needs no PyTorch; the dataset names below are
imported on first use, so ``cnnkit predict model.onnx`` runs with ONNX Runtime alone.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnkit.data.decode import MAX_IMG_SIZE, decode_image, load_image
from cnnkit.errors import CnnkitError

if TYPE_CHECKING:
    from cnnkit.data.builtin import BUILTINS
    from cnnkit.data.imageset import DataSplits, ImageSet, SkippedFile
    from cnnkit.data.series import SeriesSplits

_LAZY = {
    "BUILTINS": "cnnkit.data.builtin",
    "DataSplits": "cnnkit.data.imageset",
    "ImageSet": "cnnkit.data.imageset",
    "SkippedFile": "cnnkit.data.imageset",
}

__all__ = [
    "BUILTINS",
    "DataSplits",
    "ImageSet",
    "SkippedFile",
    "decode_image",
    "load_data",
    "load_image",
]


def load_data(
    data: str,
    img_size: int | None = None,
    channels: int | None = None,
    resize: str = "crop",
    val_split: float = 0.1,
    test_split: float = 0.2,
    data_dir: str | None = None,
    workers: int | None = None,
    series_normalize: bool = False,
) -> DataSplits | SeriesSplits:
    """Load a built-in dataset by name, an image folder or a time-series set by path, as train/val/test splits.

    Args:
        data: ``digits``, ``mnist``, ``fashion-mnist``, ``cifar10``, a folder with one
            subfolder per class (optionally inside ``train/``, ``val/``, ``test/``), or time
            series (:func:`cnnkit.data.series.is_series`: a UCR or ``.ts`` TRAIN/TEST pair, CSV, ``X.npy``).
        img_size: Side of the square images; defaults to the dataset's own size (64 for folders).
        channels: 1 or 3; defaults to the dataset's own (folders: 1 when every image is grayscale).
        resize: ``crop``, ``squash`` or ``pad``. Defaults to ``crop``.
        val_split: Share of training images held out for validation when no split is given.
        test_split: Share held out for testing when the data has no test split.
        data_dir: Folder holding a built-in dataset's files.
        workers: Decoding threads; defaults to the number of cores.
        series_normalize: Z-normalise each time series over its own length. Defaults to False.

    Example:
        >>> splits = load_data("digits")
        >>> splits.train.images.shape[1:]
        torch.Size([1, 8, 8])
    """
    from cnnkit.data.builtin import BUILTINS, load_builtin
    from cnnkit.data.folder import load_folder
    from cnnkit.data.series import is_series, load_series

    if img_size is not None and not 1 <= img_size <= MAX_IMG_SIZE:
        # Refused before anything is decoded: 100000 would ask for terabytes of memory and cache.
        raise CnnkitError(f"--img-size {img_size} is out of range; use 1 to {MAX_IMG_SIZE} pixels (32 to 224 is usual)")
    if data in BUILTINS:
        return load_builtin(data, data_dir, img_size, channels, resize, val_split, test_split)
    if is_series(data):
        return load_series(data, val_split, test_split, series_normalize)
    try:
        return load_folder(
            Path(data).expanduser(), img_size, channels, resize, val_split, test_split, workers or os.cpu_count() or 1
        )
    except CnnkitError as error:
        from cnnkit.data.annotations import has_annotations  # only a folder that failed to load is looked at again

        if has_annotations(data):  # COCO's or YOLO's image folder read as one class: the user meant detection
            raise CnnkitError(
                f"{data} holds box annotations, not class folders: train a detector with --task detect"
            ) from error
        raise


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'cnnkit.data' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)

"""Built-in datasets: bundled digits, and MNIST, Fashion-MNIST and CIFAR-10 from local files or a download.

A built-in dataset is looked for, in order, in ``data_dir`` (when given), in
``$CNNKIT_DATA_DIR/<name>``, in system locations (Debian's ``dataset-fashion-mnist``
package installs to ``/usr/share/datasets/fashion-mnist``) and in the download cache
(``$XDG_CACHE_HOME/cnnkit/datasets/<name>``); only then is it downloaded into the cache.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit.data.cache import cache_root, format_size
from cnnkit.data.decode import resize_image, to_array
from cnnkit.data.imageset import DataSplits, ImageSet, stratified_split
from cnnkit.errors import CnnkitError

FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]  # split -> (uint8 images (N, C, H, W), int64 labels (N,))


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset cnnkit knows by name: its files, where to get them and how to read them."""

    name: str
    img_size: int
    channels: int
    classes: list[str]
    files: tuple[str, ...]
    mirrors: tuple[str, ...]
    reader: Callable[[Path], Arrays]
    system_dirs: tuple[str, ...] = ()


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as stream:
            data = stream.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("not an unsigned-byte IDX file")
        return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)
    except (OSError, ValueError, struct.error, EOFError) as error:
        raise CnnkitError(f"{path} is not a valid IDX file ({error}); delete it so it can be fetched again") from None


def _find(folder: Path, name: str) -> Path:
    """Accept the gzipped file or its unpacked twin."""
    unpacked = folder / name.removesuffix(".gz")
    return unpacked if unpacked.exists() and not (folder / name).exists() else folder / name


def read_idx_dataset(folder: Path) -> Arrays:
    arrays = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images, labels = _read_idx(_find(folder, images_name)), _read_idx(_find(folder, labels_name))
        if images.ndim != 3 or labels.shape != images.shape[:1]:
            raise CnnkitError(f"{folder}: {images_name} and {labels_name} do not match; delete them to fetch again")
        arrays[split] = (images[:, None], labels.astype(np.int64))
    return arrays


def read_cifar10(folder: Path) -> Arrays:
    record = 1 + 3 * 32 * 32
    batches: dict[str, list[bytes]] = {"train": [], "test": []}
    try:
        with tarfile.open(folder / CIFAR10_ARCHIVE, "r:gz") as archive:
            for member in sorted(archive.getmembers(), key=lambda m: m.name):
                base = os.path.basename(member.name)
                split = "train" if base.startswith("data_batch_") else "test" if base == "test_batch.bin" else None
                if split and member.isfile():
                    batches[split].append(archive.extractfile(member).read())
    except (OSError, tarfile.TarError) as error:
        raise CnnkitError(f"{folder / CIFAR10_ARCHIVE} is not a readable archive ({error}); delete it") from None
    arrays = {}
    for split, chunks in batches.items():
        raw = np.frombuffer(b"".join(chunks), np.uint8)
        if not chunks or raw.size % record:
            raise CnnkitError(f"{folder / CIFAR10_ARCHIVE} lacks the {split} batches; delete it so it can be fetched")
        rows = raw.reshape(-1, record)
        arrays[split] = (rows[:, 1:].reshape(-1, 3, 32, 32), rows[:, 0].astype(np.int64))
    return arrays


def read_digits(_: Path) -> Arrays:
    """scikit-learn's digits from the CSV it ships: importing ``sklearn.datasets`` costs a second, reading it 15 ms."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    shipped = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if shipped is not None and shipped.is_file():
        table = np.loadtxt(shipped, delimiter=",")  # (1797, 65): 64 pixels in 0..16, then the label
        pixels, labels = table[:, :64].reshape(-1, 8, 8), table[:, 64]
    else:  # a layout this reader does not know: scikit-learn's own loader
        from sklearn.datasets import load_digits

        digits = load_digits()
        pixels, labels = digits.images, digits.target
    images = np.round(pixels * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (1797, 1, 8, 8), 0..16 -> 0..255
    return {"all": (images, labels.astype(np.int64))}


BUILTINS = {
    "digits": BuiltinDataset("digits", 8, 1, [str(d) for d in range(10)], (), (), read_digits),
    "fashion-mnist": BuiltinDataset(
        "fashion-mnist",
        28,
        1,
        FASHION_CLASSES,
        tuple(f for pair in IDX_FILES.values() for f in pair),
        ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        read_idx_dataset,
        ("/usr/share/datasets/fashion-mnist",),
    ),
    "mnist": BuiltinDataset(
        "mnist",
        28,
        1,
        [str(d) for d in range(10)],
        tuple(f for pair in IDX_FILES.values() for f in pair),
        ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
        read_idx_dataset,
        ("/usr/share/datasets/mnist",),
    ),
    "cifar10": BuiltinDataset(
        "cifar10",
        32,
        3,
        CIFAR10_CLASSES,
        (CIFAR10_ARCHIVE,),
        ("https://www.cs.toronto.edu/~kriz/",),
        read_cifar10,
    ),
}


def cache_dir() -> Path:
    """Where downloaded datasets are kept: ``datasets/`` under :func:`cnnkit.data.cache.cache_root`."""
    return cache_root() / "datasets"


def _has_files(folder: Path, files: tuple[str, ...]) -> bool:
    return all(_find(folder, name).is_file() for name in files)


def download(url: str, target: Path) -> None:
    """Download ``url`` to ``target`` through a temporary file, so a broken download leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def locate(dataset: BuiltinDataset, data_dir: str | Path | None) -> Path:
    """Find the dataset's files locally, or download them into the cache."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if not _has_files(folder, dataset.files):
            raise CnnkitError(f"{folder} does not hold the {dataset.name} files ({', '.join(dataset.files)})")
        return folder
    candidates = [Path(os.environ["CNNKIT_DATA_DIR"]) / dataset.name] if os.environ.get("CNNKIT_DATA_DIR") else []
    candidates += [Path(d) for d in dataset.system_dirs] + [cache_dir() / dataset.name]
    for folder in candidates:
        if _has_files(folder, dataset.files):
            return folder
    target_dir = cache_dir() / dataset.name
    for name in dataset.files:
        if _find(target_dir, name).is_file():
            continue
        errors = []
        for mirror in dataset.mirrors:
            try:
                download(mirror + name, target_dir / name)
                break
            except (urllib.error.URLError, OSError, TimeoutError) as error:
                errors.append(f"{mirror + name}: {getattr(error, 'reason', error)}")
        else:
            raise CnnkitError(
                f"{dataset.name} is not on this machine and could not be downloaded ({'; '.join(errors)}); "
                f"put {', '.join(dataset.files)} in {target_dir} or pass --data-dir"
            )
    return target_dir


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: no check
        return None


def _check_memory(name: str, count: int, img_size: int, channels: int) -> None:
    """Refuse sizes whose resized arrays cannot fit in memory (built-ins are held there, not in the image cache)."""
    needed = count * img_size * img_size * channels
    total = _physical_memory()
    if total is not None and 2 * needed > total:  # the resized images, then their stacked copy
        raise CnnkitError(
            f"{name} at --img-size {img_size} needs {format_size(2 * needed)} of memory to resize {count} images to "
            f"{img_size}x{img_size}x{channels}, more than this machine's {format_size(total)}; lower --img-size"
        )


def _resize_all(images: np.ndarray, img_size: int, channels: int, resize: str) -> np.ndarray:
    if images.shape[1] == channels and images.shape[2] == images.shape[3] == img_size:
        return images
    mode = "L" if images.shape[1] == 1 else "RGB"
    return np.stack(
        [
            to_array(
                resize_image(
                    Image.fromarray(img[0] if mode == "L" else img.transpose(1, 2, 0), mode), img_size, resize
                ),
                channels,
            )
            for img in images
        ]
    )


def _image_set(name: str, split: str, images: np.ndarray, labels: np.ndarray, classes: list[str]) -> ImageSet:
    return ImageSet(
        torch.from_numpy(np.require(images, requirements=["C", "W"])),
        torch.from_numpy(labels),
        classes,
        [f"{name}/{split}[{i}]" for i in range(len(labels))],
    )


def load_builtin(
    name: str,
    data_dir: str | Path | None,
    img_size: int | None,
    channels: int | None,
    resize: str,
    val_split: float,
    test_split: float,
) -> DataSplits:
    """Load a built-in dataset as train/val/test splits.

    The official test split is kept where one exists; the validation split is carved
    from the training images (and for digits, which has no official split, both are).
    """
    dataset = BUILTINS[name]
    folder = locate(dataset, data_dir) if dataset.files else Path()
    arrays = dataset.reader(folder)
    img_size, channels = img_size or dataset.img_size, channels or dataset.channels
    _check_memory(name, sum(len(labels) for _, labels in arrays.values()), img_size, channels)
    sets = {
        split: _image_set(name, split, _resize_all(images, img_size, channels, resize), labels, dataset.classes)
        for split, (images, labels) in arrays.items()
    }
    if "all" in sets:
        whole = sets["all"]
        test_idx, val_idx, train_idx = stratified_split(whole.labels, whole.sources, [test_split, val_split])
        train, val, test = whole.subset(train_idx), whole.subset(val_idx), whole.subset(test_idx)
        rule = f"stratified by hash: test {test_split:.0%}, val {val_split:.0%}"
    else:
        val_idx, train_idx = stratified_split(sets["train"].labels, sets["train"].sources, [val_split])
        train, val, test = sets["train"].subset(train_idx), sets["train"].subset(val_idx), sets["test"]
        rule = f"official test split; val {val_split:.0%} of train, stratified by hash"
    return DataSplits(name=name, train=train, val=val, test=test, split_rule=rule)

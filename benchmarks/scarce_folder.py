"""A built-in as an image folder with K training images per class, for the scarce-label ``compare --synthetic`` study.

``OUT/train/<class>/`` holds exactly K images of each class, compare's own seeded draw
(``cnnkit.compare.synthetic.per_class_subset`` of the built-in's training split, ``--seed`` 0);
``OUT/val/`` and ``OUT/test/`` hold the built-in's validation and test splits as
``load_data(name)`` splits them. cnnkit reads ``train/``, ``val/`` and ``test/`` subfolders as
those splits (``data/folder.py::load_folder``, its "given folders" rule), so the generator and
``compare`` both train on exactly those K images per class and measure on the built-in's test
images, and compare's check that the generator saw no test image can run (the run's
``split.json`` names ``train/...`` files only). Class names are made folder names by :func:`folder_name`
(``T-shirt/top`` becomes ``T-shirt-top``), the rule ``benchmarks/gan.py`` writes its folders by too. Pixels are the
built-in's own, as lossless grayscale (or RGB) PNG files. An OUT that exists and is not empty is
refused: nothing is overwritten. ``--val-per-class N`` keeps a seeded draw of N validation images
per class instead: the generator measures its quality figures against ``val/`` every epoch, and
against Fashion-MNIST's 6,000 that made an epoch of 2 steps 3x slower (docs/compare.md).

    python benchmarks/scarce_folder.py --data fashion-mnist --per-class 10 --val-per-class 100 --out fm10
    cnnkit train --task generate --data fm10 --workers 1 --name gan10
    cnnkit compare --synthetic runs/gan10 --data fm10 --train-size 10 --device cpu
    python benchmarks/scarce_folder.py --data digits --per-class 10 --out digits10   # docs/compare.md's digits folders
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from PIL import Image

from cnnkit.compare.synthetic import per_class_subset
from cnnkit.data import load_data
from cnnkit.data.imageset import ImageSet
from cnnkit.errors import CnnkitError

SPLITS = ("train", "val", "test")


def folder_name(label: str) -> str:
    """A class name as a folder name for the benchmarks that write built-ins: ``T-shirt/top`` -> ``T-shirt-top``."""
    return re.sub(r"[^\w.-]+", "-", label)


def write_split(images: ImageSet, folder: Path) -> dict[str, int]:
    """Every image of ``images`` as ``folder/<class>/<index>.png``; the number written per class folder."""
    names = [folder_name(label) for label in images.classes]
    if len(set(names)) < len(names):
        raise CnnkitError(f"two classes of {images.classes} share a folder name; rename them")
    counts = dict.fromkeys(names, 0)
    for index in range(len(images)):
        name = names[int(images.labels[index])]
        (folder / name).mkdir(parents=True, exist_ok=True)
        pixels = images.images[index].numpy()  # (C, H, W) uint8
        image = Image.fromarray(pixels[0]) if len(pixels) == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        image.save(folder / name / f"{index:05d}.png")
        counts[name] += 1
    return counts


def write_scarce_folder(
    data: str, per_class: int, out: Path, seed: int = 0, val_per_class: int | None = None
) -> dict[str, dict[str, int]]:
    """Write ``data``'s K-per-class training draw and its own val and test splits under ``out``.

    Args:
        data: A built-in dataset name (``digits``, ``fashion-mnist``, ...).
        per_class: K, the training images kept per class.
        out: The folder to make; refused if it exists and holds anything.
        seed: The draw's seed, as ``compare --synthetic``'s first seed. Defaults to 0.
        val_per_class: Keep only this many validation images per class (a seeded draw, ``seed``), where
            the generator's per-epoch quality figures against the whole split cost too much. Defaults to all.

    Returns:
        Per split, the images written per class folder.

    Raises:
        CnnkitError: ``out`` is not empty, K < 1 or larger than the smallest class.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CnnkitError(f"--out {out} exists and is not empty; give a new folder (nothing is overwritten)")
    if per_class < 1 or (val_per_class is not None and val_per_class < 1):
        raise CnnkitError("--per-class and --val-per-class take 1 or more images per class")
    splits = load_data(data)  # the built-in's own splits, at its own size
    for split, wanted, flag in (("train", per_class, "--per-class"), ("val", val_per_class, "--val-per-class")):
        fewest = int(getattr(splits, split).labels.bincount(minlength=len(splits.classes)).min())
        if wanted is not None and wanted > fewest:
            raise CnnkitError(f"{flag} {wanted} is more than the smallest class of {data}'s {split} split ({fewest})")
    val = splits.val if val_per_class is None else per_class_subset(splits.val, val_per_class, seed)
    chosen = {"train": per_class_subset(splits.train, per_class, seed), "val": val, "test": splits.test}
    return {split: write_split(chosen[split], out / split) for split in SPLITS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion-mnist", help="a built-in: digits, fashion-mnist, ...")
    parser.add_argument("--per-class", type=int, default=10, help="K, training images per class (default 10)")
    parser.add_argument("--out", type=Path, required=True, help="a new folder for train/, val/ and test/")
    parser.add_argument("--val-per-class", type=int, help="keep this many validation images per class (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="the draw's seed (default 0, compare's first seed)")
    args = parser.parse_args()
    try:
        written = write_scarce_folder(args.data, args.per_class, args.out, args.seed, args.val_per_class)
    except CnnkitError as error:
        raise SystemExit(f"error: {error}") from None
    for split, counts in written.items():
        fewest, most = min(counts.values()), max(counts.values())
        print(f"{args.out / split}: {sum(counts.values())} images, {fewest}-{most} a class")


if __name__ == "__main__":
    main()

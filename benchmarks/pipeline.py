"""Input pipeline: images/s delivered (decode + augment + batch, no model) on a folder of JPEGs.

The competitor is what the official tutorials teach: torchvision ``ImageFolder`` +
``DataLoader`` (``num_workers`` = cores) with per-sample transforms. cnnkit builds its
decoded-image cache on first use, then serves batches from the memory map and augments
whole batches. Both deliver normalised float batches of the same size with the same
augmentation (padded random crop, horizontal flip) at the same resolution.

The folder is generated once (``--images`` JPEGs of mixed sizes made from real
Fashion-MNIST pictures, tinted and scaled up) unless ``--folder`` points at one.

    python benchmarks/pipeline.py --images 20000 --img-size 64 --epochs 2
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit.data import load_data
from cnnkit.data.augment import Augmentation
from cnnkit.data.builtin import BUILTINS, locate, read_idx_dataset
from cnnkit.data.loader import iterate_batches


def make_jpeg_folder(root: Path, count: int, seed: int = 0) -> Path:
    """``count`` JPEGs in ten class folders, sides drawn from 96 to 320 pixels, as photos would be."""
    if root.is_dir() and sum(1 for _ in root.rglob("*.jpg")) >= count:
        return root
    images, labels = read_idx_dataset(locate(BUILTINS["fashion-mnist"], None))["train"]
    rng = np.random.default_rng(seed)
    for index in range(count):
        label = int(labels[index % len(labels)])
        width, height = (int(v) for v in rng.integers(96, 321, 2))
        tint = rng.uniform(0.5, 1.0, 3)
        gray = np.asarray(Image.fromarray(images[index % len(images), 0]).resize((width, height)), np.float32)
        rgb = np.clip(gray[..., None] * tint + rng.normal(0, 4, (height, width, 3)), 0, 255).astype(np.uint8)
        folder = root / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{index:06d}.jpg", quality=90)
    return root


def torchvision_epochs(folder: Path, img_size: int, batch_size: int, epochs: int, workers: int) -> list[float]:
    """Images/s of each epoch through ImageFolder + DataLoader with per-sample transforms."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize(img_size),
            transforms.CenterCrop(img_size),
            transforms.RandomCrop(img_size, padding=img_size // 16, padding_mode="edge"),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        ]
    )
    dataset = datasets.ImageFolder(str(folder), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, persistent_workers=True
    )
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for images, _ in loader:
            seen += len(images)
        rates.append(seen / (time.perf_counter() - start))
    return rates


def cnnkit_epochs(folder: Path, img_size: int, batch_size: int, epochs: int, workers: int) -> tuple[list[float], float]:
    """Images/s of each epoch through cnnkit, and the seconds a later run takes to open the built cache.

    The first epoch includes building the decoded-image cache (listing, decoding, resizing).
    """
    augment = Augmentation(crop_padding=img_size // 16, hflip=True)
    generator = torch.Generator().manual_seed(0)
    mean = torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1) * 255
    inv_std = 1 / (torch.tensor([0.25, 0.25, 0.25]).view(1, 3, 1, 1) * 255)
    rates = []
    start = time.perf_counter()
    splits = load_data(str(folder), img_size=img_size, channels=3, val_split=0.0, test_split=0.0, workers=workers)
    for _ in range(epochs):
        seen = 0
        for images, _ in iterate_batches(splits.train, batch_size, shuffle=True, generator=generator):
            batch = (augment(images, generator) - mean) * inv_std
            seen += len(batch)
        rates.append(seen / (time.perf_counter() - start))
        start = time.perf_counter()
    load_data(str(folder), img_size=img_size, channels=3, val_split=0.0, test_split=0.0, workers=workers)
    return rates, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "cnnkit-bench-jpegs")
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    folder = make_jpeg_folder(args.folder, args.images)
    count = sum(1 for _ in folder.rglob("*.jpg"))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    print(f"{count} JPEGs in {folder}, {args.img_size}px, batch {args.batch_size}, {args.workers} workers")
    with tempfile.TemporaryDirectory() as cache:  # a cold cache: the first epoch pays for building it
        os.environ["CNNKIT_CACHE_DIR"] = cache
        ours, reopen = cnnkit_epochs(folder, args.img_size, args.batch_size, args.epochs, args.workers)
        size = sum(p.stat().st_size for p in Path(cache).rglob("*") if p.is_file())
    theirs = torchvision_epochs(folder, args.img_size, args.batch_size, args.epochs, args.workers)
    print(f"cache on disk: {size / 1e6:.0f} MB; a later run lists the folder and opens it in {reopen:.2f}s")
    print("epoch  torchvision img/s  cnnkit img/s  ratio")
    for epoch, (a, b) in enumerate(zip(theirs, ours), start=1):
        print(f"{epoch:>5}  {a:>17.0f}  {b:>12.0f}  {b / a:>5.1f}x")


if __name__ == "__main__":
    main()

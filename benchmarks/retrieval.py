"""Retrieval quality: Fashion-MNIST Recall@1, seen and held-out classes, and near-duplicates of real photos.

Part 1 (real Fashion-MNIST, offline from Debian's ``dataset-fashion-mnist`` or ``$CNNKIT_DATA_DIR``):
writes ``train/`` and ``test/`` image folders (``--per-class`` and ``--test-per-class`` images per
class), trains with the same model, epochs and seed

- a classification run on all ten classes,
- a classification run on five classes only (the other five are never seen),
- an embedding run (``cnnkit train --task embed``) holding out the same five classes,

and, for each run's features (:func:`cnnkit.deploy.index.load_embedder`: the classifier's input, or the
embedding), prints Recall@1 of each test image against the training images: on all ten classes
(the 10-class run), on the five seen classes and on the five held-out classes. The issue's target:
the embedding run beats the classification run's features on the held-out classes.

Part 2 (scikit-image's real photos; ``pip install scikit-image`` if absent): indexes the photos
with pretrained EfficientNet-Lite0, then searches with crops, flips, rescales and JPEG
re-encodings of each; prints recall@1 of the original per kind of copy.

    python benchmarks/retrieval.py                                     # the full run (minutes per epoch)
    python benchmarks/retrieval.py --per-class 30 --test-per-class 10 --epochs 1   # a check in seconds
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

import cnnkit
from cnnkit.config import TrainConfig
from cnnkit.data.builtin import BUILTINS, locate, read_idx_dataset
from cnnkit.deploy.index import build_index, load_embedder
from cnnkit.deploy.index.builder import class_label
from cnnkit.errors import CnnkitError
from cnnkit.tasks.embed.metrics import nearest

PHOTOS = (
    "astronaut",
    "camera",
    "chelsea",
    "coffee",
    "coins",
    "moon",
    "page",
    "rocket",
    "text",
    "clock",
    "brick",
    "grass",
    "gravel",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "cell",
    "colorwheel",
    "logo",
)


def write_fashion(root: Path, per_class: int, test_per_class: int) -> list[str]:
    """``root/train/<class>/*.png`` and ``root/test/<class>/*.png`` of real Fashion-MNIST; returns the class names."""
    dataset = BUILTINS["fashion-mnist"]
    classes = [name.replace("/", "-") for name in dataset.classes]  # "T-shirt/top" is no folder name
    for split, (images, labels) in read_idx_dataset(locate(dataset, None)).items():
        limit = per_class if split == "train" else test_per_class
        taken = [0] * len(classes)
        for image, label in zip(images, labels):
            if taken[label] >= limit:
                continue
            taken[label] += 1
            folder = root / split / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0]).save(folder / f"{taken[label]:05d}.png")
    return classes


def recall_at_1(model: Path, root: Path, classes: list[str]) -> float:
    """Share of the test images of ``classes`` whose nearest training image (of those classes) has their class."""
    embedder = load_embedder(model)
    vectors = {}
    for split in ("train", "test"):
        files = sorted(str(p.relative_to(root / split)) for c in classes for p in (root / split / c).glob("*.png"))
        found, paths, _ = embedder.embed_folder(root / split, files)
        vectors[split] = (torch.from_numpy(found), [class_label(path) for path in paths])
    _, rows = nearest(vectors["test"][0], vectors["train"][0], k=1)
    gallery_labels, query_labels = vectors["train"][1], vectors["test"][1]
    return float(np.mean([gallery_labels[row] == label for row, label in zip(rows[:, 0].tolist(), query_labels)]))


def fashion_rows(args: argparse.Namespace, tmp: Path) -> None:
    data = tmp / "fashion"
    classes = write_fashion(data, args.per_class, args.test_per_class)
    seen, held_out = classes[:5], classes[5:]
    five = tmp / "fashion5"
    for split in ("train", "test"):
        for name in seen:
            (five / split).mkdir(parents=True, exist_ok=True)
            shutil.copytree(data / split / name, five / split / name)
    common = dict(model=args.model, epochs=args.epochs, img_size=28, channels=1, seed=args.seed, verbose=False)
    common.update(out=str(tmp / "runs"), batch_size=args.batch_size)
    print(
        f"Fashion-MNIST, {args.per_class} train / {args.test_per_class} test images per class, {args.model}, "
        f"{args.epochs} epochs; held out of the 5-class runs: {', '.join(held_out)}",
        flush=True,
    )
    print(f"{'features of':<34} {'all 10':>8} {'seen 5':>8} {'held-out 5':>11}")
    run = cnnkit.train(data=str(data), name="classify10", **common)
    print(f"{'classification run, 10 classes':<34} {recall_at_1(run.dir, data, classes):>8.3f} {'':>8} {'':>11}")
    run = cnnkit.train(data=str(five), name="classify5", **common)
    print(
        f"{'classification run, 5 classes':<34} {'':>8} {recall_at_1(run.dir, data, seen):>8.3f} "
        f"{recall_at_1(run.dir, data, held_out):>11.3f}",
        flush=True,
    )
    if "task" not in TrainConfig.__dataclass_fields__:
        print("embedding run: skipped (this cnnkit has no `cnnkit train --task embed` yet)")
        return
    run = cnnkit.train(data=str(data), name="embed", task="embed", held_out=",".join(held_out), **common)
    print(
        f"{'embedding run, 5 classes':<34} {'':>8} {recall_at_1(run.dir, data, seen):>8.3f} "
        f"{recall_at_1(run.dir, data, held_out):>11.3f}",
        flush=True,
    )


def copies(image: Image.Image) -> dict[str, Image.Image]:
    """Near-duplicates a dataset collects: crops, a mirror image, a slight turn, rescales, heavy JPEG re-encodings."""
    width, height = image.size

    def jpeg(source: Image.Image, quality: int) -> Image.Image:
        buffer = io.BytesIO()
        source.convert("RGB").save(buffer, format="JPEG", quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")

    return {
        "crop 90% centre": image.crop((width // 20, height // 20, width - width // 20, height - height // 20)),
        "crop 80% corner": image.crop((0, 0, int(width * 0.8), int(height * 0.8))),
        "crop 60% corner": image.crop((0, 0, int(width * 0.6), int(height * 0.6))),
        "rotate 10 degrees": image.rotate(10, resample=Image.Resampling.BILINEAR),
        "flip": ImageOps.mirror(image),
        "half size": image.resize((width // 2, height // 2), Image.Resampling.BILINEAR),
        "JPEG q=30": jpeg(image, 30),
        "JPEG q=10": jpeg(image, 10),
        "half size + JPEG q=30": jpeg(image.resize((width // 2, height // 2)), 30),
    }


def duplicate_rows(args: argparse.Namespace, tmp: Path) -> None:
    try:
        import skimage.data
    except ImportError:
        print("near-duplicates: skipped (pip install scikit-image for its real photos)")
        return
    photos = tmp / "photos"
    photos.mkdir()
    for name in PHOTOS:
        try:
            pixels = getattr(skimage.data, name)()
        except Exception as error:  # a photo skimage must download, offline: leave it out, say so
            print(f"near-duplicates: {name} left out ({type(error).__name__})")
            continue
        Image.fromarray(np.asarray(pixels)).save(photos / f"{name}.png")
    index = build_index(args.pretrained_model, photos, out=tmp / "indexes", pretrained=True)
    embedder = index.embedder()
    hits: dict[str, list[bool]] = {}
    for row in range(len(index)):
        with Image.open(index.file(row)) as image:
            variants = copies(image.convert("RGB"))
        _, rows = index.search(embedder.embed_images(list(variants.values())), k=1)
        for kind, found in zip(variants, rows[:, 0].tolist()):
            hits.setdefault(kind, []).append(found == row)
    print(
        f"near-duplicates: {len(index)} scikit-image photos indexed with pretrained {args.pretrained_model}; "
        "recall@1 of the original for each kind of copy"
    )
    for kind, found in hits.items():
        print(f"  {kind:<24} {np.mean(found):.3f}  ({sum(found)}/{len(found)})")
    everything = [hit for found in hits.values() for hit in found]
    print(f"  {'all copies':<24} {np.mean(everything):.3f}  ({sum(everything)}/{len(everything)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet", help="architecture trained on Fashion-MNIST (default: convnet)")
    parser.add_argument("--per-class", type=int, default=6000, help="training images per class (default: all 6000)")
    parser.add_argument("--test-per-class", type=int, default=1000, help="test images per class (default: all 1000)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrained-model", default="efficientnet_lite0", help="for the near-duplicates")
    parser.add_argument("--parts", default="fashion,duplicates", help="which parts, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for part in args.parts.split(","):
            try:
                {"fashion": fashion_rows, "duplicates": duplicate_rows}[part](args, Path(tmp))
            except CnnkitError as error:
                print(f"{part}: skipped ({error})")


if __name__ == "__main__":
    main()

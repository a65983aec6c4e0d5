"""Fine-tuning vs training from scratch on a few hundred real Fashion-MNIST images (offline).

Writes a small image folder (``--per-class`` training images per class, plus 10 val and
50 test per class) from the Debian ``dataset-fashion-mnist`` files, then trains the same
architecture twice with the same epochs: from random weights, and with ``finetune``
from ImageNet weights. Prints test accuracy and training seconds of each.

    python benchmarks/finetune_fashion.py --per-class 20 --epochs 6 --img-size 64 --batch-size 16
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

import cnnkit
from cnnkit.data.builtin import BUILTINS, locate, read_idx_dataset


def write_folder(root: Path, per_class: int) -> Path:
    arrays = read_idx_dataset(locate(BUILTINS["fashion-mnist"], None))
    classes = [name.replace("/", "-") for name in BUILTINS["fashion-mnist"].classes]  # "T-shirt/top"
    counts = {"train": per_class, "val": 10, "test": 50}
    for split, (images, labels) in arrays.items():
        taken: dict[tuple[str, int], int] = {}
        for image, label in zip(images, labels):
            target = split if split == "test" or taken.get(("train", label), 0) < per_class else "val"
            key = (target, int(label))
            if taken.get(key, 0) >= counts[target]:
                continue
            taken[key] = taken.get(key, 0) + 1
            folder = root / target / classes[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0]).save(folder / f"{split}{taken[key]:04d}.png")
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch-epochs", type=int, help="epochs for the from-scratch run (default: --epochs)")
    parser.add_argument("--runs", default="scratch,finetune", help="which runs, comma-separated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = write_folder(Path(tmp) / "fashion", args.per_class)
        common = dict(data=str(data), model=args.model, epochs=args.epochs, img_size=args.img_size, channels=3)
        common.update(batch_size=args.batch_size)
        common.update(seed=args.seed, out=str(Path(tmp) / "runs"), verbose=False)
        runs = {"scratch": {"epochs": args.scratch_epochs or args.epochs}, "finetune": {"finetune": True}}
        for label in args.runs.split(","):
            run = cnnkit.train(**{**common, **runs[label]})
            train_seconds = sum(row["seconds"] for row in run.history)
            print(
                f"{label:<9} {len(run.history)} epochs  test accuracy {run.test.accuracy:.2%}  "
                f"training {train_seconds:.0f} s",
                flush=True,
            )


if __name__ == "__main__":
    main()

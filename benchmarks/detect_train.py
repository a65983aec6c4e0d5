"""Every registered detector trained by ``cnnkit train --task detect`` on one synthetic set: test mAP and seconds.

The set is YOLO-format: ``--images`` pictures of ``--size`` px with one or two
non-overlapping solid squares of 20-30 px each (red or blue) on a dark background, so
its boxes are exact and its objects are as small as the issue's 20-40 px ones. Each
detector (``list_models(task="detect")``, from scratch) trains for ``--epochs`` epochs at
the input size of the images, once per seed; the result is one JSON line per run with the
test split's mAP@[.5:.95] and mAP@0.5 and the wall time. It decides the default
detector (``boxnet``); run it on an idle machine for times worth quoting:

    python benchmarks/detect_train.py                                   # 48 images, 8 epochs, 2 seeds
    python benchmarks/detect_train.py --models boxnet --epochs 1 --images 16 --seeds 1   # a quick look

Measured on a shared 2-core CPU (times not comparable), 48 images of 64 px, 8 epochs,
batch 8, seeds 0 and 1: boxnet test mAP 0.40 / 0.37 (mAP@0.5 0.86 / 0.91); fcos 0.09 /
0.10 (0.43 / 0.44); ssdlite 0.10 / 0.13 (0.38 / 0.41); retinanet 0.005 / 0.003 (0.03 / 0.01).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (230, 40, 40), "blue": (40, 60, 230)}


def make_squares_folder(root: Path, count: int = 32, size: int = 64, seed: int = 0) -> Path:
    """YOLO images/ + labels/ + data.yaml: 1-2 non-overlapping squares of 20-30 px per image, red or blue."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index in range(count):
        image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 80, 3)))
        draw, lines, placed = ImageDraw.Draw(image), [], []
        for _ in range(1 + index % 2):
            side = int(rng.integers(20, 31))
            for _ in range(50):  # a place apart from the square already drawn
                x, y = (int(v) for v in rng.integers(0, size - side, 2))
                if all(x + side <= a or a + s <= x or y + side <= b or b + s <= y for a, b, s in placed):
                    break
            placed.append((x, y, side))
            label = int(rng.integers(0, 2))
            draw.rectangle([x, y, x + side - 1, y + side - 1], fill=list(COLOURS.values())[label])
            lines.append(f"{label} {(x + side / 2) / size} {(y + side / 2) / size} {side / size} {side / size}")
        image.save(root / "images" / f"img{index:03d}.png")
        (root / "labels" / f"img{index:03d}.txt").write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text(f"names: [{', '.join(COLOURS)}]\n")
    return root


def main() -> None:
    import cnnkit
    from cnnkit.models import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list_models(task="detect"))
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        data = make_squares_folder(Path(folder) / "squares", args.images, args.size)
        for name in args.models:
            for seed in range(args.seeds):
                start = time.perf_counter()
                run = cnnkit.train(
                    task="detect", model=name, data=str(data), img_size=args.size, epochs=args.epochs,
                    batch_size=args.batch_size, val_split=0.2, seed=seed, out=str(Path(folder) / "runs"),
                    verbose=False,
                )  # fmt: skip
                test = run.test.to_dict() if run.test else {}
                result = {"model": name, "seed": seed, "map": test.get("map"), "map50": test.get("map50")}
                print(json.dumps({**result, "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()

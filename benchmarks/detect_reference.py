"""cnnkit's default detector against torchvision's reference detection recipe, at half its wall time, on real photos.

The data is :mod:`detect_composite` (public-domain drawings pasted on real photographs,
exact boxes, six classes, 40% of objects 20-40 px; the test split has drawings and photos
no other split has). Both sides are scored by one function, cnnkit's COCO evaluation
(``cnnkit.tasks.detect.metrics.evaluate_detections``, tested against pycocotools), on
the same annotation files, in original pixels.

- **Reference**: torchvision's ``references/detection/train.py`` recipe, written anew
  here: ``--model`` built with ``weights=None, weights_backbone=None`` (no weights download
  offline, and cnnkit's boxnet starts from scratch too, so neither side has ImageNet), a
  per-sample DataLoader of decoded images with the recipe's default ``hflip`` augmentation,
  SGD (momentum 0.9, weight decay 1e-4) at the recipe's learning rate scaled linearly to
  the batch (0.02 for 16 images; 0.01 for RetinaNet and FCOS), its schedule (linear warm-up
  from 1/1000 over the first epoch, x0.1 at epochs 16 and 22 of 26) mapped onto a wall-clock
  budget of ``--budget`` seconds: the warm-up is the first 1/26 of it, the steps at 16/26
  and 22/26; it stops at the first step that ends past the budget. The recipe's
  aspect-ratio grouping is a no-op here (every image is square).
- **cnnkit**: ``cnnkit train --task detect --data DIR --epochs E`` as a user runs it (a
  subprocess, every default: boxnet, 320 px, batch 64, AdamW one-cycle, ``--augment auto``),
  with a cold image cache. Its time is the whole command's wall time (imports, decoding,
  each epoch's validation), to fit half the reference's budget; cnnkit has no time budget
  flag, so E comes from a one-epoch probe run (``E = (budget/2 - probe overhead) / epoch
  seconds``), or ``--cnnkit-epochs``.

Without ``--final`` only the validation split is read (tune there); ``--final`` also
scores the test split once. Latency: the exported boxnet (``cnnkit export``, ONNX Runtime,
NMS in numpy) against PyTorch eager, and the reference model eager, one validation image at
a time (batch 1) through each ``detect`` path, on ``--threads`` threads.

    python benchmarks/detect_reference.py --final                # 1200 train images, 480 s reference, 240 s cnnkit
    python benchmarks/detect_reference.py --quick                # a run-through: tiny set, 40 s budget
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.models import detection

sys.path.insert(0, str(Path(__file__).parent))
from detect_composite import CLASSES, build_composite

RECIPES = {  # model -> (learning rate for 16 images a step, what the reference README passes)
    "fasterrcnn_mobilenet_v3_large_320_fpn": 0.02,
    "fasterrcnn_mobilenet_v3_large_fpn": 0.02,
    "retinanet_resnet50_fpn": 0.01,
    "fcos_resnet50_fpn": 0.01,
}
EPOCHS, MILESTONES = 26, (16, 22)  # the recipe's schedule, mapped onto the time budget


def read_split(folder: Path) -> tuple[list[Path], list[dict[str, np.ndarray]]]:
    """Image paths and their targets (xyxy pixel boxes, labels 0..K-1) from a split's annotations.json."""
    coco = json.loads((folder / "annotations.json").read_text())
    boxes: dict[int, list] = {image["id"]: [] for image in coco["images"]}
    for annotation in coco["annotations"]:
        x, y, w, h = annotation["bbox"]
        boxes[annotation["image_id"]].append([x, y, x + w, y + h, annotation["category_id"] - 1])
    paths, targets = [], []
    for image in coco["images"]:
        rows = np.asarray(boxes[image["id"]], np.float32).reshape(-1, 5)
        paths.append(folder / "images" / image["file_name"])
        targets.append({"boxes": rows[:, :4], "labels": rows[:, 4].astype(np.int64)})
    return paths, targets


def read_image(path: Path) -> torch.Tensor:
    """An image file as the reference feeds it: float (3, H, W) in [0, 1], RGB."""
    pixels = torch.from_numpy(np.asarray(Image.open(path).convert("RGB")).copy())
    return pixels.permute(2, 0, 1).float() / 255


class FlipDataset(torch.utils.data.Dataset):
    """The reference's per-sample pipeline: decode, to float [0, 1], random horizontal flip of image and boxes."""

    def __init__(self, folder: Path) -> None:
        self.paths, self.targets = read_split(folder)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image = read_image(self.paths[index])
        boxes = torch.from_numpy(self.targets[index]["boxes"]).clone()
        if torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes[:, [0, 2]] = image.shape[-1] - boxes[:, [2, 0]]
        labels = torch.from_numpy(self.targets[index]["labels"]) + 1  # torchvision's class 0 is the background
        return image, {"boxes": boxes, "labels": labels}


def recipe_factor(elapsed: float, budget: float) -> float:
    """The recipe's learning-rate factor at ``elapsed`` seconds of ``budget``: warm-up, then two x0.1 steps."""
    epoch = EPOCHS * elapsed / budget
    if epoch < 1:
        return 1e-3 + (1 - 1e-3) * epoch
    return 0.1 ** sum(epoch >= step for step in MILESTONES)


def train_reference(name: str, root: Path, budget: float, batch_size: int, workers: int, seed: int) -> dict:
    """The reference model trained for ``budget`` seconds of wall time; returns it with its step count."""
    torch.manual_seed(seed)
    model = getattr(detection, name)(weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = RECIPES[name] * batch_size / 16  # the linear scaling rule the recipe's --lr help states
    optimizer = torch.optim.SGD(params, lr=base_lr, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(
        FlipDataset(root / "train"), batch_size=batch_size, shuffle=True, num_workers=workers,
        collate_fn=lambda batch: tuple(zip(*batch)), drop_last=True, persistent_workers=workers > 0,
    )  # fmt: skip
    model.train()
    steps, epochs, started = 0, 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < budget:
        for images, targets in loader:
            elapsed = time.perf_counter() - started
            if elapsed >= budget:
                break
            for group in optimizer.param_groups:
                group["lr"] = base_lr * recipe_factor(elapsed, budget)
            loss = sum(model(list(images), list(targets)).values())
            if not torch.isfinite(loss):
                raise SystemExit(f"reference {name}: loss {loss.item()} at step {steps}; the recipe stops here too")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
        epochs += 1
    return {"model": model.eval(), "seconds": time.perf_counter() - started, "steps": steps, "epochs": epochs}


def detect_reference(model: torch.nn.Module, paths: list[Path], batch_size: int = 8) -> list[dict[str, np.ndarray]]:
    """The reference model's detections per image (labels back to 0..K-1), in the image's pixels."""
    found = []
    with torch.inference_mode():
        for start in range(0, len(paths), batch_size):
            images = [read_image(path) for path in paths[start : start + batch_size]]
            for out in model(images):
                found.append({"boxes": out["boxes"].numpy(), "scores": out["scores"].numpy(),
                              "labels": out["labels"].numpy() - 1})  # fmt: skip
    return found


def view_without_test(root: Path, folder: Path) -> Path:
    """A folder holding only links to ``root``'s train/ and val/: what cnnkit trains on, so it never reads test/."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val"):
        if not (folder / split).exists():
            (folder / split).symlink_to((root / split).resolve())
    return folder


def run_cnnkit(data: Path, epochs: int, seed: int, out: Path, name: str) -> tuple[Path, float]:
    """``cnnkit train --task detect`` with its defaults but ``--epochs``, cold image cache; (run dir, wall seconds)."""
    command = [sys.executable, "-m", "cnnkit", "train", "--task", "detect", "--data", str(data), "--epochs",
               str(epochs), "--test-split", "0", "--seed", str(seed), "--out", str(out), "--name", name]  # fmt: skip
    with tempfile.TemporaryDirectory() as cache:
        started = time.perf_counter()
        subprocess.run(command, check=True, env={**os.environ, "CNNKIT_CACHE_DIR": cache})
        return out / name, time.perf_counter() - started


def fit_epochs(data: Path, budget: float, seed: int, out: Path) -> tuple[int, dict]:
    """Epochs that fill ``budget`` seconds, from a one-epoch probe: its epoch time and the command's fixed overhead."""
    run, wall = run_cnnkit(data, 1, seed, out, "probe")
    epoch = float(next(iter(read_metrics(run)))["seconds"])
    overhead = wall - epoch
    return max(1, int((budget - overhead) // epoch)), {"probe_seconds": wall, "epoch_seconds": epoch}


def read_metrics(run: Path) -> list[dict[str, str]]:
    import csv

    with open(run / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def score(predictions: list[dict], targets: list[dict]) -> dict[str, float]:
    """COCO mAP@[.5:.95], mAP@0.5 and small-object mAP by cnnkit's evaluation (agrees with pycocotools)."""
    from cnnkit.tasks.detect.metrics import evaluate_detections

    metrics = evaluate_detections(predictions, targets, list(CLASSES))
    return {"map": metrics.map, "map50": metrics.map50, "map_small": metrics.to_dict().get("map_small")}


def detect_cnnkit(detector, paths: list[Path]) -> list[dict[str, np.ndarray]]:
    """A cnnkit detector's detections per image (every one it keeps: no threshold above the model's), in pixels."""
    predictions, failures = detector.predict_files(paths, threshold=0.0, max_boxes=100)
    if failures:
        raise SystemExit(f"cnnkit could not read {failures[0]}")
    index = {name: i for i, name in enumerate(CLASSES)}
    return [{"boxes": np.asarray(p.boxes, np.float32).reshape(-1, 4), "scores": np.asarray(p.scores),
             "labels": np.asarray([index[label] for label in p.labels], np.int64)} for p in predictions]  # fmt: skip


def milliseconds(call, inputs: list, warmup: int = 3) -> dict[str, float]:
    """Median and 90th-percentile milliseconds of ``call(x)`` over ``inputs``, after ``warmup`` untimed calls."""
    for x in inputs[:warmup]:
        call(x)
    times = []
    for x in inputs:
        started = time.perf_counter()
        call(x)
        times.append(1000 * (time.perf_counter() - started))
    return {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}


def latency(run: Path, reference: torch.nn.Module, paths: list[Path], threads: int, out: Path) -> dict[str, dict]:
    """Batch-1 latency on real images: boxnet eager, boxnet ONNX (export + ONNX Runtime), the reference eager."""
    from cnnkit.data.decode import decode_image
    from cnnkit.deploy.detect_export import export_detector
    from cnnkit.deploy.load import load_detector

    eager = load_detector(run, device="cpu")
    shutil.rmtree(out / "export", ignore_errors=True)  # an earlier call's (--reuse)
    export_detector(run, out=out, name="export", verbose=False)
    onnx = load_detector(out / "export" / "model.onnx", threads=threads)
    prep = eager.preprocessing
    pixels = [decode_image(path, prep.img_size, prep.channels, prep.resize)[None].copy() for path in paths]
    with torch.inference_mode():
        return {
            "boxnet eager": milliseconds(eager.detect, pixels),
            "boxnet ONNX Runtime": milliseconds(onnx.detect, pixels),
            "reference eager": milliseconds(lambda path: reference([read_image(path)]), paths),
        }


def print_table(rows: list[dict], final: bool) -> None:
    splits = ["val", "test"] if final else ["val"]
    head = ["model", "train s"] + [f"{s} {m}" for s in splits for m in ("mAP", "mAP@0.5", "mAP small")]
    print("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for row in rows:
        cells = [row["name"], f"{row['seconds']:.0f}"]
        cells += [
            f"{row[s][m]:.3f}" if row[s][m] is not None else "-" for s in splits for m in ("map", "map50", "map_small")
        ]
        print("| " + " | ".join(cells) + " |")
    ours, ref = rows
    for s in splits:
        for m in ("map", "map50"):
            ratio = ours[s][m] / ref[s][m] if ref[s][m] else float("inf")
            print(f"{s} {m}: cnnkit / reference = {ratio:.2f}", end="; ")
    print(f"time: cnnkit / reference = {ours['seconds'] / ref['seconds']:.2f} (target: mAP ratio >= 1 at time <= 0.5)")


def train_both(args: argparse.Namespace, root: Path, trained: Path, out: Path) -> tuple:
    """Both trainings, or with ``--reuse`` the ones ``out`` holds from an earlier call with the same settings.

    Reuse is for rerunning the scoring and latency after a change to them; the
    training times reported are the ones measured when the models were trained.
    """
    from safetensors.torch import load_file, save_file

    keys = ("data", "train", "val", "test", "budget", "reference", "batch_size", "workers", "cnnkit_epochs", "seed")
    settings = {key: getattr(args, key) for key in keys}
    record = out / "trained.json"
    if args.reuse and record.is_file() and (saved := json.loads(record.read_text()))["settings"] == settings:
        model = getattr(detection, args.reference)(weights=None, weights_backbone=None, num_classes=len(CLASSES) + 1)
        model.load_state_dict(load_file(out / "reference.safetensors"))
        reference = {**saved["reference"], "model": model.eval()}
        return reference, Path(saved["run"]), saved["seconds"], saved["epochs"], saved["probe"]
    shutil.rmtree(out / "runs", ignore_errors=True)
    reference = train_reference(args.reference, root, args.budget, args.batch_size, args.workers, args.seed)
    print(f"reference {args.reference}: {reference['steps']} steps, {reference['epochs']} epochs, "
          f"{reference['seconds']:.0f}s", flush=True)  # fmt: skip
    save_file(reference["model"].state_dict(), out / "reference.safetensors")
    if args.cnnkit_epochs:
        epochs, probe = args.cnnkit_epochs, {}
    else:
        epochs, probe = fit_epochs(trained, args.budget / 2, args.seed, out / "runs")
    run, seconds = run_cnnkit(trained, epochs, args.seed, out / "runs", "boxnet")
    kept = {key: value for key, value in reference.items() if key != "model"}
    record.write_text(json.dumps({"settings": settings, "reference": kept, "run": str(run), "seconds": seconds,
                                  "epochs": epochs, "probe": probe}))  # fmt: skip
    return reference, run, seconds, epochs, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "cnnkit-detect-composite"))
    parser.add_argument("--train", type=int, default=1200, help="training images (default 1200)")
    parser.add_argument("--val", type=int, default=200, help="validation images (default 200)")
    parser.add_argument("--test", type=int, default=300, help="final test images (default 300)")
    parser.add_argument("--budget", type=float, default=480, help="reference training seconds; cnnkit gets half")
    parser.add_argument("--reference", default="fasterrcnn_mobilenet_v3_large_320_fpn", choices=list(RECIPES))
    parser.add_argument("--batch-size", type=int, default=4, help="reference images a step (default 4)")
    parser.add_argument("--workers", type=int, default=2, help="reference DataLoader processes (default 2)")
    parser.add_argument("--cnnkit-epochs", type=int, help="cnnkit's --epochs (default: fit half the budget)")
    parser.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--final", action="store_true", help="also score the untouched test split (once)")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a run-through, not a measurement")
    parser.add_argument("--reuse", action="store_true", help="score the models --out holds from the same settings")
    parser.add_argument("--out", default=None, help="folder for runs and results.json (default: a temporary one)")
    args = parser.parse_args()
    if args.quick:
        args.train, args.val, args.test, args.budget = 96, 24, 32, 40
        args.data = args.data.rstrip("/") + "-quick"
    torch.set_num_threads(args.threads)
    root = Path(args.data)
    summary = build_composite(root, args.train, args.val, args.test, args.seed)
    print(json.dumps({split: {k: v for k, v in s.items() if k != "photos"} for split, s in summary["splits"].items()}))
    out = Path(args.out or tempfile.mkdtemp(prefix="detect-reference-"))
    trained = view_without_test(root, out / "data")
    splits = {"val": read_split(root / "val")} | ({"test": read_split(root / "test")} if args.final else {})
    reference, run, seconds, epochs, probe = train_both(args, root, trained, out)

    from cnnkit.deploy.load import load_detector

    detector = load_detector(run, device="cpu")
    rows = [{"name": f"cnnkit boxnet ({epochs} epochs)", "seconds": seconds},
            {"name": f"reference {args.reference}", "seconds": reference["seconds"]}]  # fmt: skip
    for split, (paths, targets) in splits.items():
        rows[0][split] = score(detect_cnnkit(detector, paths), targets)
        rows[1][split] = score(detect_reference(reference["model"], paths), targets)
    print_table(rows, args.final)
    timing = latency(run, reference["model"], splits["val"][0][:50], args.threads, out)
    for name, times in timing.items():
        median, p90 = times["median_ms"], times["p90_ms"]
        print(f"{name}: {median:.1f} ms median, {p90:.1f} ms p90 (batch 1, {args.threads} threads)")
    results = {"args": vars(args), "rows": rows, "latency": timing, "probe": probe, "data": summary,
               "reference_steps": reference["steps"], "reference_epochs": reference["epochs"]}  # fmt: skip
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {out / 'results.json'}")


if __name__ == "__main__":
    main()

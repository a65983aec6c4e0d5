"""Time to accuracy on real Fashion-MNIST: the documented cnnkit command against the tutorial loop.

cnnkit runs exactly the README's command in a subprocess (its peak resident memory is read
from the operating system when it exits). The competitor is the loop from the official
tutorials: torchvision ``FashionMNIST`` + ``DataLoader`` (``num_workers`` = cores) with
per-sample transforms (random flip, ``ToTensor``, ``Normalize``), fp32, trained on the same
54,000 training images with the same model, optimizer, schedule, label smoothing, batch
size and epochs. The competitor's test accuracy is measured after every epoch (off the
clock) to find when it first reaches the target.

    python benchmarks/time_to_accuracy.py --epochs 7 --target 0.93
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnnkit.config import TrainConfig
from cnnkit.data import load_data
from cnnkit.data.builtin import BUILTINS, locate
from cnnkit.models import create_model, kwargs_for_data
from cnnkit.training.optim import build_optimizer

RECIPE = [
    "--data",
    "fashion-mnist",
    "--batch-size",
    "256",
    "--label-smoothing",
    "0.1",
    "--lr",
    "5e-3",
    "--weight-decay",
    "0.05",
]


def run_cnnkit(epochs: int, out: Path) -> dict:
    """Run the documented command; returns its test accuracy, seconds and peak memory."""
    command = [sys.executable, "-m", "cnnkit", "train", *RECIPE, "--epochs", str(epochs), "--out", str(out)]
    print("$ cnnkit " + " ".join(command[3:]), flush=True)
    start = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - start
    run_dir = next(out.iterdir())
    results = json.loads((run_dir / "results.json").read_text())
    rows = [line.split(",") for line in (run_dir / "metrics.csv").read_text().splitlines()]
    seconds = sum(float(row[rows[0].index("seconds")]) for row in rows[1:])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    return {"test_accuracy": results["test"]["accuracy"], "train_seconds": seconds, "wall": wall, "peak_mb": peak}


def torchvision_raw(root: Path) -> Path:
    """The Debian IDX files, uncompressed where torchvision's FashionMNIST looks for them."""
    source = locate(BUILTINS["fashion-mnist"], None)
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.name.endswith(".gz"):
            (raw / path.name[:-3]).write_bytes(gzip.decompress(path.read_bytes()))
    return root


def run_tutorial_loop(epochs: int, batch_size: int, target: float, root: Path) -> dict:
    from torchvision import datasets, transforms

    splits = load_data("fashion-mnist")  # only to train on the same 54,000 images as cnnkit
    train_index = [int(re.search(r"\[(\d+)\]", source).group(1)) for source in splits.train.sources]
    mean, std = (splits.train.images.float().mean() / 255).item(), (splits.train.images.float().std() / 255).item()
    transform = transforms.Compose(
        [transforms.RandomHorizontalFlip(), transforms.ToTensor(), transforms.Normalize((mean,), (std,))]
    )
    evaluation = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    train = torch.utils.data.Subset(datasets.FashionMNIST(str(root), train=True, transform=transform), train_index)
    test = datasets.FashionMNIST(str(root), train=False, transform=evaluation)
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(train, batch_size, shuffle=True, num_workers=workers, persistent_workers=True)
    test_loader = torch.utils.data.DataLoader(test, 1000, num_workers=workers)
    torch.manual_seed(0)
    # The network `cnnkit train` builds for this training set (with the head's hidden layer).
    model = create_model("convnet", 10, 1, 28, **kwargs_for_data("convnet", len(train)))
    config = TrainConfig(batch_size=batch_size, label_smoothing=0.1, lr=5e-3, weight_decay=0.05)
    optimizer, scheduler = build_optimizer(model, config, epochs * len(loader), fused=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    clock, reached, accuracy = 0.0, None, 0.0
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        for images, labels in loader:
            loss = loss_fn(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        clock += time.perf_counter() - start
        model.eval()
        with torch.no_grad():
            correct = sum((model(images).argmax(1) == labels).sum().item() for images, labels in test_loader)
        accuracy = correct / len(test)
        print(f"tutorial loop epoch {epoch}: test accuracy {accuracy:.2%}, {clock:.1f}s of training", flush=True)
        if reached is None and accuracy >= target:
            reached = clock
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"test_accuracy": accuracy, "train_seconds": clock, "reached": reached, "peak_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--target", type=float, default=0.93)
    parser.add_argument("--skip-competitor", action="store_true")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        ours = run_cnnkit(args.epochs, Path(scratch) / "runs")
        theirs = None
        if not args.skip_competitor:
            theirs = run_tutorial_loop(args.epochs, args.batch_size, args.target, torchvision_raw(Path(scratch)))
    verdict = "reached" if ours["test_accuracy"] >= args.target else "MISSED"
    print(f"\ncnnkit: test accuracy {ours['test_accuracy']:.2%} ({verdict} {args.target:.1%}) after "
          f"{ours['train_seconds']:.1f}s of training ({ours['wall']:.1f}s wall), "
          f"peak memory {ours['peak_mb']:.0f} MB")  # fmt: skip
    if theirs is not None:
        when = f"{theirs['reached']:.1f}s" if theirs["reached"] is not None else "not within the run"
        print(f"tutorial loop: test accuracy {theirs['test_accuracy']:.2%} after {theirs['train_seconds']:.1f}s; "
              f"reached {args.target:.1%} at {when}; peak memory {theirs['peak_mb']:.0f} MB")  # fmt: skip
        print(f"training time ratio (same epochs): {theirs['train_seconds'] / ours['train_seconds']:.2f}x")


if __name__ == "__main__":
    main()

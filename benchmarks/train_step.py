"""Training step: cnnkit's loop against a hand-written fp32 PyTorch loop, same model, same batches.

The data sit in memory (real Fashion-MNIST, 54,000 training images), so this measures the
step alone: forward, backward and optimizer update. Both loops train the same model from
the same initial weights with the same optimizer, schedule and batch order for the same
epochs, then report validation accuracy, so a speed-up that costs accuracy would show.
Each loop runs in a fresh process of its own, so settings cnnkit makes for its process
(the allocator) cannot help the hand-written loop or hurt it.

It also reports hardware efficiency: the training FLOP rate (forward multiply-adds counted
per layer, times 2 FLOPs, times 3 for forward plus backward) as a share of this machine's
measured matrix-multiply peak in fp32 and bf16.

    python benchmarks/train_step.py --model convnet --epochs 1 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

import torch
from torch import nn

from cnnkit import compute
from cnnkit.config import TrainConfig
from cnnkit.data import load_data
from cnnkit.data.loader import channel_stats, iterate_batches
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import ModelSpec, build, kwargs_for_data
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.tasks.classify.evaluate import evaluate
from cnnkit.training.loop import StepSettings, train_one_epoch
from cnnkit.training.optim import Optimisation, build_optimizer
from cnnkit.understand.summary import count_multiply_adds


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 2.0) -> float:
    """FLOP/s of a large square matrix multiply: the most this machine does in ``dtype``."""
    side = 8192 if device.type == "cuda" else 2048
    a, b = (torch.randn(side, side, dtype=dtype, device=device) for _ in range(2))
    a @ b
    _synchronize(device)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    _synchronize(device)
    return 2 * side**3 * count / (time.perf_counter() - start)


def hand_written(model, splits, preprocessing, config, epochs, device) -> float:
    """The loop from the PyTorch tutorials, fp32 and default memory format; returns seconds."""
    model.to(device)
    total_steps = epochs * math.ceil(len(splits.train) / config.batch_size)
    optimizer, scheduler = build_optimizer(model, config, total_steps, fused=False)  # PyTorch's default kernel
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(0)
    model.train()
    start = time.perf_counter()
    for _ in range(epochs):
        for images, labels in iterate_batches(splits.train, config.batch_size, True, generator):
            images, labels = images.to(device), labels.to(device)
            loss = loss_fn(model(preprocessing.normalize(images)), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    _synchronize(device)
    return time.perf_counter() - start


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def with_cnnkit(model, splits, preprocessing, config, epochs, device) -> float:
    settings = compute.resolve(device)
    model = compute.prepare_model(model, settings)
    total_steps = epochs * math.ceil(len(splits.train) / config.batch_size)
    optimisation = Optimisation(*build_optimizer(model, config, total_steps))
    task = ClassifyTask(splits.classes, label_smoothing=config.label_smoothing)
    steps = StepSettings(config.batch_size, compute=settings)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(epochs):
        train_one_epoch(model, splits.train, preprocessing, task, optimisation, device, generator, steps)
    _synchronize(device)
    return time.perf_counter() - start


LOOPS = {"hand-written fp32": hand_written, "cnnkit": with_cnnkit}


def run_loop(name: str, args: argparse.Namespace) -> dict:
    """Train with one loop in this process; returns its images per second and validation accuracy."""
    device = torch.device(args.device)
    splits = load_data("fashion-mnist", data_dir=args.data_dir)
    preprocessing, spec = _preprocessing_and_spec(splits, args.model)
    torch.manual_seed(0)
    model = build(spec)
    config = TrainConfig(batch_size=args.batch_size)
    seconds = LOOPS[name](model, splits, preprocessing, config, args.epochs, device)
    accuracy = evaluate(model, splits.val, preprocessing, device).accuracy
    return {"images_per_second": args.epochs * len(splits.train) / seconds, "accuracy": accuracy}


def _preprocessing_and_spec(splits, model: str) -> tuple[Preprocessing, ModelSpec]:
    _, channels, size, _ = splits.train.images.shape
    mean, std = channel_stats(splits.train)
    kwargs = kwargs_for_data(model, len(splits.train))  # the network `cnnkit train` builds for this data
    return Preprocessing(size, channels, mean, std), ModelSpec(model, len(splits.classes), channels, size, kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None, help="folder holding the Fashion-MNIST IDX files")
    parser.add_argument("--loop", choices=sorted(LOOPS), help=argparse.SUPPRESS)  # one loop, in a child process
    args = parser.parse_args()
    if args.loop:
        print(json.dumps(run_loop(args.loop, args)))
        return
    device = torch.device(args.device)
    splits = load_data("fashion-mnist", data_dir=args.data_dir)
    _, spec = _preprocessing_and_spec(splits, args.model)
    settings = compute.resolve(device)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {settings.cpu_capability}, "
          f"torch {torch.__version__}; cnnkit chose {settings.describe()}")  # fmt: skip
    shape = tuple(splits.train.images.shape[1:])
    macs = count_multiply_adds(build(spec), shape)
    peaks = {name: matmul_peak(dtype, device) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(f"{args.model}: {macs / 1e6:.2f}M multiply-adds per image; matmul peak "
          + ", ".join(f"{name} {rate / 1e9:.1f} GFLOP/s" for name, rate in peaks.items()))  # fmt: skip
    best = max(peaks, key=peaks.get)  # without native bf16 the bf16 "peak" is an emulation, far below fp32
    speeds = {}
    for name in LOOPS:
        child = subprocess.run([sys.executable, *sys.argv, "--loop", name], check=True, capture_output=True, text=True)
        result = json.loads(child.stdout.strip().splitlines()[-1])
        speeds[name] = rate = result["images_per_second"]
        flops = 6 * macs * rate
        print(f"{name:>17}: {rate:7.0f} img/s, val accuracy {result['accuracy']:.2%}, {flops / 1e9:.0f} GFLOP/s = "
              f"{flops / peaks['fp32']:.0%} of the fp32 peak, {flops / peaks[best]:.0%} of the best ({best})"
              )  # fmt: skip
    print(f"speed-up: {speeds['cnnkit'] / speeds['hand-written fp32']:.2f}x")


if __name__ == "__main__":
    main()

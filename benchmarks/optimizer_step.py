"""One AdamW update: PyTorch's default kernel against the fused one cnnkit picks (``training/optim.adam_kernel``).

Small networks make many small tensors (bcresnet: 105 of them, 9.2k weights), and the
default Adam runs about ten ops on each, so on a CPU its update costs a noticeable part of
their small training steps. The script times ``optimizer.step()`` alone, with gradients in
place, for cnnkit's default image, series and audio networks, and prints the ratio.

    python benchmarks/optimizer_step.py              # one thread
    python benchmarks/optimizer_step.py --threads 2
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from cnnkit.models.registry import create_model
from cnnkit.training.optim import adam_kernel

NETWORKS = {"convnet": 28, "resnet1d": 427, "bcresnet": 16000}  # name -> input size (image side, series or clip length)


def step_seconds(model: torch.nn.Module, fused: bool, repeats: int) -> float:
    """Median seconds of one AdamW step over ``model``'s parameters, with random gradients in place."""
    parameters = list(model.parameters())
    for parameter in parameters:
        parameter.grad = torch.randn_like(parameter)
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, **(adam_kernel(parameters) if fused else {}))
    for _ in range(5):  # warm-up: the moments are allocated on the first step
        optimizer.step()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"CPU {platform.processor() or platform.machine()} ({capability}), torch {torch.__version__}, "
          f"{args.threads} threads")  # fmt: skip
    for name, size in NETWORKS.items():
        model = create_model(name, num_classes=10, in_channels=1, img_size=size)
        tensors, weights = sum(1 for _ in model.parameters()), sum(p.numel() for p in model.parameters())
        default, fused = (step_seconds(model, fused, args.repeats) for fused in (False, True))
        print(f"{name:9s} {tensors:4d} tensors {weights:8,d} weights: default {default * 1e3:6.2f} ms, "
              f"cnnkit {fused * 1e3:6.2f} ms, {default / fused:5.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()

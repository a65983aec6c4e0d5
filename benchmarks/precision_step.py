"""One model's training step in fp32 and in bf16 on this CPU: the numbers behind ``--precision``.

A step is forward, loss, backward and cnnkit's optimizer update (``training/optim.build_optimizer``,
fused AdamW where it applies) on one random batch of the given shape, held in memory, so only
the network's own kernels are timed: no data, no augmentation. Each precision is timed as the
best of ``--repeats`` rounds of ``--steps`` steps after two warm-up steps, and the ratio printed.
Any registered model takes its input shape, so the 1-D and audio networks are covered as well
as the image ones; ``--model-kwargs`` reaches the builder (``{"width": 2}`` for BC-ResNet-2).

    python benchmarks/precision_step.py --model bcresnet --shape 1 16000 --batch-size 32
    python benchmarks/precision_step.py --model resnet1d --shape 1 427 --batch-size 16 --classes 6
    python benchmarks/precision_step.py --model convnet --shape 1 28 28 --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from audio_pipeline import cpu_model
from torch import nn

from cnnkit import compute
from cnnkit.config import TrainConfig
from cnnkit.models.registry import create_model
from cnnkit.training.optim import build_optimizer


def step_seconds(args: argparse.Namespace, precision: str) -> float:
    """Best seconds per training step of ``args.model`` at ``precision``, from the same initial weights."""
    torch.manual_seed(0)
    model = create_model(args.model, args.classes, args.shape[0], args.shape[1], **args.model_kwargs)
    settings = compute.resolve(torch.device("cpu"), precision, model=model, input_shape=tuple(args.shape))
    model = compute.prepare_model(model, settings).train()
    optimizer, _ = build_optimizer(model, TrainConfig(lr=1e-3), total_steps=10**6)
    inputs = compute.prepare_inputs(torch.randn(args.batch_size, *args.shape), settings)
    labels = torch.randint(0, args.classes, (args.batch_size,))

    def step() -> None:
        with compute.autocast(settings):
            loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step(), step()
    best = float("inf")
    for _ in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        best = min(best, (time.perf_counter() - start) / args.steps)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="bcresnet")
    parser.add_argument("--shape", type=int, nargs="+", default=[1, 16000], help="one input: C L, or C H W")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=11)
    parser.add_argument("--model-kwargs", type=json.loads, default={}, help="builder arguments, a JSON object")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if len(args.shape) not in (2, 3):
        parser.error("--shape takes C L (series, audio) or C H W (images)")
    torch.set_num_threads(args.threads)
    print(f"{cpu_model()}, {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}, "
          f"{args.threads} threads, torch {torch.__version__}; {args.model} {json.dumps(args.model_kwargs)}, "
          f"batch {args.batch_size} of {tuple(args.shape)}")  # fmt: skip
    fp32, bf16 = (step_seconds(args, precision) for precision in ("fp32", "bf16"))
    print(f"fp32 {1000 * fp32:.1f} ms a step, bf16 {1000 * bf16:.1f} ms: bf16 is {fp32 / bf16:.2f}x fp32's speed")


if __name__ == "__main__":
    main()

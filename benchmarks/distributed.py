"""Scaling a training step over processes: 1 process x T threads against P processes x T/P threads.

Measures, with the same global batch, model and optimizer (AdamW) on synthetic images:

- images/s of one process using every thread, and of P DDP processes (gloo on CPU) with the
  threads split among them, and their ratio: what ``cnnkit train --devices P`` can gain here;
- the communication cost per step: one all-reduce of the model's gradients (fp32, the bytes
  DDP moves), timed alone, and the step with DDP's gradient sync against the step without it
  (``no_sync``), both against the step time;
- the evaluation share: a forward pass over a validation split of 10% of the training
  images against a training epoch, the work every rank repeats (docs/distributed.md says why);
- on a CUDA machine, images/s on 1 GPU with and without the DDP wrapper (NCCL, world size 1).

Each setting runs in fresh processes. Under two minutes at the defaults on a 2-core CPU:

    python benchmarks/distributed.py                      # convnet, 3x32x32, batch 64, 2 processes
    python benchmarks/distributed.py --model resnet18 --processes 4 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

import torch
import torch.multiprocessing as mp
from torch import nn

from cnnkit.models import create_model


def measure(rank: int, world: int, threads: int, args: argparse.Namespace, port: int, results: dict) -> None:
    """Train ``args.steps`` timed steps (after warm-up) on this rank's share of each global batch."""
    torch.set_num_threads(threads)
    device = torch.device("cuda", rank) if args.cuda else torch.device("cpu")
    distributed = world > 1 or args.ddp
    if distributed:
        backend = "nccl" if args.cuda else "gloo"
        address = f"tcp://127.0.0.1:{port}"
        torch.distributed.init_process_group(backend, init_method=address, rank=rank, world_size=world)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, in_channels=3, img_size=args.img_size).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    ids = [rank] if args.cuda else None
    trainer = nn.parallel.DistributedDataParallel(model, device_ids=ids) if distributed else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    local = args.batch_size // world
    images = torch.randn(local, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, 10, (local,), device=device)

    def step(sync: bool = True) -> None:
        context = trainer.no_sync() if distributed and not sync else torch.enable_grad()
        with context:
            loss = nn.functional.cross_entropy(trainer(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()

    def timed(function, count: int) -> float:
        for _ in range(args.warmup):
            function()
        if distributed:
            torch.distributed.barrier()
        if args.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(count):
            function()
        if args.cuda:
            torch.cuda.synchronize()
        if distributed:
            torch.distributed.barrier()
        return (time.perf_counter() - start) / count

    step_seconds = timed(step, args.steps)
    record = {"step_s": step_seconds, "images_per_s": args.batch_size / step_seconds, "parameters": parameters}
    if world > 1:
        record["step_without_sync_s"] = timed(lambda: step(sync=False), args.steps)
        gradients = torch.zeros(parameters, device=device)
        record["all_reduce_s"] = timed(lambda: torch.distributed.all_reduce(gradients), args.steps)
        record["all_reduce_bytes_per_rank"] = 2 * (world - 1) / world * parameters * 4
    model.eval()
    validation = torch.randn(max(1, args.batch_size * args.steps // 10), 3, args.img_size, args.img_size)
    with torch.no_grad():
        start = time.perf_counter()
        for first in range(0, len(validation), 256):
            model(validation[first : first + 256].to(device))
        record["eval_s_per_train_epoch"] = (time.perf_counter() - start) / (step_seconds * args.steps)
    trainer = optimizer = None  # released before the process group goes: gloo then exits cleanly
    if distributed:
        torch.distributed.destroy_process_group()
    if rank == 0:
        results.update(record)


def run_setting(world: int, threads: int, args: argparse.Namespace) -> dict:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(measure, args=(world, threads, args, port, results), nprocs=world, join=True)
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="convnet")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (split over the processes)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="threads in all")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()
    args.cuda, args.ddp = False, False
    if args.batch_size % args.processes:
        sys.exit(f"--batch-size {args.batch_size} must be a multiple of --processes {args.processes}")
    one = run_setting(1, args.threads, args)
    many = run_setting(args.processes, max(1, args.threads // args.processes), args)
    report = {
        "machine": {"cpus": len(os.sched_getaffinity(0)), "torch": torch.__version__},
        "model": args.model,
        "batch_size": args.batch_size,
        f"1x{args.threads}": one,
        f"{args.processes}x{max(1, args.threads // args.processes)}": many,
        "speedup": many["images_per_s"] / one["images_per_s"],
        "exposed_sync_share": 1 - many["step_without_sync_s"] / many["step_s"],
        "all_reduce_share": many["all_reduce_s"] / many["step_s"],
    }
    if torch.cuda.is_available():
        args.cuda = True
        plain = run_setting(1, args.threads, args)
        args.ddp = True
        wrapped = run_setting(1, args.threads, args)
        report["cuda"] = {
            "device": torch.cuda.get_device_name(0),
            "plain_images_per_s": plain["images_per_s"],
            "ddp_images_per_s": wrapped["images_per_s"],
            "ddp_overhead": 1 - wrapped["images_per_s"] / plain["images_per_s"],
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

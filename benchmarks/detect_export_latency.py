"""A detection run's ONNX export against PyTorch eager: milliseconds per image, batch 1, on the CPU.

For each ``RUN=EXPORT`` pair (a run directory and the ``.onnx`` file ``cnnkit export`` wrote
from it), both detect each of the run's first ``--images`` validation images one at a time,
the way a deployment answers one request: PyTorch eager (``TorchDetector``, the network and
its selection) against ONNX Runtime (``OnnxDetector``: boxnet's graph and numpy NMS, or a
torchvision detector's graph with NMS inside). Best and median of ``--repeats`` passes after
one warm-up, on ``--threads`` threads of both runtimes; run it on an idle machine for
numbers worth quoting. One JSON line per pair:

    python benchmarks/detect_export_latency.py runs/fcos=runs/fcos.onnx runs/train=runs/export/model.onnx
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cnnkit.deploy.detect_export import validation_pixels
from cnnkit.deploy.load import load_detector


def time_detector(detector, pixels, repeats: int) -> list[float]:
    """Milliseconds per image of each pass over ``pixels`` (N, C, S, S), one image per call, after one warm-up."""
    passes = []
    for index in range(repeats + 1):
        start = time.perf_counter()
        for image in pixels:
            detector.detect(image[None])
        if index:
            passes.append(1000 * (time.perf_counter() - start) / len(pixels))
    return passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="RUN=EXPORT", help="a run directory and its .onnx export")
    parser.add_argument("--images", type=int, default=8, help="validation images timed (default 8)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (default 5)")
    parser.add_argument("--threads", type=int, default=1, help="threads of each runtime (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for pair in args.pairs:
        run, export = pair.split("=", 1)
        eager, onnx = load_detector(run, device="cpu"), load_detector(export, threads=args.threads)
        pixels = validation_pixels(run, eager.info)[: args.images]
        row = {"model": eager.info.model.name, "img_size": eager.preprocessing.img_size, "images": len(pixels)}
        for label, detector in (("eager", eager), ("onnx", onnx)):
            passes = time_detector(detector, pixels, args.repeats)
            row |= {
                f"{label}_best_ms": round(min(passes), 1),
                f"{label}_median_ms": round(statistics.median(passes), 1),
            }
        print(json.dumps({**row, "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()

"""Every registered detector's parameters and eager forward latency on one image, on the CPU.

Each detector (``list_models(task="detect")``) is built for 3 classes and timed in eval
mode on one ``--img-size`` image of noise, best and median of ``--repeats`` after two
warm-up calls, on ``--threads`` threads. Noise gives the detectors' post-processing
(score threshold, NMS) little to do, so this times the network and the box decoding; run
it on an idle machine for numbers worth quoting. One JSON line per detector:

    python benchmarks/detector_latency.py                          # 320 px, 1 thread, 20 repeats
    python benchmarks/detector_latency.py --img-size 128 --repeats 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from cnnkit.models import create_model, list_models


def time_detector(name: str, img_size: int, repeats: int) -> dict[str, float | int | str]:
    """Parameters and forward milliseconds (best, median) of ``name`` on one (1, 3, img_size, img_size) image."""
    model = create_model(name, num_classes=3, img_size=img_size).eval()
    image = torch.randn(1, 3, img_size, img_size, generator=torch.Generator().manual_seed(0))
    seconds = []
    with torch.inference_mode():
        for index in range(repeats + 2):
            start = time.perf_counter()
            model(image)
            if index >= 2:  # two warm-up calls: allocator and oneDNN kernel selection
                seconds.append(time.perf_counter() - start)
    return {
        "model": name,
        "parameters": sum(p.numel() for p in model.parameters()),
        "img_size": img_size,
        "best_ms": round(1000 * min(seconds), 1),
        "median_ms": round(1000 * statistics.median(seconds), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=320, help="side of the square image (default 320)")
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per detector (default 20)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in list_models(task="detect"):
        print(json.dumps({**time_detector(name, args.img_size, args.repeats), "threads": args.threads}), flush=True)


if __name__ == "__main__":
    main()

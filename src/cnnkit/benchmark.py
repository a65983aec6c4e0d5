"""Inference speed on this machine: PyTorch eager against ONNX Runtime fp32 and int8, on the same images.

Latency is one image per call (p50 and p99 over many calls); throughput is images per
second at batch 32. Every runtime gets the same uint8 validation images and the same
number of warm-up calls, and includes normalisation (which the ONNX graph does inside).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError

WARMUP_CALLS = 20


def _timed_calls(fn: Callable, batch, seconds: float, min_calls: int) -> np.ndarray:
    for _ in range(WARMUP_CALLS):
        fn(batch)
    durations = []
    deadline = time.perf_counter() + seconds
    while len(durations) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn(batch)
        durations.append(time.perf_counter() - start)
    return np.array(durations)


def latency(fn: Callable, image, seconds: float = 2.0) -> tuple[float, float]:
    """p50 and p99 milliseconds of ``fn`` on one uint8 image tensor (1, C, H, W)."""
    durations = _timed_calls(fn, image, seconds, min_calls=200) * 1000.0
    return float(np.percentile(durations, 50)), float(np.percentile(durations, 99))


def throughput(fn: Callable, batch, seconds: float = 1.0) -> float:
    """Images per second of ``fn`` on a uint8 batch tensor (B, C, H, W)."""
    durations = _timed_calls(fn, batch, seconds, min_calls=20)
    return len(batch) * len(durations) / float(durations.sum())


def _candidates(target: Path, scratch: Path) -> list[tuple[str, object]]:
    """(runtime name, classifier) pairs: a run gets PyTorch plus fresh fp32 and int8 exports."""
    from cnnkit.predict import load
    from cnnkit.runtime import OnnxClassifier

    if target.suffix.lower() == ".onnx":
        found = [("onnxruntime", OnnxClassifier(target))]
        sibling = target.with_name(target.stem + ".int8.onnx")
        if sibling.is_file():
            found.append(("onnxruntime int8", OnnxClassifier(sibling)))
        return found
    from cnnkit.export import write_onnx
    from cnnkit.quantize import calibration_images, quantize_int8

    reference = load(target, device="cpu")
    write_onnx(reference.model, reference.info, scratch / "model.onnx")
    quantize_int8(scratch / "model.onnx", scratch / "model.int8.onnx", calibration_images(reference))
    return [
        ("pytorch eager", reference),
        ("onnxruntime fp32", OnnxClassifier(scratch / "model.onnx")),
        ("onnxruntime int8", OnnxClassifier(scratch / "model.int8.onnx")),
    ]


def benchmark(target: str | Path, seconds: float = 2.0, batch_size: int = 32) -> list[dict]:
    """Latency, throughput and validation accuracy per runtime for a run, checkpoint or ``.onnx`` model.

    Args:
        target: A run directory or checkpoint (benchmarks PyTorch eager and freshly exported ONNX fp32 and
            int8 models), or a ``.onnx`` file (and its ``.int8.onnx`` sibling when present).
        seconds: Time spent on each measurement. Defaults to 2.0.
        batch_size: Batch of the throughput measurement. Defaults to 32.

    Returns:
        One dict per runtime: ``runtime``, ``p50_ms``, ``p99_ms``, ``images_per_s``, ``accuracy``.
    """
    import torch

    from cnnkit.export import validation_images

    target = Path(target).expanduser()
    if not target.exists():
        raise CnnkitError(f"not found: {target}; give a run directory, a checkpoint or a .onnx model")
    rows = []
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        candidates = _candidates(target, Path(scratch))
        images = validation_images(candidates[0][1])
        batch = images.images[torch.arange(batch_size) % len(images)]  # repeats images if the split is small
        for runtime, classifier in candidates:
            p50, p99 = latency(classifier.logits, images.images[:1], seconds)
            accuracy = (classifier.logits(images.images).argmax(1) == images.labels).double().mean().item()
            rows.append(
                {
                    "runtime": runtime,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "images_per_s": throughput(classifier.logits, batch, seconds),
                    "accuracy": accuracy,
                    "validation_images": len(images),
                }
            )
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'runtime':<18} {'p50 ms':>8} {'p99 ms':>8} {'images/s (b32)':>15} {'val acc':>8}"]
    lines += [
        f"{r['runtime']:<18} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['images_per_s']:>15,.0f} {r['accuracy']:>8.2%}"
        for r in rows
    ]
    return "\n".join(lines)

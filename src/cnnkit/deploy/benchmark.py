"""Inference speed on this machine: PyTorch eager against ONNX Runtime fp32 and int8, on the same images.

Latency is one image per call (p50 and p99 over many calls); throughput is images per
second at batch 32. Every runtime gets the same uint8 validation images and the same
number of warm-up calls, and includes normalisation (which the ONNX graph does inside).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from cnnkit.deploy.timing import WARMUP_CALLS, timed_calls
from cnnkit.errors import CnnkitError

ROUNDS = 5  # runtimes take turns, so a burst of load from other processes hits each of them alike


def _image_model(classifier, target: Path):
    """``classifier``, or one line when it reads series or audio (timed here on uint8 images, calibrated on them)."""
    if (modality := classifier.preprocessing.modality) != "image":
        raise CnnkitError(f"{target} reads {modality}, and cnnkit benchmark times image models so far")
    return classifier


def _candidates(target: Path, scratch: Path, threads: int | None) -> list[tuple[str, object]]:
    """(runtime name, classifier) pairs: a run gets PyTorch plus fresh fp32 and int8 exports."""
    from cnnkit.deploy.load import is_onnx, load

    if is_onnx(target):
        found = [("onnxruntime", _image_model(load(target, threads=threads), target))]
        sibling = target.with_name(target.stem + ".int8.onnx")
        if sibling.is_file():
            found.append(("onnxruntime int8", load(sibling, threads=threads)))
        return found
    from cnnkit.deploy.export import write_onnx
    from cnnkit.deploy.quantize import calibration_images, quantize_int8

    reference = _image_model(load(target, device="cpu"), target)
    write_onnx(reference.model, reference.info, scratch / "model.onnx")
    quantize_int8(scratch / "model.onnx", scratch / "model.int8.onnx", calibration_images(reference))
    return [
        ("pytorch eager", reference),
        ("onnxruntime fp32", load(scratch / "model.onnx", threads=threads)),
        ("onnxruntime int8", load(scratch / "model.int8.onnx", threads=threads)),
    ]


def benchmark(target: str | Path, seconds: float = 2.0, batch_size: int = 32, threads: int | None = None) -> list[dict]:
    """Latency, throughput and validation accuracy per runtime for a run, checkpoint or ``.onnx`` model.

    Each runtime spends about ``seconds`` on latency and as long on throughput, in
    :data:`ROUNDS` turns interleaved with the other runtimes; throughput uses the median
    batch time, so a moment of load from another process does not decide the result.

    Args:
        target: A run directory or checkpoint (benchmarks PyTorch eager and freshly exported ONNX fp32 and
            int8 models), or a ``.onnx`` file (and its ``.int8.onnx`` sibling when present).
        seconds: Time per runtime and measurement. Defaults to 2.0.
        batch_size: Batch of the throughput measurement. Defaults to 32.
        threads: Intra-op threads for every runtime. Defaults to each runtime's own default (all cores).

    Returns:
        One dict per runtime: ``runtime``, ``p50_ms``, ``p99_ms``, ``images_per_s``, ``accuracy``,
        ``validation_images``.
    """
    import torch

    from cnnkit.deploy.export import validation_images
    from cnnkit.tasks.classify.evaluate import score

    target = Path(target).expanduser()
    if not target.exists():
        raise CnnkitError(f"not found: {target}; give a run directory, a checkpoint or a .onnx model")
    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch, torch.inference_mode():
        try:
            torch.set_num_threads(threads or default_threads)
            candidates = _candidates(target, Path(scratch), threads)
            images = validation_images(candidates[0][1])
            image = images.images[:1]
            batch = images.images[torch.arange(batch_size) % len(images)]  # repeats images if the split is small
            single = {name: [] for name, _ in candidates}
            batched = {name: [] for name, _ in candidates}
            for _, classifier in candidates:
                timed_calls(classifier.logits, image, 0.0, WARMUP_CALLS)
                timed_calls(classifier.logits, batch, 0.0, WARMUP_CALLS)
            for _ in range(ROUNDS):
                for name, classifier in candidates:
                    single[name].append(timed_calls(classifier.logits, image, seconds / ROUNDS, 40))
                    batched[name].append(timed_calls(classifier.logits, batch, seconds / ROUNDS, 4))
            rows = []
            for name, classifier in candidates:
                milliseconds = np.concatenate(single[name]) * 1000.0
                accuracy = score(classifier.logits(images.images), images.labels, images.classes).accuracy
                rows.append(
                    {
                        "runtime": name,
                        "p50_ms": float(np.percentile(milliseconds, 50)),
                        "p99_ms": float(np.percentile(milliseconds, 99)),
                        "images_per_s": batch_size / float(np.median(np.concatenate(batched[name]))),
                        "accuracy": accuracy,
                        "validation_images": len(images),
                    }
                )
        finally:
            torch.set_num_threads(default_threads)
    return rows


def format_table(rows: list[dict]) -> str:
    lines = [f"{'runtime':<18} {'p50 ms':>8} {'p99 ms':>8} {'images/s (b32)':>15} {'val acc':>8}"]
    lines += [
        f"{r['runtime']:<18} {r['p50_ms']:>8.3f} {r['p99_ms']:>8.3f} {r['images_per_s']:>15,.0f} {r['accuracy']:>8.2%}"
        for r in rows
    ]
    return "\n".join(lines)

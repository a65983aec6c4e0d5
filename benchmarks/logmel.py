"""The log-mel front end's two STFT kernels, timed where each runs: PyTorch and ONNX Runtime, on the CPU.

``cnnkit.models.frontend.LogMel`` uses ``torch.stft`` in PyTorch and a windowed-DFT
convolution in ONNX exports. This script times both kernels in both places (the power
spectrum plus the mel filters and log, on a batch of one-second 16 kHz clips), best of
``--repeats``, so the choice can be checked on an idle machine:

- PyTorch: ``torch.stft`` against the convolution (``cnnkit.models.frontend.dft_power``);
- ONNX Runtime: the exported convolution against ONNX's STFT operator (``torch.stft``
  exported by the dynamo exporter), one session thread each;

and prints one JSON line per setting. About 30 s at the defaults:

    python benchmarks/logmel.py                      # batch 64, 1 s clips, 1 and 2 threads
    python benchmarks/logmel.py --batch 8 --repeats 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from cnnkit.models.frontend import LogMel, dft_power


class StftLogMel(torch.nn.Module):
    """The same features with ``torch.stft`` forced, export included (what the ONNX STFT operator runs)."""

    def __init__(self, frontend: LogMel) -> None:
        super().__init__()
        self.frontend = frontend

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        f = self.frontend
        spectrum = torch.stft(
            waves[:, 0], f.n_fft, f.hop_length, window=f.window, pad_mode="constant", return_complex=True
        )
        return torch.log(f.filters @ spectrum.abs().square() + f.log_offset)


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    run()  # warm-up: allocations and one-time setup
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def onnx_session(model: torch.nn.Module, example: torch.Tensor, folder: Path, name: str, threads: int):
    import onnxruntime as ort

    path = folder / f"{name}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["waves"], dynamo=True, verbose=False)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="clips per batch (default 64)")
    parser.add_argument("--seconds", type=float, default=1.0, help="clip length at 16 kHz (default 1)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (default 1 2)")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per kernel; the best counts (default 15)")
    args = parser.parse_args()
    frontend = LogMel(normalize=False).eval()
    waves = torch.randn(args.batch, 1, round(16000 * args.seconds))

    def conv_path() -> torch.Tensor:
        return torch.log(frontend.filters @ dft_power(waves[:, 0], frontend.dft, 160) + 1e-6)

    inputs = {"waves": waves.numpy()}
    with tempfile.TemporaryDirectory() as folder:
        for threads in args.threads:
            torch.set_num_threads(threads)
            with torch.no_grad():
                row: dict[str, float] = {"threads": threads, "batch": args.batch, "seconds": args.seconds}
                row["torch_stft_ms"] = 1000 * best_seconds(lambda: frontend(waves), args.repeats)
                row["torch_conv_ms"] = 1000 * best_seconds(conv_path, args.repeats)
            for name, model in (("conv", frontend), ("stft", StftLogMel(frontend))):
                session = onnx_session(model, waves, Path(folder), name, threads)
                row[f"ort_{name}_ms"] = 1000 * best_seconds(lambda s=session: s.run(None, inputs), args.repeats)
            print(json.dumps({key: round(value, 2) for key, value in row.items()}))


if __name__ == "__main__":
    main()

"""The plain-text records of a run directory: split, skipped files, per-epoch and per-step logs, environment."""

from __future__ import annotations

import csv
import importlib.metadata
import json
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cnnkit.checkpoint import BEST, LAST
from cnnkit.config import TrainConfig
from cnnkit.data import DataSplits
from cnnkit.data.audio import AudioSplits
from cnnkit.data.series import SeriesSplits
from cnnkit.errors import CnnkitError
from cnnkit.tasks.classify.metrics import EvalResult

if TYPE_CHECKING:
    from cnnkit.tasks.embed.evaluate import EmbedResult


@dataclass
class Run:
    """The result of :func:`fit`: where it was written and what it measured."""

    dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[dict[str, float]]
    test: EvalResult | EmbedResult | None
    best_epoch: int | None
    seconds: float
    interrupted: bool = False

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / LAST


def describe(splits: DataSplits | SeriesSplits | AudioSplits) -> str:
    series = isinstance(splits, SeriesSplits)
    shape = "x".join(map(str, splits.train.inputs.shape[1:]))  # CxHxW, or CxL for series and audio clips
    normalized = f" ({'z-normalised' if splits.normalize else 'values as stored'})" if series else ""
    items = "series" if series else "clips" if isinstance(splits, AudioSplits) else "images"
    return (
        f"{splits.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test "
        f"{items}, {len(splits.classes)} classes, {shape}{normalized}"
    )


def write_data_records(run_dir: Path, splits: DataSplits | SeriesSplits | AudioSplits) -> None:
    """``split.json`` (which item went where; a series set's facts) and ``skipped.csv`` (what could not be read)."""
    split = {
        "data": splits.name,
        "rule": splits.split_rule,
        "classes": splits.classes,
        **({"series": splits.facts()} if isinstance(splits, SeriesSplits) else {}),
        **({"audio": splits.facts()} if isinstance(splits, AudioSplits) else {}),
        **{name: getattr(splits, name).sources for name in ("train", "val", "test")},
    }
    (run_dir / "split.json").write_text(json.dumps(split))
    if splits.skipped:
        with open(run_dir / "skipped.csv", "w", newline="", encoding="utf-8") as stream:
            writer = csv.writer(stream)
            writer.writerow(["path", "reason"])
            writer.writerows((item.path, item.reason) for item in splits.skipped)


def check_same_split(run_dir: Path, splits: DataSplits | SeriesSplits) -> list[str]:
    """Refuse to resume on data that changed since the run began; returns the run's class names."""
    try:
        recorded = json.loads((run_dir / "split.json").read_text())
    except (OSError, ValueError) as error:
        raise CnnkitError(f"cannot resume {run_dir}: its split.json is unreadable ({error})") from None
    for name in ("train", "val", "test"):
        now, before = getattr(splits, name).sources, recorded.get(name, [])
        if now != before:
            changed = sorted(set(now) ^ set(before))
            example = f", e.g. {changed[0]}" if changed else " (same files, another order)"
            raise CnnkitError(
                f"cannot resume {run_dir}: the {name} images of {splits.name} changed since the run began "
                f"({len(before)} then, {len(now)} now{example}); resume needs the same data"
            )
    return list(recorded.get("classes", []))


def append_row(path: Path, row: dict[str, float]) -> None:
    """Append one row to a CSV file, writing the header first when the file is new."""
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


class StepLog:
    """``steps.csv``: the loss of every optimizer step, flushed as it is written so a crash loses nothing.

    Losses are written with ``repr`` precision, so two runs can be compared bit for bit.
    """

    def __init__(self, path: Path) -> None:
        new = not path.exists() or path.stat().st_size == 0
        self._stream = open(path, "a", newline="")  # noqa: SIM115 (closed by close())
        self._writer = csv.writer(self._stream)
        if new:
            self._writer.writerow(["step", "epoch", "loss", "skipped"])

    def write(self, step: int, epoch: int, loss: float, skipped: bool) -> None:
        self._writer.writerow([step, epoch, repr(loss), int(skipped)])
        self._stream.flush()

    def close(self) -> None:
        self._stream.close()


def write_environment(
    run_dir: Path, config: TrainConfig, device: torch.device, compute: dict[str, Any] | None = None
) -> None:
    """``environment.json``: library versions, device, threads, compute choices and settings, to tell runs apart.

    A resumed run adds its own record under ``resumed``: bitwise resume needs the same versions.
    """
    import numpy
    import PIL
    import safetensors

    from cnnkit import __version__

    environment = {
        "versions": {
            "cnnkit": __version__,
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "torchvision": importlib.metadata.version("torchvision"),
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
            "safetensors": safetensors.__version__,
        },
        "platform": platform.platform(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "compute": compute or {},
        "config": config.to_dict(),
    }
    path = run_dir / "environment.json"
    if path.exists():  # a resumed run: keep the first session's record and add this one
        first = json.loads(path.read_text())
        environment = {**first, "resumed": [*first.get("resumed", []), environment]}
    path.write_text(json.dumps(environment, indent=2))


def recorded_precision(run_dir: Path) -> str | None:
    """The precision the latest session of a run trained in, as ``environment.json`` records it (None if absent)."""
    path = run_dir / "environment.json"
    if not path.exists():
        return None
    environment = json.loads(path.read_text())
    record = environment["resumed"][-1] if environment.get("resumed") else environment
    return record.get("compute", {}).get("precision")


def record_compute(run_dir: Path, compute: dict[str, Any]) -> None:
    """Update this session's compute record in ``environment.json``: a run that switched precision mid-way."""
    path = run_dir / "environment.json"
    environment = json.loads(path.read_text())
    record = environment["resumed"][-1] if environment.get("resumed") else environment
    record["compute"] = {**record.get("compute", {}), **compute}
    path.write_text(json.dumps(environment, indent=2))


def write_results(
    run_dir: Path,
    history: list[dict[str, float]],
    test: EvalResult | EmbedResult | None,
    final: EvalResult | EmbedResult,
    best_epoch: int,
    seconds: float,
    skipped_steps: int,
    task: dict[str, str] | None = None,
) -> None:
    """``curves.png``, a classifier's ``confusion_matrix.png`` (test, else validation) and ``results.json``.

    ``task`` names a task other than classification and what picked its best epoch; its
    ``test`` holds that task's metrics (an embedding's: Recall@K and MAP@R).
    """
    from cnnkit.understand.figures import plot_confusion, plot_curves

    plot_curves(history, run_dir / "curves.png")
    if isinstance(final, EvalResult):
        title = "test confusion matrix" if test else "validation confusion matrix"
        plot_confusion(final.confusion, final.classes, run_dir / "confusion_matrix.png", title)
    results = {
        **(task or {}),
        "best_epoch": best_epoch,
        "seconds": seconds,
        "skipped_steps": skipped_steps,
        "test": test.to_dict() if test else None,
        "val": history[best_epoch - 1],
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))

"""Data made ready for training: loaded, scanned and reviewed, with class and sampling weights."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch

from cnnkit.config import TrainConfig
from cnnkit.data import load_data
from cnnkit.data.builtin import BUILTINS
from cnnkit.data.check import review_splits, scan_folder
from cnnkit.data.imageset import DataSplits
from cnnkit.errors import CnnkitError


def check_bad_share(splits: DataSplits, max_bad_share: float, run_dir: Path) -> None:
    """Abort with a summary when more than ``max_bad_share`` of the files could not be used."""
    total = len(splits.skipped) + len(splits.train) + len(splits.val) + len(splits.test)
    if not total or len(splits.skipped) / total <= max_bad_share:
        return
    reasons = Counter(item.reason.split(":")[0] for item in splits.skipped).most_common(3)
    raise CnnkitError(
        f"{len(splits.skipped)} of {total} files ({len(splits.skipped) / total:.1%}) in {splits.name} cannot be used, "
        f"over the --max-bad-share limit of {max_bad_share:.1%}; most common: "
        + "; ".join(f"{reason} ({count})" for reason, count in reasons)
        + f". Full list: {run_dir / 'skipped.csv'}. Fix or remove them, or raise --max-bad-share"
    )


def class_weights(
    labels: torch.Tensor, num_classes: int, rule: str = "balanced", device: torch.device | str = "cpu"
) -> torch.Tensor | None:
    """Loss weights (K,) inversely proportional to class frequency (averaging 1 per image); None for ``none``."""
    if rule == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
    return (len(labels) / (num_classes * counts)).to(device)


def sampling_weights(labels: torch.Tensor, sampler: str = "balanced") -> torch.Tensor | None:
    """Per-image weights (N,) that draw every class equally often; None for the plain ``shuffle``."""
    if sampler == "shuffle":
        return None
    return 1.0 / torch.bincount(labels).double()[labels]


def prepare_data(config: TrainConfig, say: Callable[[str], None]) -> DataSplits:
    """Load the data, scan an image folder (cached), then review the splits; print what was found.

    The scan here reads and hashes every file but does not decode it: loading a folder
    decodes each file once into the image cache and reports the files that fail.
    """
    data = config.data
    splits = load_data(
        data,
        config.img_size,
        config.channels,
        config.resize,
        config.val_split,
        config.test_split,
        config.data_dir,
        config.workers,
    )
    folder = data not in BUILTINS and Path(data).is_dir()
    scan = scan_folder(data, workers=config.workers, decode=False) if folder else None
    splits = review_splits(splits, scan)
    if scan is not None:
        say(f"checked {scan.files} image files: {len(splits.skipped)} bad, {len(scan.details)} warning(s)")
    for warning in splits.warnings:
        say(f"warning: {warning}")
    if splits.skipped:
        say(
            f"warning: skipped {len(splits.skipped)} unreadable file(s); first: {splits.skipped[0].path} "
            f"({splits.skipped[0].reason}); the run folder's skipped.csv lists them all"
        )
    if len(splits.train) == 0:
        raise CnnkitError(f"{splits.name}: no readable training images")
    return splits

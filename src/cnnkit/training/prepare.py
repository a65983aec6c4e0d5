"""Data made ready for training: loaded, scanned and reviewed, with class and sampling weights.

:class:`Prepared` is what follows from the data (preprocessing, architecture, augmentation);
``fit.prepare`` makes it for images, :func:`prepare_series` for time series, :func:`prepare_audio` for audio.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from cnnkit.config import SERIES_EPOCHS, SERIES_STEPS, SERIES_TRAINING, TrainConfig, audio_defaults
from cnnkit.data import load_data
from cnnkit.data.audio import AudioSplits
from cnnkit.data.audio_augment import AudioBatchAugmentation, noise_bank, parse_audio_augmentation
from cnnkit.data.augment import Augmentation
from cnnkit.data.builtin import BUILTINS
from cnnkit.data.check import review_splits, scan_folder
from cnnkit.data.imageset import DataSplits
from cnnkit.data.series import SeriesSplits, is_series
from cnnkit.data.series_augment import SeriesAugmentation, parse_series_augmentation
from cnnkit.data.speech import clip_format, is_audio, load_audio
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, ModelSpec, Preprocessing, SeriesPreprocessing
from cnnkit.models import kwargs_for_data
from cnnkit.training.resume import SavedState

FEW_VALIDATION_ITEMS = 10  # a series validation carve smaller than this cannot pick the best epoch


@dataclass
class Prepared:
    """The data and what follows from it: preprocessing, architecture, augmentation and test-time flip."""

    splits: DataSplits | SeriesSplits | AudioSplits
    preprocessing: Preprocessing | SeriesPreprocessing | AudioPreprocessing
    spec: ModelSpec
    pretrained: bool
    augment: Augmentation | AudioBatchAugmentation | SeriesAugmentation | None
    tta: str


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


def prepare_data(config: TrainConfig, say: Callable[[str], None]) -> DataSplits | SeriesSplits:
    """Load the data, scan an image folder (cached), then review the splits; print what was found.

    The scan here reads and hashes every file but does not decode it: loading a folder
    decodes each file once into the image cache and reports the files that fail. Time
    series are checked as they are read (a bad row is an error), so only their warnings are said.
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
        config.series_normalize,
    )
    series = isinstance(splits, SeriesSplits)  # read and checked row by row: nothing to scan or review
    folder = not series and data not in BUILTINS and Path(data).is_dir()
    scan = scan_folder(data, workers=config.workers, decode=False) if folder else None
    splits = splits if series else review_splits(splits, scan)
    if scan is not None:
        say(f"checked {scan.files} image files: {len(splits.skipped)} bad, {len(scan.details)} warning(s)")
    return report_problems(splits, say)


def report_problems(
    splits: DataSplits | SeriesSplits | AudioSplits, say: Callable[[str], None]
) -> DataSplits | SeriesSplits | AudioSplits:
    """Say the warnings and the skipped files of loaded data; refuse data with nothing to train on."""
    for warning in splits.warnings:
        say(f"warning: {warning}")
    if splits.skipped:
        say(
            f"warning: skipped {len(splits.skipped)} unreadable file(s); first: {splits.skipped[0].path} "
            f"({splits.skipped[0].reason}); the run folder's skipped.csv lists them all"
        )
    if len(splits.train) == 0:
        items = "clips" if isinstance(splits, AudioSplits) else "images"
        raise CnnkitError(f"{splits.name}: no readable training {items}")
    return splits


def data_modality(data: str) -> str:
    """``series`` for time series (a TRAIN/TEST pair, CSV, X.npy), ``audio`` for a speech built-in or WAV class
    folders, else ``image``; lists folders but reads no file."""
    if data in BUILTINS:
        return "image"
    if is_series(data):
        return "series"
    return "audio" if is_audio(data) else "image"


def prepare_series(
    config: TrainConfig,
    saved: SavedState | None,
    say: Callable[..., None],
    model_name: str,
    model_kwargs: dict,
    val_split_given: bool = False,
) -> Prepared:
    """Time series, read as stored (z-normalised with ``series_normalize``): series augmentation, no image one."""
    _refuse_image_flags(config, "time series", augment_ok=True)
    augment = parse_series_augmentation(config.augment)  # refuses an image list before any file is read
    splits = prepare_data(config, say)
    if saved is None:  # a resumed run trains on the split it recorded
        splits = series_validation(splits, config, val_split_given, say)
    preprocessing = SeriesPreprocessing(splits.channels, splits.length, config.series_normalize)
    model_kwargs = builder_kwargs(saved, model_name, model_kwargs, len(splits.train))
    spec = ModelSpec(model_name, len(splits.classes), splits.channels, splits.length, model_kwargs)
    return Prepared(splits, preprocessing, spec, False, augment, "none")


def series_validation(splits: SeriesSplits, config: TrainConfig, given: bool, say: Callable[..., None]) -> SeriesSplits:
    """The splits a series run trains on: none held out for validation where the carve is too small to pick an epoch.

    The validation split picks the best epoch. ArrowHead's 10% is 3 series, and their accuracy
    sat at 2 of 3 for all 200 epochs, so the tie-break by their loss kept epochs 2, 3 and 48 in
    three of five seeds (TEST 56-86% by seed, mean 69.1%). Below :data:`FEW_VALIDATION_ITEMS`
    a run that did not choose ``--val-split`` trains on all of TRAIN and keeps the epoch of
    lowest training loss, as Wang et al. 2017 (the published FCN/ResNet figures) did; one that
    chose it keeps it, with a warning.
    """
    carved = len(splits.val)
    if not 0 < carved < FEW_VALIDATION_ITEMS:
        return splits
    if given:
        say(
            f"warning: validation holds only {carved} series, too few to tell epochs apart (another seed may "
            f"keep a very different one); --val-split 0 trains on all and keeps the lowest training loss"
        )
        return splits
    whole = prepare_data(replace(config, val_split=0.0), silent)  # read again: the same rows in the same order
    say(
        f"note: {config.val_split:.0%} of TRAIN would be {carved} validation series, too few to tell epochs apart: "
        f"training on all {len(whole.train)} and keeping the epoch of lowest training loss (--val-split sets a share)"
    )
    return whole


def silent(*_: Any) -> None:
    """A ``say`` that says nothing: quiet runs, and a second read whose findings were already said."""


def _refuse_image_flags(config: TrainConfig, kind: str, augment_ok: bool) -> None:
    """Refuse the image-only flags a run on ``kind`` data was given, in one line."""
    image_only = {
        "task": config.task != "classify",
        "pretrained": config.pretrained,
        "finetune": config.finetune,
        "weights": config.weights is not None,
        "img_size": config.img_size is not None,
        "channels": config.channels is not None,
        "augment": not augment_ok and config.augment not in ("auto", "none"),
        "tta": config.tta == "flip",
    }
    if given := [f"--{key.replace('_', '-')}" for key, value in image_only.items() if value]:
        raise CnnkitError(
            f"{', '.join(given)}: not for {kind} (--data {config.data}), which train to classify, "
            "without image augmentation or flips; leave them out"
        )


def prepare_audio(
    config: TrainConfig, saved: SavedState | None, say: Callable[..., None], model_name: str, model_kwargs: dict
) -> Prepared:
    """Audio clips, decoded by one rule (rate, length): waveform augmentation and SpecAugment, no image ones."""
    _refuse_image_flags(config, "audio", augment_ok=True)
    if config.series_normalize:
        raise CnnkitError(f"--series-normalize is for time series, and --data {config.data} holds audio; leave it out")
    if config.devices > 1:
        raise CnnkitError("audio trains in one process so far (its augmentation draws per batch); leave out --devices")
    parse_audio_augmentation(config.augment)  # refuses an image list before any file is decoded
    audio_format = clip_format(config.data, config.sample_rate, config.clip_seconds)
    # a new run records its share (audio_training); a resumed run without one predates the background class
    share = 0.0 if saved else audio_defaults(config.keywords)["background"]  # keywords: none, _silence_ is theirs
    background = config.background if config.background is not None else share
    splits = load_audio(
        config.data, audio_format, config.split_by, config.fold, config.val_split, config.test_split,
        config.data_dir, config.workers, background, config.keywords,
    )  # fmt: skip
    report_problems(splits, say)
    rule = audio_format
    preprocessing = AudioPreprocessing(rule.sample_rate, rule.clip_samples, rule.pad, rule.crop)
    # the front end's rate is the clips' (models/kws.py sizes its windows by it); a resumed run keeps its own
    rate = {"sample_rate": audio_format.sample_rate}
    model_kwargs = saved.spec.kwargs if saved is not None else {**rate, **model_kwargs}
    spec = ModelSpec(model_name, len(splits.classes), 1, audio_format.clip_samples, model_kwargs)
    augmentation = parse_audio_augmentation(config.augment, background=bool(splits.noise))  # auto: by the data
    augment = augmentation and AudioBatchAugmentation(augmentation, noise_bank(splits.noise))
    return Prepared(splits, preprocessing, spec, False, augment, "none")


def audio_training(config: TrainConfig, data: Prepared, saved: SavedState | None, given: set[str]) -> TrainConfig:
    """A new audio run's epochs, batch size and lr where ``given`` leaves them to cnnkit (``config.AUDIO_TRAINING``)."""
    if saved is not None or data.preprocessing.modality != "audio":
        return config
    return replace(config, **{key: value for key, value in audio_defaults(config.keywords).items() if key not in given})


def given_keys(config: TrainConfig | None, overrides: dict[str, Any]) -> set[str]:
    """The keys a caller set: its overrides, and those its config changes from the defaults."""
    defaults = TrainConfig().to_dict()
    changed = {key for key, value in config.to_dict().items() if value != defaults[key]} if config else set()
    return set(overrides) | changed


def series_training(config: TrainConfig, data: Prepared, saved: SavedState | None, given: set[str]) -> TrainConfig:
    """A new series run's batch size, lr and epochs, where ``given`` leaves them to cnnkit (``config.SERIES_*``).

    Image runs and resumed runs (which keep what they recorded) come back unchanged.
    """
    if saved is not None or data.preprocessing.modality != "series":
        return config
    if not len(data.splits.val) and "val_split" not in given:  # none carved (series_validation): recorded so
        config = replace(config, val_split=0.0)
    settled = series_settings(len(data.splits.train))
    return replace(config, **{key: value for key, value in settled.items() if key not in given})


def series_settings(train_count: int) -> dict[str, Any]:
    """cnnkit's batch size, lr and epochs for ``train_count`` series: what ``train`` and ``compare`` both use.

    The epochs are those batch 16 would take, whatever the batch: a smaller batch takes more
    steps over the same series.
    """
    epochs = series_epochs(train_count, SERIES_TRAINING["batch_size"])
    return {**SERIES_TRAINING, "batch_size": series_batch_size(train_count), "epochs": epochs}


def series_batch_size(train_count: int) -> int:
    """A tenth of the training series, 2 to ``SERIES_TRAINING['batch_size']`` (Wang et al.'s ``min(n/10, 16)``).

    At least 2: batch norm cannot train on one series (``training.loop.check_batch_size``).
    """
    return min(SERIES_TRAINING["batch_size"], max(2, math.ceil(train_count / 10)))


def series_epochs(train_count: int, batch_size: int) -> int:
    """The epochs making about ``SERIES_STEPS`` steps, within ``SERIES_EPOCHS``: sets of 30 or 300 series both learn."""
    steps_per_epoch = math.ceil(train_count / batch_size)
    return min(SERIES_EPOCHS[1], max(SERIES_EPOCHS[0], round(SERIES_STEPS / steps_per_epoch)))


def builder_kwargs(saved: SavedState | None, model_name: str, given: dict, train_count: int) -> dict[str, Any]:
    """The builder arguments: a resumed run's own, else those given, else those its training-set size suggests."""
    if saved is not None:
        return saved.spec.kwargs
    return given or kwargs_for_data(model_name, train_count)

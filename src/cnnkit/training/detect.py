"""Detection training as a page of phase calls: settings, data, model, run directory, epochs, final test, summary.

``cnnkit train --task detect`` (and ``cnnkit.train(task="detect")``) reads an annotated
folder (:func:`cnnkit.data.annotations.load_detection`: COCO, YOLO or VOC), decodes it
through the image cache at the model input size, trains a registered detector with
box-aware augmentation and picks the best epoch by validation mAP. The run directory
holds what a classification run's does (``config.yaml``, ``split.json``, ``skipped.csv``,
``environment.json``, ``metrics.csv``, ``steps.csv``, ``best``/``last.safetensors``,
``state.safetensors``), with ``results.json`` holding the test split's COCO mAP, mAP@0.5
and per-class AP, and ``curves.png`` the loss parts and validation mAP per epoch.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import compute
from cnnkit.checkpoint import BEST, load_model
from cnnkit.compute import ComputeSettings
from cnnkit.config import TrainConfig
from cnnkit.data.annotations import load_detection
from cnnkit.data.box_augment import parse_box_augmentation
from cnnkit.data.boxset import decode_detection
from cnnkit.data.loader import channel_stats, num_batches
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import ModelSpec, create_model, list_models, model_entry
from cnnkit.models.pretrained import pretrained_preprocessing
from cnnkit.rundir import new_run_dir
from cnnkit.safeload import read_header
from cnnkit.tasks.detect import DEFAULT_BATCH_SIZE, DEFAULT_DETECTOR, DEFAULT_IMG_SIZE
from cnnkit.tasks.detect.evaluate import evaluate_boxes
from cnnkit.tasks.detect.metrics import DetectionMetrics
from cnnkit.tasks.detect.report import plot_detection_curves, write_split_figures
from cnnkit.training import runlog
from cnnkit.training.detect_session import DetectionData, DetectionSession, train_detection_epochs
from cnnkit.training.loop import StepSettings, check_batch_size
from cnnkit.training.optim import Optimisation
from cnnkit.training.prepare import check_bad_share, given_keys, silent
from cnnkit.training.resume import STATE, Progress, SavedState, truncate_logs
from cnnkit.training.runlog import Run
from cnnkit.training.session import build_schedule


def is_detection(config: TrainConfig | None, resume: str | Path | None, overrides: dict[str, Any]) -> bool:
    """Whether a ``fit`` call trains a detector: ``task="detect"`` asked for, or recorded by the run it resumes."""
    if resume is None:
        return overrides.get("task", config.task if config else "classify") == "detect"
    try:  # the header alone: the state's tensors are read once, by the training that follows
        _, metadata = read_header(Path(resume).expanduser() / STATE)
        return json.loads(metadata["cnnkit.state"])["config"]["task"] == "detect"
    except (CnnkitError, KeyError, ValueError, TypeError):
        return False  # classification's resume reports what is wrong with the state


def fit_detection(
    config: TrainConfig | None,
    resume: str | Path | None,
    overrides: dict[str, Any],
    verbose: bool,
    notify: Callable[..., None],
    resolve: Callable[..., tuple[TrainConfig, SavedState | None]],
    discard: Callable[[Path], None],
) -> Run:
    """Train a detector end to end and write its run directory (see the module docstring).

    Called by :func:`cnnkit.training.fit.fit` for ``task="detect"`` with its arguments and
    three of its functions, so that this module needs no import of the one that imports it:
    ``notify(event, **kwargs)`` runs fit's callbacks, ``resolve`` is ``resolve_config`` (a
    resumed run's own settings, else defaults, ``config`` and overrides), and
    ``discard(run_dir)`` removes a new run directory that failed before saving a state.
    """
    started = time.perf_counter()
    say = print if verbose else silent
    if resume is None:  # the task's defaults, which config.yaml records, where the caller left them
        given = given_keys(config, overrides)
        defaults = {"model": DEFAULT_DETECTOR, "batch_size": DEFAULT_BATCH_SIZE}
        overrides = {**{key: value for key, value in defaults.items() if key not in given}, **overrides}
    config, saved = resolve(config, resume, overrides)
    check_detection_config(config)
    device = compute.select_device(config.device)
    data = prepare_detection(config, saved, say)
    model, settings = build_detector(config, data, saved is None, device)
    run_dir = open_detection_run(config, data, saved, resume, device, settings, discard)
    try:
        say(describe(data, model, settings, run_dir))
        session = start_detection_session(config, data, model, settings, device, run_dir, saved, say)
        session.notify = notify
        notify("on_fit_start", run_dir=run_dir, config=config)
        interrupted = train_detection_epochs(session)
        test = None if interrupted else final_detection_test(session, started)
    except BaseException:
        if saved is None:
            discard(run_dir)
        raise
    run = summarize(session, test, interrupted, time.perf_counter() - started)
    notify("on_fit_end", run=run)
    return run


def check_detection_config(config: TrainConfig) -> None:
    """Refuse, before any data is read, settings that detection would otherwise ignore."""
    detectors = list_models(task="detect")
    if config.model not in detectors:
        raise CnnkitError(
            f"--model {config.model} is not a detector; --task detect trains one of: {', '.join(detectors)}"
        )
    unused = {
        "--finetune": config.finetune,
        "--weights": config.weights is not None,
        "--devices": config.devices > 1,
        "--class-weights": config.class_weights != "none",
        "--sampler": config.sampler != "shuffle",
        "--label-smoothing": config.label_smoothing > 0,
        "--tta": config.tta == "flip",
        "--series-normalize": getattr(config, "series_normalize", False),
    }
    if given := [flag for flag, used in unused.items() if used]:
        raise CnnkitError(
            f"{', '.join(given)}: not supported with --task detect yet (it trains every layer, on one process, "
            "with plain shuffling and no test-time flip); leave them out"
        )
    if config.pretrained and "pretrained_backbone" not in _builder_arguments(config.model):
        with_backbone = [name for name in detectors if "pretrained_backbone" in _builder_arguments(name)]
        raise CnnkitError(
            f"--pretrained: {config.model} has no pretrained backbone; leave it out, or choose one of "
            f"{', '.join(with_backbone)} (ImageNet-trained EfficientNet-Lite0 backbone)"
        )


def _builder_arguments(name: str) -> tuple[str, ...]:
    code = model_entry(name).builder.__code__
    return code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]


def prepare_detection(config: TrainConfig, saved: SavedState | None, say: Callable[..., None]) -> DetectionData:
    """Read the annotations, report what was skipped, decode the images; fix the architecture and augmentation."""
    splits = load_detection(config.data, config.val_split, config.test_split, config.workers)
    img_size = config.img_size or DEFAULT_IMG_SIZE
    channels = config.channels or (3 if config.pretrained else None)
    decoded = decode_detection(splits, img_size, channels, config.resize, config.workers or os.cpu_count() or 1)
    for warning in decoded.warnings:
        say(f"warning: {warning}")
    if decoded.skipped:
        first = decoded.skipped[0]
        say(
            f"warning: skipped {len(decoded.skipped)} annotation(s) or image(s); first: {first.path}: {first.reason}; "
            "the run folder's skipped.csv lists them all"
        )
    train = decoded.train
    if not len(train):
        raise CnnkitError(
            f"{splits.name}: no readable training images; `cnnkit check {splits.name}` lists the problems"
        )
    if config.resize == "crop" and (cut := sum(item.size[0] != item.size[1] for item in train.items)):
        say(
            f"note: {cut} training image(s) are not square and --resize crop cuts their longer side: boxes there "
            "are clipped or dropped; --resize pad keeps every box"
        )
    kwargs = saved.spec.kwargs if saved is not None else {}
    spec = ModelSpec(config.model, len(decoded.classes), train.images.shape[1], img_size, kwargs)
    preprocessing = Preprocessing(img_size, spec.in_channels, (0.0,), (1.0,), config.resize)  # stats: build_detector
    return DetectionData(decoded, preprocessing, spec, parse_box_augmentation(config.augment))


def build_detector(
    config: TrainConfig, data: DetectionData, fresh: bool, device: torch.device
) -> tuple[nn.Module, ComputeSettings]:
    """The seeded detector on its device, and its input's preprocessing: ImageNet's with a pretrained backbone.

    ``pretrained_backbone`` is a training-time choice, not a builder argument the spec
    records: a checkpoint rebuilds the architecture and loads its own trained weights.
    """
    spec = data.spec
    torch.manual_seed(config.seed)
    pretrained = {"pretrained_backbone": True} if config.pretrained and fresh else {}
    model = create_model(spec.name, spec.num_classes, spec.in_channels, spec.img_size, **spec.kwargs, **pretrained)
    if config.pretrained:
        reference = pretrained_preprocessing(model.backbone, spec.img_size, spec.in_channels)
        data.preprocessing = replace(reference, resize=config.resize)
    else:
        mean, std = channel_stats(data.splits.train.index_set())
        data.preprocessing = replace(data.preprocessing, mean=mean, std=std)
    check_batch_size(config.batch_size, model, spec.name)
    shape = (spec.in_channels, spec.img_size, spec.img_size)
    settings = compute.resolve(device, config.precision, config.memory_format, config.compile, model, shape)
    return compute.prepare_model(model, settings), settings


def open_detection_run(
    config: TrainConfig,
    data: DetectionData,
    saved: SavedState | None,
    resume: str | Path | None,
    device: torch.device,
    settings: ComputeSettings,
    discard: Callable[[Path], None],
) -> Path:
    """A new run directory with the split and skipped files, or the resumed one checked against the data."""
    splits = data.splits
    if saved is None:
        run_dir = new_run_dir(config.out, config.name, "train")
        runlog.write_data_records(run_dir, splits)
        try:  # unreadable image files only: a bad annotation is skipped and named, the rest trained
            check_bad_share(replace(splits, skipped=splits.unreadable), config.max_bad_share, run_dir)
        except CnnkitError:
            discard(run_dir)
            raise
    else:
        run_dir = Path(resume).expanduser()
        saved.check_spec(data.spec, splits.classes, runlog.check_same_split(run_dir, splits))
    config.save(run_dir / "config.yaml")
    augment = data.augment and data.augment.to_dict()
    runlog.write_environment(run_dir, config, device, {**settings.to_dict(), "augment": augment})
    return run_dir


def start_detection_session(
    config: TrainConfig,
    data: DetectionData,
    model: nn.Module,
    settings: ComputeSettings,
    device: torch.device,
    run_dir: Path,
    saved: SavedState | None,
    say: Callable[..., None],
) -> DetectionSession:
    """Progress, optimizer, generator and step settings at the first step to run; a saved state is loaded back."""
    progress = saved.progress if saved is not None else Progress(cycles=[[1, config.epochs]])
    if progress.cycles[-1][1] < config.epochs:  # a resumed run extended with more epochs: one more cycle
        progress.cycles.append([progress.cycles[-1][1] + 1, config.epochs])
    steps = StepSettings(
        config.batch_size, config.clip_grad_norm, skip_nonfinite=config.nonfinite == "skip", compute=settings
    )
    generator = torch.Generator().manual_seed(config.seed)
    first_epoch = min(progress.epoch + 1, config.epochs)
    steps_per_epoch = num_batches(data.splits.train.index_set(), config.batch_size)
    optimizer, scheduler = build_schedule(model, config, progress, first_epoch, steps_per_epoch)
    optimisation = Optimisation(optimizer, scheduler, compute.grad_scaler(settings))
    session = DetectionSession(
        config=config, data=data, model=model, device=device, run_dir=run_dir, say=say, progress=progress,
        optimisation=optimisation, steps=steps, generator=generator, steps_per_epoch=steps_per_epoch,
        first_epoch=first_epoch,
    )  # fmt: skip
    if saved is not None:
        new_cycle = first_epoch > 1 and progress.cycle(first_epoch)[0] == first_epoch and not progress.tally.batches
        kept_scheduler = None if new_cycle else scheduler
        session.best_state = saved.restore(model, optimizer, kept_scheduler, generator, optimisation.scaler)
        session.order = saved.order_generator()
        truncate_logs(run_dir, progress)
        say(f"resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step}")
    return session


def describe(data: DetectionData, model: nn.Module, settings: ComputeSettings, run_dir: Path) -> str:
    splits, spec = data.splits, data.spec
    boxes = sum(int((~item.crowd).sum()) for item in splits.train.items)  # what it learns from: crowds left out
    parameters = sum(p.numel() for p in model.parameters())
    augment = data.augment.describe() if data.augment else "none"
    return (
        f"{splits.name}: {splits.format} annotations, {len(splits.train)} train / {len(splits.val)} val / "
        f"{len(splits.test)} test images ({splits.split_rule or 'split folders'}), {boxes} training boxes in "
        f"{len(splits.classes)} classes, {spec.in_channels}x{spec.img_size}x{spec.img_size} input "
        f"(--resize {data.preprocessing.resize})\n"
        f"{spec.name}: {parameters / 1e6:.2f}M parameters on {settings.device} ({settings.describe()}); "
        f"augment: {augment}; writing {run_dir}"
    )


def final_detection_test(session: DetectionSession, started: float) -> DetectionMetrics | None:
    """The best checkpoint, reloaded as ``evaluate`` loads it, on the test split; writes results.json and figures."""
    progress, data, run_dir = session.progress, session.data, session.run_dir
    plot_detection_curves(progress.history, run_dir / "curves.png")
    if progress.best_epoch is None:
        return None
    model, _ = load_model(run_dir / BEST, session.device)
    prep, device, test_split, val_split = data.preprocessing, session.device, data.splits.test, data.splits.val
    test = evaluate_boxes(model, test_split, prep, device) if len(test_split) else None
    if test or len(val_split):
        reported, split = (test_split, "test") if test else (val_split, "validation")
        metrics = test or evaluate_boxes(model, val_split, prep, device)
        write_split_figures(model, reported, metrics, prep, device, run_dir, split)
    results = {
        "task": "detect",
        "selected_by": "val_map (val_map50 breaks ties)",
        "best_epoch": progress.best_epoch,
        "seconds": time.perf_counter() - started,
        "skipped_steps": progress.skipped_steps,
        "test_images": len(test_split),
        "test": test.to_dict() if test else None,
        "val": progress.history[progress.best_epoch - 1],
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return test


def summarize(session: DetectionSession, test: DetectionMetrics | None, interrupted: bool, seconds: float) -> Run:
    """Say how the run ended and return it."""
    config, progress, say, run_dir = session.config, session.progress, session.say, session.run_dir
    if progress.skipped_steps:
        say(f"warning: skipped {progress.skipped_steps} step(s) with a NaN or infinite loss or gradient (steps.csv)")
    if test is not None:
        say(
            f"test mAP {test.map:.3f}, mAP@0.5 {test.map50:.3f} on {len(session.data.splits.test)} images "
            f"(best epoch {progress.best_epoch}) in {seconds:.1f}s; run saved to {run_dir}"
        )
    elif progress.best_epoch is None and not interrupted:
        raise CnnkitError(f"training diverged: every epoch ended with a NaN loss; lower --lr (now {config.lr})")
    elif not interrupted:
        say(f"no test images (see results.json for the best validation epoch); run saved to {run_dir}")
    history = progress.history
    return Run(run_dir, config, session.data.splits.classes, history, test, progress.best_epoch, seconds, interrupted)

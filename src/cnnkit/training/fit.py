"""Training as a page of phase calls: settings, data, model, run directory, epochs, final test, summary.

:func:`fit` reads top to bottom like nanoGPT's loop; each phase is a function below it.
Extension points are events, not subclasses (Lightning Fabric's ``call``): any object in
``callbacks`` may have ``on_fit_start``, ``on_epoch_end``, ``on_checkpoint`` or
``on_fit_end``, and :func:`call` runs those it has.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit import compute
from cnnkit.compute import ComputeSettings
from cnnkit.config import DEFAULT_MODELS, TrainConfig
from cnnkit.data.augment import parse_augmentation
from cnnkit.data.loader import channel_stats
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import ModelSpec, build, list_models, model_entry
from cnnkit.models.embedding import EMBED_DIM, EMBEDDING, TEMPERATURE, EmbeddingNetwork
from cnnkit.models.pretrained import create_pretrained, pretrained_preprocessing
from cnnkit.models.spec import resolve_model
from cnnkit.rundir import new_run_dir
from cnnkit.tasks import Task
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.tasks.classify.metrics import EvalResult
from cnnkit.tasks.classify.tta import resolve_tta
from cnnkit.tasks.embed import EmbedTask
from cnnkit.tasks.embed.evaluate import EmbedResult
from cnnkit.tasks.embed.holdout import held_out_classes, hold_out
from cnnkit.training import runlog
from cnnkit.training.detect import fit_detection, is_detection
from cnnkit.training.distributed import World
from cnnkit.training.generate import fit_generation, is_generation
from cnnkit.training.loop import check_batch_size
from cnnkit.training.prepare import (
    Prepared,
    audio_training,
    builder_kwargs,
    check_bad_share,
    class_weights,
    data_modality,
    given_keys,
    prepare_audio,
    prepare_data,
    prepare_series,
    series_training,
    silent,
)
from cnnkit.training.resume import STATE, SavedState, read_state, resume_config
from cnnkit.training.runlog import Run
from cnnkit.training.session import Session, start_session, train_epochs

AUDIO_KEYS = ("split_by", "fold", "sample_rate", "clip_seconds", "background")  # keys only audio data reads


def call(callbacks: Iterable[Any], event: str, **kwargs: Any) -> None:
    """Run ``callback.<event>(**kwargs)`` on each callback that has such a method, in order."""
    for callback in callbacks:
        method = getattr(callback, event, None)
        if callable(method):
            method(**kwargs)


def fit(
    config: TrainConfig | None = None,
    callbacks: Iterable[Any] = (),
    verbose: bool = True,
    resume: str | Path | None = None,
    **overrides: Any,
) -> Run:
    """Train a model end to end and write its run directory.

    The run directory's files are listed in the README ("Runs"): config, split, per-epoch and
    per-step metrics, best/last checkpoints, the resumable state, plots and the report.
    It is created once the data and model are ready; a run that fails before it saved a
    resumable state is removed again (only ``skipped.csv``, naming unreadable files, stays).
    Ctrl-C finishes the running step, saves the state and ``last.safetensors``, and stops.

    Args:
        config: Settings; defaults to :class:`TrainConfig` defaults.
        callbacks: Objects with any of these methods, all called with keyword arguments:
            ``on_fit_start(run_dir, config)`` before the first step;
            ``on_epoch_end(run_dir, row)`` after each epoch, ``row`` being its metrics
            (the epoch's state is saved by then);
            ``on_checkpoint(run_dir, path, epoch, step)`` after each write of
            ``last``, ``best`` or the resumable state, ``epoch`` being the epoch in progress;
            ``on_fit_end(run)`` with the :class:`Run` about to be returned.
        verbose: Print progress and a summary. Defaults to True.
        resume: A run directory to continue from its ``state.safetensors``, mid-epoch
            included; ``epochs`` may grow to extend a finished run. Defaults to None.
        **overrides: Config keys to change, e.g. ``epochs=5``.

    Example:
        >>> run = fit(data="digits", epochs=3, verbose=False)
        >>> run.test.accuracy > 0.9
        True
    """
    started = time.perf_counter()
    world = World.from_environment()  # one process, or a torchrun worker (training/distributed.py)
    say = print if verbose and world.leader else silent
    callbacks = list(callbacks)
    if is_detection(config, resume, overrides):  # boxes, not labels: its own data, epoch, metric
        lent = (partial(call, callbacks), resolve_config, discard_unfinished)
        return fit_detection(config, resume, overrides, verbose, *lent)
    if is_generation(config, resume, overrides):  # two networks, judged by a classifier that fit itself trains
        lent = (partial(call, callbacks), resolve_config, discard_unfinished, open_run_dir, fit)
        return fit_generation(config, resume, overrides, verbose, *lent)
    resume = resume or world.restarted_run(overrides.get("out", (config or TrainConfig()).out))
    given = given_keys(config, overrides)
    config, saved = resolve_config(config, resume, world.claim(overrides))
    device = world.start(config)
    data = prepare(config, saved, say, given)
    config = series_training(config, data, saved, given)  # small batches, a budget of steps, unless given
    config = audio_training(config, data, saved, given)
    model, settings = build_model(config, data, device)
    settings = world.agree(settings)
    if saved is not None and runlog.recorded_precision(Path(resume).expanduser()) == "fp32":
        # auto's bf16 fell back to fp32 earlier in this run: the resumed steps must be fp32 too
        settings = compute.fall_back(settings, "an earlier session of this run") or settings
    opened = open_run_dir(config, data, saved, resume, device, settings) if world.leader else None
    run_dir = Path(world.share(opened and str(opened)))  # rank 0 opens it; the other ranks learn where
    try:
        task = make_task(config, data, device)
        say(describe(data, model, settings, run_dir, config))
        session = start_session(
            config, data, task, model, settings, device, run_dir, saved, say, verbose and world.leader, world
        )
        session.on_checkpoint = partial(call, callbacks, "on_checkpoint", run_dir=run_dir)
        call(callbacks, "on_fit_start", run_dir=run_dir, config=config)
        interrupted = train_epochs(session, partial(call, callbacks, "on_epoch_end", run_dir=run_dir))
        test = None if interrupted or not world.leader else final_test(session, started)
        session.close()
    except BaseException:
        if saved is None and world.leader:
            discard_unfinished(run_dir)
        raise
    run = summarize(session, test, interrupted, time.perf_counter() - started)
    call(callbacks, "on_fit_end", run=run)
    return run


def resolve_config(
    config: TrainConfig | None, resume: str | Path | None, overrides: dict[str, Any]
) -> tuple[TrainConfig, SavedState | None]:
    """The run's settings: a resumed run's own (only a few keys may change), else defaults, ``config``, overrides."""
    saved = read_state(resume) if resume is not None else None
    if saved is not None:
        config = resume_config(saved, {**(config.to_dict() if config else {}), **overrides})
    else:
        config = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides}, "train arguments")
    if config.model is None:  # the default architecture for the kind of data; config.yaml records which
        config = replace(config, model=DEFAULT_MODELS[data_modality(config.data)])
    config.check()
    return config, saved


def prepare(
    config: TrainConfig, saved: SavedState | None, say: Callable[..., None], given: Set[str] = frozenset()
) -> Prepared:
    """Load the data, then fix the preprocessing (pretrained weights bring theirs) and the architecture.

    ``given``: the settings the caller chose (``prepare.given_keys``); the rest are cnnkit's to choose by the data.
    """
    model_name, model_kwargs = resolve_model(config.model)
    modality = data_modality(config.data)
    check_trainable(model_name, modality, config.data)
    if modality == "audio":
        return prepare_audio(config, saved, say, model_name, model_kwargs)
    if audio := [key for key in AUDIO_KEYS if getattr(config, key) is not None]:
        flags = ", ".join(f"--{key.replace('_', '-')}" for key in audio)
        holds = "time series" if modality == "series" else "images"
        raise CnnkitError(f"{flags}: for audio, and --data {config.data} holds {holds}; leave them out")
    if modality == "series":
        return prepare_series(config, saved, say, model_name, model_kwargs, "val_split" in given)
    if config.series_normalize:
        raise CnnkitError(f"--series-normalize is for time series, and --data {config.data} holds images; leave it out")
    pretrained = config.pretrained or config.finetune or config.weights is not None
    # ImageNet weights expect RGB at their own size unless told otherwise.
    reference = pretrained_preprocessing(model_name) if pretrained else None
    data_config = replace(
        config,
        img_size=config.img_size or (reference and reference.img_size),
        channels=config.channels or (reference and 3),
    )
    splits = prepare_data(data_config, say)
    if config.task == "embed":  # train and validate on the seen classes, test on the held-out ones
        splits = hold_out(splits, held_out_classes(splits.classes, config.held_out))
    _, channels, img_size, _ = splits.train.images.shape
    if pretrained:
        preprocessing = replace(pretrained_preprocessing(model_name, img_size, channels), resize=config.resize)
    else:
        mean, std = channel_stats(splits.train)
        preprocessing = Preprocessing(img_size, channels, mean, std, config.resize)
    model_kwargs = builder_kwargs(saved, model_name, model_kwargs, len(splits.train))
    if config.task == "embed":  # the backbone under a normalised-softmax head (models/embedding.py)
        model_kwargs = model_kwargs if saved is not None else embedding_kwargs(config, model_name, model_kwargs)
        model_name = "embedding"
    spec = ModelSpec(model_name, len(splits.classes), channels, img_size, model_kwargs)
    augment = parse_augmentation(config.augment, splits.name, img_size)
    return Prepared(splits, preprocessing, spec, pretrained, augment, resolve_tta(config.tta, augment))


def check_trainable(model_name: str, modality: str, data: str) -> None:
    """Refuse, before any data is read, a registered model built for another kind of input than ``data`` holds."""
    entry = model_entry(model_name)
    if entry.modality != modality:
        holds, choose = {
            "image": ("images", f"an image model such as {DEFAULT_MODELS['image']}"),
            "series": ("time series", ", ".join(list_models(modality="series"))),
            "audio": ("audio", ", ".join(list_models(modality="audio"))),
        }[modality]
        raise CnnkitError(
            f"--model {model_name} takes {entry.modality} input, and --data {data} holds {holds}; "
            f"choose {choose} (cnnkit models lists each model's input)"
        )
    if model_name == "embedding":  # with --task embed too: it is the head put around the backbone --model names
        raise CnnkitError(
            "--model embedding is what --task embed builds around a backbone; use --task embed --model convnet"
        )


def embedding_kwargs(config: TrainConfig, backbone: str, backbone_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``embedding`` model's builder arguments, the temperature included so a checkpoint rebuilds as trained."""
    return {
        "backbone": backbone,
        "backbone_kwargs": backbone_kwargs,
        "embed_dim": config.embed_dim or EMBED_DIM,
        "temperature": TEMPERATURE,
        "embedding": EMBEDDING,
    }


def build_model(config: TrainConfig, data: Prepared, device: torch.device) -> tuple[nn.Module, ComputeSettings]:
    """The seeded model on its device, in the precision and memory format chosen for it."""
    spec = data.spec
    torch.manual_seed(config.seed)
    if data.pretrained and spec.name == "embedding":  # ImageNet weights for the backbone, a fresh head
        head = spec.kwargs
        body = create_pretrained(head["backbone"], spec.num_classes, spec.in_channels, spec.img_size, config.weights)
        model = EmbeddingNetwork(
            body, spec.num_classes, head["embed_dim"], head["temperature"], head.get("embedding", "projection")
        )
    elif data.pretrained:
        model = create_pretrained(spec.name, spec.num_classes, spec.in_channels, spec.img_size, config.weights)
    else:
        model = build(spec)
    check_batch_size(config.batch_size, model, spec.name)
    shape = data.preprocessing.input_shape  # auto checks the model for bf16 hazards at this input
    layout = config.memory_format if len(shape) == 3 else "contiguous"  # channels_last is a 4-D tensors' layout
    settings = compute.resolve(device, config.precision, layout, config.compile, model, shape)
    return compute.prepare_model(model, settings), settings


def open_run_dir(
    config: TrainConfig,
    data: Prepared,
    saved: SavedState | None,
    resume: str | Path | None,
    device: torch.device,
    settings: ComputeSettings,
) -> Path:
    """A new run directory with the split and skipped files, or the resumed one checked against the data."""
    splits = data.splits
    if saved is None:
        run_dir = new_run_dir(config.out, config.name, "train")
        runlog.write_data_records(run_dir, splits)
        try:
            check_bad_share(splits, config.max_bad_share, run_dir)
        except CnnkitError:
            discard_unfinished(run_dir)
            raise
    else:
        run_dir = Path(resume).expanduser()
        saved.check_spec(data.spec, splits.classes, runlog.check_same_split(run_dir, splits))
    config.save(run_dir / "config.yaml")
    choices = {**settings.to_dict(), "augment": data.augment and data.augment.to_dict(), "tta": data.tta}
    runlog.write_environment(run_dir, config, device, choices)
    return run_dir


def discard_unfinished(run_dir: Path) -> None:
    """Remove a new run directory that holds no resumable state; keep only ``skipped.csv``, the list of files to fix."""
    if (run_dir / STATE).exists() or not run_dir.is_dir():
        return
    for path in run_dir.iterdir():
        if path.name != "skipped.csv":
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    if not any(run_dir.iterdir()):
        run_dir.rmdir()


def make_task(config: TrainConfig, data: Prepared, device: torch.device) -> Task:
    """What the network learns (``--task``): its classes (an embed run's seen ones), weighted by ``--class-weights``."""
    splits = data.splits
    weights = class_weights(splits.train.labels, len(splits.classes), config.class_weights, device)
    task = EmbedTask if config.task == "embed" else ClassifyTask
    return task(splits.classes, weights, config.label_smoothing)


def describe(data: Prepared, model: nn.Module, settings: ComputeSettings, run_dir: Path, config: TrainConfig) -> str:
    """The data, the model and how it trains, in two lines: a series run's batch and epochs follow its set's size."""
    parameters = sum(p.numel() for p in model.parameters())
    augment = data.augment.describe() if data.augment else "none"
    if data.preprocessing.modality == "series":
        augment = f"{augment} (series; image augmentation is off)"
    elif data.preprocessing.modality == "audio":  # waveform augmentation and SpecAugment; never an image one
        rule = data.preprocessing
        clips = f"clips of {rule.clip_samples / rule.sample_rate:g} s at {rule.sample_rate} Hz"
        augment = f"{augment if data.augment else 'none'} (audio; image augmentation is off); {clips}"
    splits = data.splits
    held_out = splits.test.classes != splits.classes  # an embedding run tests on classes it does not train on
    return (
        f"{runlog.describe(splits)}{'; held out of training: ' + ', '.join(splits.test.classes) if held_out else ''}\n"
        f"{data.spec.name}: {parameters / 1e6:.2f}M parameters on {settings.device} "
        f"({settings.describe()}); {config.epochs} epochs of batch {config.batch_size} at lr {config.lr:g}; "
        f"augment: {augment}; writing {run_dir}"
    )


def final_test(session: Session, started: float) -> EvalResult | EmbedResult | None:
    """Evaluate the best weights on the test split (else validation), write results and the report; the test result.

    An embedding run's test split holds only its held-out classes, and its report is the
    retrieval report (:mod:`cnnkit.tasks.embed.report`).
    """
    if session.best_state is None:
        return None
    data, model, task = session.data, session.model, session.task
    splits, flip = data.splits, data.tta == "flip"
    model.load_state_dict(session.best_state)
    evaluate = task.evaluate
    test = evaluate(model, splits.test, data.preprocessing, session.device, tta=flip) if len(splits.test) else None
    final = test or evaluate(model, splits.val, data.preprocessing, session.device, tta=flip)
    progress, embed = session.progress, session.config.task == "embed"
    runlog.write_results(
        session.run_dir,
        progress.history,
        test,
        final,
        progress.best_epoch,
        time.perf_counter() - started,
        progress.skipped_steps,
        {"task": "embed", "selected_by": "val_recall@1 of the seen classes"} if embed else None,
    )
    reported = splits.test if len(splits.test) else splits.val
    if len(reported):
        from cnnkit.tasks.embed.report import write_retrieval_report
        from cnnkit.understand.report import write_report

        title = f"{session.config.model} on {splits.name}"
        write = write_retrieval_report if embed else write_report
        write(model, reported, data.preprocessing, session.device, session.run_dir / "report", title, tta=flip)
    return test


def summarize(session: Session, test: EvalResult | EmbedResult | None, interrupted: bool, seconds: float) -> Run:
    """Say how the run ended and return it; a run that never improved on NaN is an error, not a result."""
    config, progress, say = session.config, session.progress, session.say
    if progress.skipped_steps:
        say(f"warning: skipped {progress.skipped_steps} step(s) with a NaN or infinite loss or gradient (steps.csv)")
    flip = " with flip TTA" if session.data.tta == "flip" else ""
    items = {"series": "series", "audio": "clips"}.get(session.data.preprocessing.modality, "images")
    if isinstance(test, EmbedResult):
        say(
            f"held-out classes {', '.join(test.classes)}: {test.describe()}{flip} "
            f"(best epoch {progress.best_epoch} by val Recall@1 of the seen classes) in {seconds:.1f}s; "
            f"run saved to {session.run_dir}"
        )
    elif test is not None:
        say(
            f"test accuracy {test.accuracy:.2%}{flip} "
            f"on {test.count} {items} (best epoch {progress.best_epoch}) in {seconds:.1f}s; "
            f"run saved to {session.run_dir}"
        )
    elif progress.best_score is None and not interrupted:
        raise CnnkitError(f"training diverged: every epoch ended with a NaN loss; lower --lr (now {config.lr})")
    elif not interrupted:
        say(f"no test {items}; best val accuracy {progress.best_score[0]:.2%}; run saved to {session.run_dir}")
    classes = session.data.splits.classes
    return Run(session.run_dir, config, classes, progress.history, test, progress.best_epoch, seconds, interrupted)

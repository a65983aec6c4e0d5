"""GAN training as a page of phase calls: settings, data, model, run directory, judge, epochs, final figures, summary.

``cnnkit train --task generate`` (and ``cnnkit.train(task="generate")``) reads images the way
classification does (an image folder or a built-in, through the same image cache, split and
loader), trains a class-conditional GAN (``dcgan``, :mod:`cnnkit.models.gan`: hinge loss,
spectral norm, projection discriminator, conditional batch norm, EMA generator) and picks the
best epoch by a quality figure, not a loss: the lowest Fréchet distance between validation
images and generated ones on the features of the **judge**, a classifier trained first on the
same real training split (``RUN/judge/``, a classification run directory of its own).

The run directory holds a classification run's records (``config.yaml``, ``split.json``,
``skipped.csv``, ``environment.json``, ``metrics.csv``, ``best``/``last.safetensors``,
``state.safetensors``), a sample grid per epoch in ``samples/``, ``curves.png`` (losses and
quality per epoch), ``results.json`` (the best epoch's validation figures and the best
generator's on the test images) and ``judge/``.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from cnnkit import compute
from cnnkit.checkpoint import BEST, load_model
from cnnkit.compute import ComputeSettings
from cnnkit.config import TrainConfig
from cnnkit.data.builtin import BUILTINS
from cnnkit.data.folder import list_classes
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import ModelSpec, build, list_models
from cnnkit.models.gan import SIZES, ConditionalGAN
from cnnkit.safeload import read_header
from cnnkit.tasks.generate import (
    BETAS,
    D_LR_RATIO,
    DEFAULT_IMG_SIZE,
    DEFAULTS,
    IMG_SIZES,
    JUDGE_EPOCHS,
    JUDGE_MODEL,
    SELECTED_BY,
    default_epochs,
    default_width,
)
from cnnkit.training import runlog
from cnnkit.training.generate_epoch import build_gan_optimizer
from cnnkit.training.generate_session import GenerationData, GenerationSession, Judge, measure, train_generation_epochs
from cnnkit.training.loop import StepSettings
from cnnkit.training.optim import Optimisation
from cnnkit.training.prepare import data_modality, given_keys, prepare_data, silent
from cnnkit.training.resume import STATE, Progress, SavedState, truncate_logs
from cnnkit.training.runlog import Run

# Flags that mean nothing for a GAN (or are not supported with it yet), each with the values that mean "not given".
UNUSED = {
    "pretrained": (False,), "weights": (None,), "finetune": (False,), "freeze": (None,), "devices": (1,),
    "class_weights": ("none",), "sampler": ("shuffle",), "label_smoothing": (0.0,), "tta": ("auto", "none"),
    "compile": (False,), "augment": ("auto", "none"), "weight_decay": (0.0,), "series_normalize": (False,),
    "split_by": (None,), "fold": (None,), "sample_rate": (None,), "clip_seconds": (None,), "background": (None,),
    "keywords": (None,),
}  # fmt: skip


def is_generation(config: TrainConfig | None, resume: str | Path | None, overrides: dict[str, Any]) -> bool:
    """Whether a ``fit`` call trains a GAN: ``task="generate"`` asked for, or recorded by the run it resumes."""
    if resume is None:
        return overrides.get("task", config.task if config else "classify") == "generate"
    try:  # the header alone: the state's tensors are read once, by the training that follows
        _, metadata = read_header(Path(resume).expanduser() / STATE)
        return json.loads(metadata["cnnkit.state"])["config"]["task"] == "generate"
    except (CnnkitError, KeyError, ValueError, TypeError):
        return False  # classification's resume reports what is wrong with the state


def fit_generation(
    config: TrainConfig | None,
    resume: str | Path | None,
    overrides: dict[str, Any],
    verbose: bool,
    notify: Callable[..., None],
    resolve: Callable[..., tuple[TrainConfig, SavedState | None]],
    discard: Callable[[Path], None],
    open_run: Callable[..., Path],
    fit: Callable[..., Run],
) -> Run:
    """Train a class-conditional GAN end to end and write its run directory (see the module docstring).

    Called by :func:`cnnkit.training.fit.fit` for ``task="generate"`` with its arguments and
    five of its functions, so that this module needs no import of the one that imports it:
    ``notify(event, **kwargs)`` runs fit's callbacks, ``resolve`` is ``resolve_config``,
    ``discard(run_dir)`` removes a new run directory that failed before saving a state,
    ``open_run`` is ``open_run_dir`` (a new run directory, or the resumed one checked against
    the data), and ``fit`` itself trains the judge.
    """
    started = time.perf_counter()
    say = print if verbose else silent
    if resume is None:  # the task's defaults, which config.yaml records, where the caller left them
        given = given_keys(config, overrides)
        overrides = {**{key: value for key, value in DEFAULTS.items() if key not in given}, **overrides}
    config, saved = resolve(config, resume, overrides)
    check_generation_config(config)
    device = compute.select_device(config.device)
    data = prepare_generation(config, saved, say)
    if resume is None and "epochs" not in given:  # a small set gets enough steps (tasks/generate.MIN_STEPS)
        config = replace(config, epochs=default_epochs(len(data.splits.train), config.batch_size))
    model, settings = build_gan(config, data, device)
    if saved is not None and runlog.recorded_precision(Path(resume).expanduser()) == "fp32":
        settings = compute.fall_back(settings, "an earlier session of this run") or settings  # auto's bf16 fell back
    run_dir = open_run(config, data, saved, resume, device, settings)
    try:
        judge = train_judge(config, data, run_dir, device, fit, say)
        say(describe(data, model, settings, judge, run_dir))
        session = start_generation_session(config, data, model, judge, settings, device, run_dir, saved, say)
        session.notify = notify
        notify("on_fit_start", run_dir=run_dir, config=config)
        interrupted = train_generation_epochs(session)
        test = None if interrupted else final_generation_test(session, started)
    except BaseException:
        if saved is None:
            discard(run_dir)
        raise
    run = summarize(session, test, interrupted, time.perf_counter() - started)
    notify("on_fit_end", run=run)
    return run


def check_generation_config(config: TrainConfig) -> None:
    """Refuse, before any data is read, a model that is no generator, non-image data and flags a GAN ignores."""
    generators = list_models(task="generate")
    if config.model not in generators:
        raise CnnkitError(
            f"--model {config.model} is not a generator; --task generate trains one of: {', '.join(generators)}"
        )
    modality = data_modality(config.data)
    if modality != "image":
        holds = "time series" if modality == "series" else "audio"
        raise CnnkitError(f"--task generate trains on images, and --data {config.data} holds {holds}")
    if config.img_size is not None and config.img_size not in SIZES:
        raise CnnkitError(
            f"--img-size {config.img_size}: {config.model} makes images of side {', '.join(map(str, SIZES))} "
            "(a power of two); pick one of those, and the images are resized to it"
        )
    if given := [f"--{key.replace('_', '-')}" for key, unset in UNUSED.items() if getattr(config, key) not in unset]:
        raise CnnkitError(
            f"{', '.join(given)}: not used by --task generate (it trains both networks from scratch on images, on "
            "one process, with Adam, plain shuffling and no augmentation or test-time flip); leave them out"
        )
    if config.precision == "fp16":
        raise CnnkitError("--precision fp16: --task generate runs in fp32 or bf16; use --precision bf16 or auto")
    folder = Path(config.data).expanduser()
    if config.data not in BUILTINS and folder.is_dir():  # one class is a classifier's error too, said for a GAN
        classes, _ = list_classes(folder / "train" if (folder / "train").is_dir() else folder)
        if len(classes) == 1:
            raise CnnkitError(
                f"{config.data} has one class ({classes[0]}): a conditional model needs at least 2 classes, "
                "one subfolder of images each"
            )


def prepare_generation(config: TrainConfig, saved: SavedState | None, say: Callable[..., None]) -> GenerationData:
    """Load the images at the generator's size (the cache's one resize rule), and fix the architecture."""
    img_size = config.img_size or IMG_SIZES.get(config.data, DEFAULT_IMG_SIZE)
    splits = prepare_data(replace(config, img_size=img_size), say)
    _, channels, _, _ = splits.train.images.shape
    half = (0.5,) * channels
    preprocessing = Preprocessing(img_size, channels, half, half, config.resize)  # uint8 -> [-1, 1], tanh's range
    kwargs = saved.spec.kwargs if saved is not None else {"width": default_width(img_size)}
    spec = ModelSpec(config.model, len(splits.classes), channels, img_size, kwargs)
    return GenerationData(splits, preprocessing, spec)


def build_gan(
    config: TrainConfig, data: GenerationData, device: torch.device
) -> tuple[ConditionalGAN, ComputeSettings]:
    """The seeded GAN on its device, in the precision and memory format chosen for it.

    No bf16 hazard probe (:func:`cnnkit.compute.bf16_gradient_hazards`): no convolution of
    a dcgan strides past its input (the smallest map a stride-2 convolution reads is 8 px).
    fp16 would need a loss scaler per network; where ``auto`` picks it (a GPU without bf16), fp32.
    """
    torch.manual_seed(config.seed)
    model = build(data.spec)
    settings = compute.resolve(device, config.precision, config.memory_format, False)
    if settings.precision == "fp16":
        settings = replace(settings, precision="fp32", precision_note="auto: fp32, as fp16 would need two loss scalers")
    return compute.prepare_model(model, settings), settings


def train_judge(
    config: TrainConfig, data: GenerationData, run_dir: Path, device: torch.device, fit: Callable[..., Run], say
) -> Judge:
    """The judge, trained into ``RUN/judge/`` on the same split and input (a resumed run keeps its own).

    The split rule depends on the files alone (no seed), so the judge's ``split.json`` is the
    run's; a test checks it.
    """
    judge_dir = run_dir / "judge"
    if not (judge_dir / BEST).is_file():
        if judge_dir.exists():  # a judge stopped before its first checkpoint: start it again
            shutil.rmtree(judge_dir)
        say(f"training the judge ({JUDGE_MODEL}, {JUDGE_EPOCHS} epochs) on the real training images")
        prep = data.preprocessing
        run = fit(
            data=config.data, data_dir=config.data_dir, img_size=prep.img_size, channels=prep.channels,
            resize=config.resize, val_split=config.val_split, test_split=config.test_split, seed=config.seed,
            model=JUDGE_MODEL, epochs=JUDGE_EPOCHS, out=str(run_dir), name="judge", workers=config.workers,
            device=config.device, precision=config.precision, memory_format=config.memory_format,
            max_bad_share=config.max_bad_share, verbose=False,
        )  # fmt: skip
        if run.interrupted:
            raise KeyboardInterrupt
    model, info = load_model(judge_dir / BEST, device)
    results = json.loads((judge_dir / "results.json").read_text())
    accuracy = results["test"]["accuracy"] if results.get("test") else results["val"].get("val_acc")
    return Judge(model, info.preprocessing, accuracy)


def start_generation_session(
    config: TrainConfig,
    data: GenerationData,
    model: ConditionalGAN,
    judge: Judge,
    settings: ComputeSettings,
    device: torch.device,
    run_dir: Path,
    saved: SavedState | None,
    say: Callable[..., None],
) -> GenerationSession:
    """Progress, optimizer, generator and step settings at the first step to run; a saved state is loaded back."""
    progress = saved.progress if saved is not None else Progress(cycles=[[1, config.epochs]])
    if progress.cycles[-1][1] < config.epochs:  # an extended run: constant learning rates, so no new schedule
        progress.cycles.append([progress.cycles[-1][1] + 1, config.epochs])
    steps = StepSettings(config.batch_size, config.clip_grad_norm, config.nonfinite == "skip", compute=settings)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = build_gan_optimizer(model, config.lr, config.lr * D_LR_RATIO, BETAS)
    scheduler = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)  # constant, as in SNGAN
    session = GenerationSession(
        config=config, data=data, model=model, judge=judge, device=device, run_dir=run_dir, say=say, progress=progress,
        optimisation=Optimisation(optimizer, scheduler), steps=steps, generator=generator,
    )  # fmt: skip
    if saved is not None:
        session.best_state = saved.restore(model, optimizer, scheduler, generator)
        session.order = saved.order_generator()
        truncate_logs(run_dir, progress)
        say(f"resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step}")
    return session


def describe(
    data: GenerationData, model: ConditionalGAN, settings: ComputeSettings, judge: Judge, run_dir: Path
) -> str:
    def count(network: torch.nn.Module) -> int:
        return sum(p.numel() for p in network.parameters())

    judged = f"{judge.accuracy:.2%} on real images" if judge.accuracy is not None else "trained"
    return (
        f"{runlog.describe(data.splits)}\n"
        f"{data.spec.name}: generator {count(model.generator) / 1e6:.2f}M, discriminator "
        f"{count(model.discriminator) / 1e6:.2f}M parameters on {settings.device} ({settings.describe()}); "
        f"judge {JUDGE_MODEL}: {judged}; writing {run_dir}"
    )


def final_generation_test(session: GenerationSession, started: float):  # -> Quality | None
    """The best generator's figures on the test images (else none); writes results.json; the test figures."""
    progress, splits, run_dir = session.progress, session.data.splits, session.run_dir
    if progress.best_epoch is None:
        return None
    session.model.load_state_dict(session.best_state)
    test = measure(session, splits.test) if len(splits.test) else None
    results = {
        "task": "generate",
        "selected_by": SELECTED_BY,
        "best_epoch": progress.best_epoch,
        "seconds": time.perf_counter() - started,
        "skipped_steps": progress.skipped_steps,
        "judge": {"model": JUDGE_MODEL, "epochs": JUDGE_EPOCHS, "accuracy_on_real": session.judge.accuracy},
        "test": test.to_dict() if test else None,
        "val": progress.history[progress.best_epoch - 1],
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return test


def summarize(session: GenerationSession, test, interrupted: bool, seconds: float) -> Run:
    """Say how the run ended and return it."""
    config, progress, say, run_dir = session.config, session.progress, session.say, session.run_dir
    if progress.skipped_steps:
        say(f"warning: skipped {progress.skipped_steps} update(s) with a NaN or infinite loss or gradient")
    if progress.best_epoch is None and not interrupted:
        raise CnnkitError(f"training diverged: no epoch had a finite Fréchet distance; lower --lr (now {config.lr})")
    if not interrupted:
        best = progress.history[progress.best_epoch - 1]
        on_test = f"; on the test images: {test.describe()}" if test else ""
        say(
            f"best epoch {progress.best_epoch} (lowest validation Fréchet distance on the judge's features, "
            f"{best['frechet']:.4g}; judge accuracy on generated images {best['class_accuracy']:.2%}){on_test} "
            f"in {seconds:.1f}s; run saved to {run_dir}"
        )
    history = progress.history
    return Run(run_dir, config, session.data.splits.classes, history, test, progress.best_epoch, seconds, interrupted)

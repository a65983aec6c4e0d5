"""Training as plain functions: ``fit`` runs ``train_one_epoch`` and ``evaluate`` and writes the run directory.

Extension points are events, not subclasses: any object passed in ``callbacks`` that has
an ``on_epoch_end(run_dir, row)`` method is called after each epoch with that epoch's
metrics row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cnnkit import compute
from cnnkit.checkpoint import BEST, LAST, CheckpointWriteError, save_checkpoint, versions
from cnnkit.compute import select_device
from cnnkit.config import TrainConfig
from cnnkit.data.augment import parse_augmentation
from cnnkit.data.loader import channel_stats, num_batches
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, Preprocessing
from cnnkit.models import ModelSpec, build, kwargs_for_data
from cnnkit.models.pretrained import create_pretrained, pretrained_preprocessing
from cnnkit.models.spec import resolve_model
from cnnkit.rundir import new_run_dir
from cnnkit.tasks.classify.evaluate import evaluate
from cnnkit.tasks.classify.tta import resolve_tta
from cnnkit.training import runlog
from cnnkit.training.loop import NonFiniteStep, recompute_batch_norm, train_one_epoch
from cnnkit.training.optim import build_optimizer, finetune_optimizer, starts_phase
from cnnkit.training.prepare import check_bad_share, class_weights, prepare_data, sampling_weights
from cnnkit.training.resume import (
    STATE,
    STEPS,
    EpochTally,
    Progress,
    carry_moments,
    read_state,
    resume_config,
    save_state,
    truncate_logs,
)
from cnnkit.training.runlog import Run, StepLog


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
    Ctrl-C stops after saving ``last.safetensors``.

    Args:
        config: Settings; defaults to :class:`TrainConfig` defaults.
        callbacks: Objects with an optional ``on_epoch_end(run_dir, row)`` method.
        verbose: Print progress and a summary. Defaults to True.
        resume: A run directory to continue from its ``state.safetensors``, mid-epoch
            included; ``epochs`` may grow to extend a finished run. Defaults to None.
        **overrides: Config keys to change, e.g. ``epochs=5``.

    Example:
        >>> run = fit(data="digits", epochs=3, verbose=False)
        >>> run.test.accuracy > 0.9
        True
    """
    saved = read_state(resume) if resume is not None else None
    if saved is not None:
        config = resume_config(saved, {**(config.to_dict() if config else {}), **overrides})
    else:
        config = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides}, "train arguments")
    config.check()
    say = print if verbose else (lambda *_: None)
    started = time.perf_counter()
    device = select_device(config.device)
    model_name, model_kwargs = resolve_model(config.model)
    pretrained = config.pretrained or config.finetune or config.weights is not None
    # ImageNet weights expect RGB at their own size unless told otherwise.
    reference = pretrained_preprocessing(model_name) if pretrained else None
    data_config = replace(
        config,
        img_size=config.img_size or (reference and reference.img_size),
        channels=config.channels or (reference and 3),
    )
    splits = prepare_data(data_config, say)
    _, channels, img_size, _ = splits.train.images.shape
    if pretrained:
        preprocessing = replace(pretrained_preprocessing(model_name, img_size, channels), resize=config.resize)
    else:
        mean, std = channel_stats(splits.train)
        preprocessing = Preprocessing(img_size, channels, mean, std, config.resize)
    if saved is not None:  # a resumed run keeps the builder arguments it started with
        model_kwargs = saved.spec.kwargs
    else:
        model_kwargs = model_kwargs or kwargs_for_data(model_name, len(splits.train))
    spec = ModelSpec(model_name, len(splits.classes), channels, img_size, model_kwargs)
    torch.manual_seed(config.seed)
    model = (
        create_pretrained(model_name, len(splits.classes), channels, img_size, config.weights)
        if pretrained
        else build(spec)
    )
    settings = compute.resolve(device, config.precision, config.memory_format, config.compile)
    model = compute.prepare_model(model, settings)
    augment = parse_augmentation(config.augment, splits.name, img_size)
    tta = resolve_tta(config.tta, augment)
    if saved is None:
        run_dir = new_run_dir(config.out, config.name, "train")
        runlog.write_data_records(run_dir, splits)
    else:
        run_dir = Path(resume).expanduser()
        saved.check_spec(spec, splits.classes, runlog.check_same_split(run_dir, splits))
    config.save(run_dir / "config.yaml")
    choices = {**settings.to_dict(), "augment": augment and augment.to_dict(), "tta": tta}
    runlog.write_environment(run_dir, config, device, choices)
    check_bad_share(splits, config.max_bad_share, run_dir)
    parameters = sum(p.numel() for p in model.parameters())
    say(
        f"{runlog.describe(splits)}\n{model_name}: {parameters / 1e6:.2f}M parameters on {device} "
        f"({settings.describe()}); augment: {augment.describe() if augment else 'none'}; writing {run_dir}"
    )

    steps_per_epoch = num_batches(splits.train, config.batch_size)
    progress = saved.progress if saved is not None else Progress(cycles=[[1, config.epochs]])
    if progress.cycles[-1][1] < config.epochs:  # a resumed run extended with more epochs: one more cycle
        progress.cycles.append([progress.cycles[-1][1] + 1, config.epochs])

    def schedule(epoch: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        if config.finetune:  # the fine-tuning phase holding this epoch
            return finetune_optimizer(model, config, epoch, steps_per_epoch)
        first, last = progress.cycle(epoch)
        return build_optimizer(model, config, (last - first + 1) * steps_per_epoch)

    def starts_cycle(epoch: int) -> bool:
        return epoch > 1 and progress.cycle(epoch)[0] == epoch and progress.tally.batches == 0

    first_epoch = min(progress.epoch + 1, config.epochs)
    optimizer, scheduler = schedule(first_epoch)
    weights = class_weights(splits.train.labels, len(splits.classes), config.class_weights, device)
    loss_fn = nn.CrossEntropyLoss(weight=weights, label_smoothing=config.label_smoothing)
    sample_weights = sampling_weights(splits.train.labels, config.sampler)
    generator = torch.Generator().manual_seed(config.seed)
    scaler = compute.grad_scaler(settings)
    best_state = None
    if saved is not None:
        # At the first step of a new fine-tuning phase the uninterrupted run starts a fresh optimizer too.
        fresh = config.finetune and first_epoch > 1 and starts_phase(config, first_epoch) and not progress.tally.batches
        kept_scheduler = None if fresh or starts_cycle(first_epoch) else scheduler
        best_state = saved.restore(model, None if fresh else optimizer, kept_scheduler, generator)
        truncate_logs(run_dir, progress)
        say(f"resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step}")

    def info(epoch: int, row: dict[str, float]) -> CheckpointInfo:
        extra = {
            "config": config.to_dict(),
            "data": {"name": splits.name, "split_rule": splits.split_rule},
            "epoch": epoch,
            "metrics": row,
            "versions": versions(),
            "device": str(device),
            "tta": tta,
        }
        return CheckpointInfo(spec, splits.classes, preprocessing, extra)

    def save(order_state: torch.Tensor) -> None:
        save_state(run_dir, model, best_state, optimizer, scheduler, order_state, progress, spec, config)

    history = progress.history
    steps = StepLog(run_dir / STEPS)
    interrupted = False
    try:
        for epoch in range(progress.epoch + 1, config.epochs + 1):
            if epoch > first_epoch and config.finetune and starts_phase(config, epoch):
                optimizer, scheduler = schedule(epoch)
            elif epoch > first_epoch and not config.finetune and starts_cycle(epoch):
                new_optimizer, scheduler = schedule(epoch)
                optimizer = carry_moments(optimizer, new_optimizer)
            order_state = generator.get_state()

            def on_step(loss: float, skipped: bool, epoch: int = epoch, order_state=order_state) -> None:
                progress.step += 1
                progress.skipped_steps += skipped
                steps.write(progress.step, epoch, loss, skipped)
                if config.save_every and progress.step % config.save_every == 0:
                    save(order_state)

            epoch_start = time.perf_counter()
            quiet = None if verbose else True  # None: a bar only on a terminal
            with tqdm(total=steps_per_epoch, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=quiet) as bar:
                train_loss, train_acc = train_one_epoch(
                    model,
                    splits.train,
                    preprocessing,
                    optimizer,
                    scheduler,
                    loss_fn,
                    device,
                    config.batch_size,
                    generator,
                    bar,
                    progress.tally,
                    on_step,
                    config.clip_grad_norm,
                    config.nonfinite == "skip",
                    sample_weights,
                    augment,
                    settings,
                    scaler,
                )
            recompute_batch_norm(model, splits.train, preprocessing, device, config.batch_size)
            val = evaluate(model, splits.val, preprocessing, device)
            row = {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "val_loss": val.loss,
                "val_acc": val.accuracy,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(row)
            runlog.append_row(run_dir / "metrics.csv", row)
            save_checkpoint(run_dir / LAST, model, info(epoch, row))
            score = [val.accuracy, -val.loss] if len(splits.val) else [train_acc, -train_loss]
            if not any(math.isnan(s) for s in score) and (progress.best_score is None or score > progress.best_score):
                progress.best_score, progress.best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                save_checkpoint(run_dir / BEST, model, info(epoch, row))
            progress.epoch, progress.tally = epoch, EpochTally()
            save(generator.get_state())
            say(
                f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train loss {train_loss:.4f} "
                f"acc {train_acc:.2%}  val loss {val.loss:.4f} acc {val.accuracy:.2%}  {row['seconds']:.1f}s"
            )
            for callback in callbacks:
                getattr(callback, "on_epoch_end", lambda **_: None)(run_dir=run_dir, row=row)
    except KeyboardInterrupt:
        interrupted = True
        save_checkpoint(run_dir / LAST, model, info(len(history), history[-1] if history else {}))
        say(f"\ninterrupted: last checkpoint kept at {run_dir / LAST}; continue with --resume {run_dir}")
    except NonFiniteStep as error:
        raise CnnkitError(
            f"training stopped at step {progress.step + 1} (epoch {progress.epoch + 1}): {error}; "
            f"the last good state is kept in {run_dir / STATE}. Lower --lr (now {config.lr}), "
            "add --clip-grad-norm 1.0, or pass --nonfinite skip to skip such steps"
        ) from None
    except CheckpointWriteError as error:
        raise CnnkitError(f"{error}; free some space and continue with --resume {run_dir}") from None
    finally:
        steps.close()
    if progress.skipped_steps:
        say(f"warning: skipped {progress.skipped_steps} step(s) with a NaN or infinite loss or gradient (steps.csv)")

    best_epoch = progress.best_epoch
    test = None
    if best_state is not None and not interrupted:
        model.load_state_dict(best_state)
        final_tta = tta == "flip"
        test = evaluate(model, splits.test, preprocessing, device, tta=final_tta) if len(splits.test) else None
        final = test or evaluate(model, splits.val, preprocessing, device, tta=final_tta)
        runlog.write_results(
            run_dir, history, test, final, best_epoch, time.perf_counter() - started, progress.skipped_steps
        )
        reported = splits.test if len(splits.test) else splits.val
        if len(reported):
            from cnnkit.understand.report import write_report

            write_report(model, reported, preprocessing, device, run_dir / "report", f"{config.model} on {splits.name}")
    seconds = time.perf_counter() - started
    if test is not None:
        say(
            f"test accuracy {test.accuracy:.2%}{' with flip TTA' if tta == 'flip' else ''} on {test.count} images "
            f"(best epoch {best_epoch}) "
            f"in {seconds:.1f}s; run saved to {run_dir}"
        )
    elif progress.best_score is None and not interrupted:
        raise CnnkitError(f"training diverged: every epoch ended with a NaN loss; lower --lr (now {config.lr})")
    elif not interrupted:
        say(f"no test images; best val accuracy {progress.best_score[0]:.2%}; run saved to {run_dir}")
    return Run(run_dir, config, splits.classes, history, test, best_epoch, seconds, interrupted)

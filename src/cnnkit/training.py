"""Training as plain functions: ``fit`` runs ``train_one_epoch`` and ``evaluate`` and writes the run directory.

Extension points are events, not subclasses: any object passed in ``callbacks`` that has
an ``on_epoch_end(run_dir, row)`` method is called after each epoch with that epoch's
metrics row.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from cnnkit.checkpoint import BEST, LAST, CheckpointInfo, new_run_dir, save_checkpoint, versions
from cnnkit.config import TrainConfig
from cnnkit.data import DataSplits, ImageSet, Preprocessing, load_data
from cnnkit.data.loader import channel_stats, iterate_batches, num_batches
from cnnkit.errors import CnnkitError
from cnnkit.finetune import finetune_optimizer
from cnnkit.metrics import EvalResult, confusion_matrix, per_class_report
from cnnkit.models import ModelSpec, build
from cnnkit.models.pretrained import create_pretrained, pretrained_preprocessing
from cnnkit.models.spec import resolve_model


@dataclass
class Run:
    """The result of :func:`fit`: where it was written and what it measured."""

    dir: Path
    config: TrainConfig
    classes: list[str]
    history: list[dict[str, float]]
    test: EvalResult | None
    best_epoch: int | None
    seconds: float
    interrupted: bool = False

    @property
    def best_checkpoint(self) -> Path:
        return self.dir / BEST

    @property
    def last_checkpoint(self) -> Path:
        return self.dir / LAST

    def load(self, device: str = "auto"):
        """The best model as a :class:`cnnkit.predict.Classifier`."""
        from cnnkit.predict import load

        return load(self.dir, device=device)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnkitError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnkitError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def build_optimizer(
    model: nn.Module, config: TrainConfig, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW with a one-cycle schedule peaking at ``config.lr``: fast, and forgiving of the peak chosen."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)
    return optimizer, scheduler


def train_one_epoch(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loss_fn: nn.Module,
    device: torch.device,
    batch_size: int,
    generator: torch.Generator,
    progress: tqdm,
) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns (mean loss, accuracy)."""
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    for step, (images, labels) in enumerate(iterate_batches(data, batch_size, shuffle=True, generator=generator)):
        if len(labels) < 2:  # batch norm cannot train on a single image
            continue
        inputs = preprocessing.normalize(images.to(device, non_blocking=True))  # (B, C, H, W) float
        labels = labels.to(device, non_blocking=True)
        logits = model(inputs)  # (B, K)
        loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        progress.update()
        if step % 10 == 0:
            progress.set_postfix_str(f"loss {total_loss / seen:.4f} acc {correct / seen:.2%}")
    return total_loss / max(1, seen), correct / max(1, seen)


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int,
    max_batches: int = 20,
) -> None:
    """Set batch-norm running statistics to exact averages over up to ``max_batches`` training batches.

    The running averages kept during training lag behind the weights; with few steps per
    epoch (small datasets) they are far off and validation accuracy collapses. Recomputing
    them (PreciseBN) costs a few forward passes and fixes that; the fixed generator keeps
    it deterministic.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over the batches below
    model.train()
    batches = iterate_batches(data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _, (images, _) in zip(range(max_batches), batches):
        if len(images) > 1:
            model(preprocessing.normalize(images.to(device)))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


@torch.no_grad()
def predict_logits(
    model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """Logits (N, K) on the CPU for uint8 images (N, C, H, W)."""
    model.eval()
    outputs = [
        model(preprocessing.normalize(images[i : i + batch_size].to(device))).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


def evaluate(
    model: nn.Module, data: ImageSet, preprocessing: Preprocessing, device: torch.device, batch_size: int = 256
) -> EvalResult:
    """Loss, accuracy, confusion matrix and per-class report of ``model`` on ``data``."""
    num_classes = len(data.classes)
    if len(data) == 0:
        empty = [[0] * num_classes for _ in range(num_classes)]
        return EvalResult(math.nan, math.nan, empty, per_class_report(torch.tensor(empty), data.classes), data.classes)
    logits = predict_logits(model, data.images, preprocessing, device, batch_size)
    loss = nn.functional.cross_entropy(logits, data.labels).item()
    predictions = logits.argmax(1)
    confusion = confusion_matrix(predictions, data.labels, num_classes)
    accuracy = (predictions == data.labels).double().mean().item()
    return EvalResult(loss, accuracy, confusion.tolist(), per_class_report(confusion, data.classes), data.classes)


def _describe(splits: DataSplits) -> str:
    _, channels, height, width = splits.train.images.shape
    return (
        f"{splits.name}: {len(splits.train)} train / {len(splits.val)} val / {len(splits.test)} test images, "
        f"{len(splits.classes)} classes, {channels}x{height}x{width}"
    )


def _write_data_records(run_dir: Path, splits: DataSplits) -> None:
    split = {
        "data": splits.name,
        "rule": splits.split_rule,
        "classes": splits.classes,
        **{name: getattr(splits, name).sources for name in ("train", "val", "test")},
    }
    (run_dir / "split.json").write_text(json.dumps(split))
    if splits.skipped:
        with open(run_dir / "skipped.csv", "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(["path", "reason"])
            writer.writerows((item.path, item.reason) for item in splits.skipped)


def _emit(callbacks: Iterable[Any], event: str, **kwargs: Any) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(**kwargs)


def fit(
    config: TrainConfig | None = None, callbacks: Iterable[Any] = (), verbose: bool = True, **overrides: Any
) -> Run:
    """Train a model end to end and write its run directory.

    The run directory holds ``config.yaml``, ``split.json``, ``metrics.csv``,
    ``best.safetensors``, ``last.safetensors``, ``curves.png``, ``confusion_matrix.png``
    and ``results.json`` (plus ``skipped.csv`` when some images could not be read).
    Ctrl-C stops after saving ``last.safetensors``.

    Args:
        config: Settings; defaults to :class:`TrainConfig` defaults.
        callbacks: Objects with an optional ``on_epoch_end(run_dir, row)`` method.
        verbose: Print progress and a summary. Defaults to True.
        **overrides: Config keys to change, e.g. ``epochs=5``.

    Example:
        >>> run = fit(data="digits", epochs=3, verbose=False)
        >>> run.test.accuracy > 0.9
        True
    """
    config = TrainConfig.from_dict({**(config or TrainConfig()).to_dict(), **overrides}, "train arguments")
    config.check()
    say = print if verbose else (lambda *_: None)
    started = time.perf_counter()
    device = select_device(config.device)
    model_name, model_kwargs = resolve_model(config.model)
    pretrained = config.pretrained or config.finetune or config.weights is not None
    # ImageNet weights expect RGB at their own size unless told otherwise.
    reference = pretrained_preprocessing(model_name) if pretrained else None
    splits = load_data(
        config.data,
        config.img_size or (reference and reference.img_size),
        config.channels or (reference and 3),
        config.resize,
        config.val_split,
        config.test_split,
        config.data_dir,
        config.workers,
    )
    for warning in splits.warnings:
        say(f"warning: {warning}")
    if splits.skipped:
        say(
            f"warning: skipped {len(splits.skipped)} unreadable image(s); first: {splits.skipped[0].path} "
            f"({splits.skipped[0].reason}); full list in skipped.csv"
        )
    if len(splits.train) == 0:
        raise CnnkitError(f"{splits.name}: no readable training images")
    _, channels, img_size, _ = splits.train.images.shape
    if pretrained:
        preprocessing = replace(pretrained_preprocessing(model_name, img_size, channels), resize=config.resize)
    else:
        mean, std = channel_stats(splits.train)
        preprocessing = Preprocessing(img_size, channels, mean, std, config.resize)
    spec = ModelSpec(model_name, len(splits.classes), channels, img_size, model_kwargs)
    torch.manual_seed(config.seed)
    model = (
        create_pretrained(model_name, len(splits.classes), channels, img_size, config.weights)
        if pretrained
        else build(spec)
    ).to(device)
    run_dir = new_run_dir(config.out, config.name, "train")
    config.save(run_dir / "config.yaml")
    _write_data_records(run_dir, splits)
    parameters = sum(p.numel() for p in model.parameters())
    say(f"{_describe(splits)}\n{model_name}: {parameters / 1e6:.2f}M parameters on {device}; writing {run_dir}")

    steps_per_epoch = num_batches(splits.train, config.batch_size)
    optimizer, scheduler = build_optimizer(model, config, config.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    generator = torch.Generator().manual_seed(config.seed)

    def info(epoch: int, row: dict[str, float]) -> CheckpointInfo:
        extra = {
            "config": config.to_dict(),
            "data": {"name": splits.name, "split_rule": splits.split_rule},
            "epoch": epoch,
            "metrics": row,
            "versions": versions(),
            "device": str(device),
        }
        return CheckpointInfo(spec, splits.classes, preprocessing, extra)

    history: list[dict[str, float]] = []
    best_score, best_epoch, best_state = None, None, None
    metrics_file = run_dir / "metrics.csv"
    interrupted = False
    try:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.perf_counter()
            if config.finetune and (phase := finetune_optimizer(model, config, epoch, steps_per_epoch)):
                optimizer, scheduler = phase
            with tqdm(
                total=steps_per_epoch,
                desc=f"epoch {epoch}/{config.epochs}",
                leave=False,
                disable=None if verbose else True,
                dynamic_ncols=True,
            ) as progress:
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
                    progress,
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
            with open(metrics_file, "a", newline="") as stream:
                writer = csv.DictWriter(stream, fieldnames=list(row))
                if epoch == 1:
                    writer.writeheader()
                writer.writerow(row)
            save_checkpoint(run_dir / LAST, model, info(epoch, row))
            score = (val.accuracy, -val.loss) if len(splits.val) else (train_acc, -train_loss)
            if not any(math.isnan(s) for s in score) and (best_score is None or score > best_score):
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                save_checkpoint(run_dir / BEST, model, info(epoch, row))
            say(
                f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train loss {train_loss:.4f} "
                f"acc {train_acc:.2%}  val loss {val.loss:.4f} acc {val.accuracy:.2%}  {row['seconds']:.1f}s"
            )
            _emit(callbacks, "on_epoch_end", run_dir=run_dir, row=row)
    except KeyboardInterrupt:
        interrupted = True
        save_checkpoint(run_dir / LAST, model, info(len(history), history[-1] if history else {}))
        say(f"\ninterrupted: last checkpoint kept at {run_dir / LAST}")

    test = None
    if best_state is not None and not interrupted:
        model.load_state_dict(best_state)
        test = evaluate(model, splits.test, preprocessing, device) if len(splits.test) else None
        final = test or evaluate(model, splits.val, preprocessing, device)
        from cnnkit.plots import plot_confusion, plot_curves

        plot_curves(history, run_dir / "curves.png")
        plot_confusion(
            final.confusion,
            final.classes,
            run_dir / "confusion_matrix.png",
            "test confusion matrix" if test else "validation confusion matrix",
        )
        results = {
            "best_epoch": best_epoch,
            "seconds": time.perf_counter() - started,
            "test": test.to_dict() if test else None,
            "val": history[best_epoch - 1],
        }
        (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    seconds = time.perf_counter() - started
    if test is not None:
        say(
            f"test accuracy {test.accuracy:.2%} on {test.count} images (best epoch {best_epoch}) "
            f"in {seconds:.1f}s; run saved to {run_dir}"
        )
    elif best_score is None and not interrupted:
        raise CnnkitError(f"training diverged: every epoch ended with a NaN loss; lower --lr (now {config.lr})")
    elif not interrupted:
        say(f"no test images; best val accuracy {best_score[0]:.2%}; run saved to {run_dir}")
    return Run(run_dir, config, splits.classes, history, test, best_epoch, seconds, interrupted)

"""One pass over the data: a training epoch, an evaluation, and the batch-norm statistics between them.

Each training step takes a batch of uint8 images from the loader, augments it on the
device as one tensor, normalises it, and runs forward and backward under the run's
:class:`~cnnkit.compute.ComputeSettings` (precision, memory format).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm import tqdm

from cnnkit.compute import ComputeSettings, autocast, grad_scaler, prepare_inputs
from cnnkit.data import ImageSet
from cnnkit.data.augment import Augmentation
from cnnkit.data.loader import iterate_batches
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.training.resume import EpochTally

EVAL_BATCH_VALUES = 1 << 22  # pixel values per evaluation batch: 16 MB as float32
FP32 = ComputeSettings("cpu", "fp32", "contiguous", False, 1, "")


class NonFiniteStep(CnnkitError):
    """A training step whose loss or gradient is NaN or infinite."""


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
    tally: EpochTally | None = None,
    on_step: Callable[[float, bool], None] | None = None,
    clip_grad_norm: float | None = None,
    skip_nonfinite: bool = False,
    sample_weights: torch.Tensor | None = None,
    augment: Augmentation | None = None,
    compute: ComputeSettings = FP32,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns (mean loss, accuracy).

    ``tally`` continues an epoch stopped part-way: its first ``tally.batches`` batches are
    skipped. ``on_step(loss, skipped)`` runs after every optimizer step. A NaN or infinite
    loss or gradient raises :class:`NonFiniteStep` before the weights change, or with
    ``skip_nonfinite`` leaves the weights alone for that step and reports it as skipped.
    In fp16 an infinite gradient with a finite loss is the grad scaler probing its range:
    that step is skipped by the scaler and is not an error.
    """
    tally = tally or EpochTally()
    scaler = scaler or grad_scaler(compute)
    model.train()
    progress.update(tally.batches)
    batches = iterate_batches(data, batch_size, True, generator, start=tally.batches, weights=sample_weights)
    for images, labels in batches:
        if len(labels) < 2:  # batch norm cannot train on a single image
            tally.batches += 1
            continue
        images = images.to(device, non_blocking=True)  # (B, C, H, W) uint8
        if augment is not None:
            images = augment(images, generator)
        inputs = prepare_inputs(preprocessing.normalize(images), compute)
        labels = labels.to(device, non_blocking=True)
        with autocast(compute):
            logits = model(inputs)  # (B, K)
            loss = loss_fn(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        # With no limit this only measures the norm (the scale factor is exactly 1).
        norm = nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm or math.inf)
        hits = (logits.argmax(1) == labels).sum()
        # One transfer for all three numbers: each .item() would make the GPU drain its queue.
        value, norm_value, correct = torch.stack([loss.detach().float(), norm.float(), hits.float()]).tolist()
        finite = math.isfinite(value) and math.isfinite(norm_value)
        overflow = scaler.is_enabled() and math.isfinite(value) and not finite
        if not finite and not overflow and not skip_nonfinite:
            raise NonFiniteStep(f"loss {value}, gradient norm {norm_value}")
        if finite or overflow:
            scaler.step(optimizer)  # the scaler skips the update itself on overflow
        scaler.update()
        if finite:
            tally.total_loss += value * len(labels)
            tally.correct += int(correct)
            tally.seen += len(labels)
        scheduler.step()
        tally.batches += 1
        progress.update()
        if on_step is not None:
            on_step(value, not finite)
        if tally.batches % 10 == 0 and tally.seen:
            progress.set_postfix_str(f"loss {tally.total_loss / tally.seen:.4f} acc {tally.correct / tally.seen:.2%}")
    return tally.total_loss / max(1, tally.seen), tally.correct / max(1, tally.seen)


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

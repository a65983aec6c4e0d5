"""One pass over the data: a training epoch, and the batch-norm statistics recomputed after it.

Each training step takes a batch of uint8 images (or float series) from the loader, augments
images on the device as one tensor, normalises it, and runs forward and backward under the run's
:class:`~cnnkit.compute.ComputeSettings` (precision, memory format).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnkit.compute import ComputeSettings, autocast, grad_scaler, prepare_inputs
from cnnkit.data import ImageSet
from cnnkit.data.audio_augment import AudioBatchAugmentation
from cnnkit.data.augment import Augmentation
from cnnkit.data.loader import iterate_batches
from cnnkit.data.series import SeriesSet
from cnnkit.data.series_augment import SeriesAugmentation
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing, SeriesPreprocessing
from cnnkit.tasks import Task
from cnnkit.training.optim import Optimisation
from cnnkit.training.resume import EpochTally

FP32 = ComputeSettings("cpu", "fp32", "contiguous", False, 1, "")


class NonFiniteStep(CnnkitError):
    """A training step whose loss or gradient is NaN or infinite."""


@dataclass(frozen=True)
class StepSettings:
    """How each training step runs.

    Args:
        batch_size: Images per step.
        clip_grad_norm: Largest gradient norm; None measures it without clipping. Defaults to None.
        skip_nonfinite: Leave the weights alone at a NaN or infinite step instead of stopping. Defaults to False.
        sample_weights: Per-image weights (N,) to draw the epoch with replacement; None shuffles. Defaults to None.
        augment: Augmentation applied to each batch on the device. Defaults to None.
        compute: Precision and memory format. Defaults to float32, contiguous.
        shard: ``(rank, world_size)``: this process takes ``batch_size // world_size`` images of
            each global batch of ``batch_size``. Defaults to ``(0, 1)``, one process.
    """

    batch_size: int
    clip_grad_norm: float | None = None
    skip_nonfinite: bool = False
    sample_weights: torch.Tensor | None = None
    augment: Augmentation | AudioBatchAugmentation | SeriesAugmentation | None = None
    compute: ComputeSettings = FP32
    shard: tuple[int, int] = (0, 1)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_batch_size(batch_size: int, model: nn.Module, name: str) -> None:
    """Refuse a batch of one for a model with batch norm: every step of it would be skipped."""
    if batch_size < 2 and has_batch_norm(model):
        raise CnnkitError(
            f"--batch-size {batch_size}: {name} has batch norm, which cannot train on one image "
            "at a time, so every step would be skipped; use --batch-size 2 or more"
        )


def train_one_epoch(
    model: nn.Module,
    data: ImageSet | SeriesSet,
    preprocessing: Preprocessing | SeriesPreprocessing,
    task: Task,
    optimisation: Optimisation,
    device: torch.device,
    generator: torch.Generator,
    settings: StepSettings,
    tally: EpochTally | None = None,
    on_step: Callable[[float, bool], None] | None = None,
    order: torch.Generator | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns the mean loss and the mean batch score (accuracy).

    ``generator`` draws the data order and then the augmentation of each batch. ``tally``
    continues an epoch stopped part-way: its first ``tally.batches`` batches are skipped;
    their order comes from ``order`` (a generator at the epoch's first state) while
    ``generator`` continues the augmentation from where it stopped. ``on_step(loss,
    skipped)`` runs after every optimizer step (log, save, progress bar). A NaN or infinite
    loss or gradient raises :class:`NonFiniteStep` before the weights change, or with
    ``settings.skip_nonfinite`` leaves the weights alone for that step and reports it as
    skipped. In fp16 an infinite gradient with a finite loss is the grad scaler probing
    its range: that step is skipped by the scaler and is not an error. A batch of one
    image is skipped when the model has batch norm, which cannot train on it.

    With ``settings.shard`` of several processes each takes its share of every global batch
    (the shares of the last one cut to equal sizes, so every rank runs the same steps on the
    same number of images and DDP's mean gradient is the global batch's); ``reduce`` sums
    each step's (loss x images, hits, images) over the processes, so the logged loss, the
    tally and the NaN check are the global batch's on every rank. The augmentation draws its
    parameters for the whole global batch on every rank and applies those of the rank's own
    images, so no two images share a draw and ``generator`` stays in step across the ranks.
    """
    tally = tally or EpochTally()
    optimizer, scheduler = optimisation.optimizer, optimisation.scheduler
    scaler = optimisation.scaler or grad_scaler(settings.compute)
    single_ok = not has_batch_norm(model)
    model.train()
    world_size = settings.shard[1]
    batches = iterate_batches(
        data,
        settings.batch_size // world_size,
        True,
        order or generator,
        start=tally.batches,
        weights=settings.sample_weights,
        shard=settings.shard,
    )
    for index, (images, labels) in enumerate(batches, start=tally.batches):
        # This rank's share of global batch `index`: equal on every rank (the last batch's remainder is dropped).
        share = min(settings.batch_size, len(data) - index * settings.batch_size) // world_size
        images, labels = images[:share], labels[:share]
        if share < (1 if single_ok else 2):
            tally.batches += 1
            continue
        images = images.to(device, non_blocking=True)  # (B, C, H, W) uint8, or (B, C, L) float series
        if settings.augment is not None:
            images = settings.augment(images, generator, settings.shard)  # draws for the global batch, own slice
        inputs = prepare_inputs(preprocessing.normalize(images), settings.compute)
        labels = labels.to(device, non_blocking=True)
        with autocast(settings.compute):
            outputs = model(inputs)  # (B, K)
            loss = task.loss(outputs, labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        # With no limit this only measures the norm (the scale factor is exactly 1).
        norm = nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm or math.inf)
        hits = task.score_batch(outputs, labels)
        numbers = torch.stack([loss.detach().float(), norm.float(), hits.float()])
        if reduce is not None:  # (loss x images, hits, images) of the global batch; the norm is already global (DDP)
            total = reduce(torch.stack([numbers[0] * len(labels), numbers[2], numbers.new_tensor(len(labels))]))
            numbers = torch.stack([total[0] / total[2], numbers[1], total[1], total[2]])
        # One transfer for all the numbers: each .item() would make the GPU drain its queue.
        value, norm_value, score, *seen = numbers.tolist()
        count = round(seen[0]) if seen else len(labels)
        finite = math.isfinite(value) and math.isfinite(norm_value)
        overflow = scaler.is_enabled() and math.isfinite(value) and not finite
        if not finite and not overflow and not settings.skip_nonfinite:
            raise NonFiniteStep(f"loss {value}, gradient norm {norm_value}")
        if finite or overflow:
            scaler.step(optimizer)  # the scaler skips the update itself on overflow
        scaler.update()
        if finite:
            tally.total_loss += value * len(labels)
            tally.correct += int(score)
            tally.seen += count
        scheduler.step()
        tally.batches += 1
        if on_step is not None:
            on_step(value, not finite)
    return tally.total_loss / max(1, tally.seen), tally.correct / max(1, tally.seen)


@torch.no_grad()
def recompute_batch_norm(
    model: nn.Module,
    data: ImageSet | SeriesSet,
    preprocessing: Preprocessing | SeriesPreprocessing,
    device: torch.device,
    batch_size: int,
    max_batches: int = 20,
    augment: AudioBatchAugmentation | None = None,
) -> None:
    """Set batch-norm running statistics to exact averages over up to ``max_batches`` training batches.

    The running averages kept during training lag behind the weights; with few steps per
    epoch (small datasets) they are far off and validation accuracy collapses. Recomputing
    them (PreciseBN) costs a few forward passes and fixes that; the fixed generators keep
    it deterministic. An audio run passes its waveform ``augment``: noise mixed into most
    clips moves the log-mels' statistics, and statistics of clean clips alone leave a
    network trained on noisy ones mis-scaled on noisy audio (``benchmarks/spotting.py``).
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
    draws = torch.Generator().manual_seed(1)  # the augmentation's own, so the batches are those of before
    for _, (images, _) in zip(range(max_batches), batches):
        if len(images) > 1:
            images = images.to(device) if augment is None else augment(images.to(device), draws)
            model(preprocessing.normalize(images))
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum

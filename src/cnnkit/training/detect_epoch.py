"""One pass over annotated images: a detector's training epoch, and its batch-norm statistics after it.

A step is classification's (:func:`cnnkit.training.loop.train_one_epoch`) with boxes: a
batch of uint8 images comes from the same loader (rows of a :class:`BoxedSet`, so the
epoch's order and a resumed epoch's position follow the same rules), its boxes are padded
into a :class:`BoxBatch` on the device, augmented with the images in one operation, and the
detector returns its loss parts, whose sum is backpropagated under the run's precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from cnnkit.compute import autocast, grad_scaler, prepare_inputs
from cnnkit.data.box_augment import BoxAugmentation, BoxBatch, clip_boxes
from cnnkit.data.boxset import BoxedSet
from cnnkit.data.loader import iterate_batches
from cnnkit.modelinfo import Preprocessing
from cnnkit.training.loop import NonFiniteStep, StepSettings, has_batch_norm, recompute_batch_norm
from cnnkit.training.optim import Optimisation
from cnnkit.training.resume import EpochTally


def train_detection_epoch(
    model: nn.Module,
    data: BoxedSet,
    preprocessing: Preprocessing,
    optimisation: Optimisation,
    device: torch.device,
    generator: torch.Generator,
    settings: StepSettings,
    augment: BoxAugmentation | None = None,
    tally: EpochTally | None = None,
    on_step: Callable[[float, bool], None] | None = None,
    order: torch.Generator | None = None,
) -> dict[str, float]:
    """One pass over ``data`` in shuffled batches; returns the mean total loss (``loss``) and of each loss part.

    ``generator``, ``tally``, ``order`` and ``on_step`` work as in
    :func:`cnnkit.training.loop.train_one_epoch`: the generator draws the data order, then
    each batch's augmentation; ``tally`` continues an epoch stopped part-way (its
    ``total_loss`` and ``seen`` carry the running loss; the parts' means cover the steps of
    this call). A NaN or infinite loss or gradient raises :class:`NonFiniteStep` before the
    weights change, or with ``settings.skip_nonfinite`` skips that step.
    """
    tally = tally or EpochTally()
    optimizer, scheduler = optimisation.optimizer, optimisation.scheduler
    scaler = optimisation.scaler or grad_scaler(settings.compute)
    smallest = 2 if has_batch_norm(model) else 1  # batch norm cannot train on one image
    parts: dict[str, float] = {}
    parts_seen = 0
    model.train()
    batches = iterate_batches(data.index_set(), settings.batch_size, True, order or generator, start=tally.batches)
    for images, rows in batches:
        if len(rows) < smallest:
            tally.batches += 1
            continue
        images = images.to(device, non_blocking=True)  # (B, C, S, S) uint8
        boxes = clip_boxes(BoxBatch.from_targets(data.targets(rows.tolist()), device), images.shape[-2:])
        if augment is not None:
            images, boxes = augment(images, boxes, generator)
        inputs = prepare_inputs(preprocessing.normalize(images), settings.compute)
        with autocast(settings.compute):
            losses = model(inputs, boxes.to_targets())  # {part: scalar}
        loss = torch.stack([value.float() for value in losses.values()]).sum()
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        norm = nn.utils.clip_grad_norm_(model.parameters(), settings.clip_grad_norm or math.inf)
        # One transfer for all the numbers: each .item() would make a GPU drain its queue.
        numbers = torch.stack([loss.detach(), norm.float(), *(value.detach().float() for value in losses.values())])
        value, norm_value, *part_values = numbers.tolist()
        finite = math.isfinite(value) and math.isfinite(norm_value)
        overflow = scaler.is_enabled() and math.isfinite(value) and not finite
        if not finite and not overflow and not settings.skip_nonfinite:
            raise NonFiniteStep(f"loss {value}, gradient norm {norm_value}")
        if finite or overflow:
            scaler.step(optimizer)  # the scaler skips the update itself on overflow
        scaler.update()
        if finite:
            tally.total_loss += value * len(rows)
            tally.seen += len(rows)
            for name, part in zip(losses, part_values):
                parts[name] = parts.get(name, 0.0) + part * len(rows)
            parts_seen += len(rows)
        scheduler.step()
        tally.batches += 1
        if on_step is not None:
            on_step(value, not finite)
    means = {name: total / max(1, parts_seen) for name, total in parts.items()}
    return {"loss": tally.total_loss / max(1, tally.seen), **means}


class StatisticsPass(nn.Module):
    """A detector whose ``train()`` puts only its batch norms in training mode.

    In eval mode a detector needs no targets, so :func:`recompute_batch_norm` (which feeds
    images alone) can run it while its batch norms gather the statistics.
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def train(self, mode: bool = True) -> StatisticsPass:
        super().train(mode)
        self.detector.eval()
        for module in self.detector.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.train(mode)
        return self

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return self.detector(images)


def recompute_detector_batch_norm(
    model: nn.Module, data: BoxedSet, preprocessing: Preprocessing, device: torch.device, batch_size: int
) -> None:
    """Exact batch-norm statistics over training batches (PreciseBN, as classification recomputes them).

    With a few steps per epoch the running averages lag far behind the weights, and the
    detections of a small dataset's validation collapse without this.
    """
    recompute_batch_norm(StatisticsPass(model), data.index_set(), preprocessing, device, batch_size)
    model.eval()

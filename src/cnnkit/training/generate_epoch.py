"""One pass over the training images for a class-conditional GAN: hinge-loss steps of both networks, and the EMA.

A step takes a batch of uint8 images from the loader classification uses (the same order,
and the same position in it when a stopped epoch resumes), draws the noise for as many
fakes from the training generator (so a resumed epoch draws the same noise), and:

1. updates the discriminator on real and generated images of the batch's classes, each set
   in its own pass (the discriminator's batch-spread channel must not mix them), both shifted
   by :func:`translate`: hinge loss ``relu(1 - D(T(x), y)) + relu(1 + D(T(G(z, y)), y))``;
2. every :data:`~cnnkit.tasks.generate.N_DIS`-th step, updates the generator on the same
   fakes (no second generator pass) through the just-updated discriminator: ``-D(T(G(z, y)), y)``;
   then moves the EMA generator towards it.

Both networks' optimizers are one Adam with two parameter groups, generator first: Adam
skips a parameter without a gradient, so clearing gradients between the two updates makes
it exactly two optimizers, and the run's state is classification's file, restored by the
same code. The EMA's decay ramps up as ``min(decay, (1 + t) / (10 + t))`` over generator
steps ``t`` (TensorFlow's ``ExponentialMovingAverage``), so a short run's average is not
dominated by the random initial weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.compute import autocast, prepare_inputs
from cnnkit.data.imageset import ImageSet
from cnnkit.data.loader import iterate_batches
from cnnkit.modelinfo import Preprocessing
from cnnkit.models.gan import ConditionalGAN
from cnnkit.tasks.generate import EMA_DECAY, N_DIS
from cnnkit.training.loop import NonFiniteStep, StepSettings
from cnnkit.training.optim import adam_kernel
from cnnkit.training.resume import EpochTally


def ema_decay(generator_steps: int) -> float:
    """The EMA decay after ``generator_steps`` generator updates: ramped up to :data:`EMA_DECAY`."""
    return min(EMA_DECAY, (1 + generator_steps) / (10 + generator_steps))


def build_gan_optimizer(model: ConditionalGAN, lr: float, d_lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
    """One Adam over the generator's parameters (group 0, ``lr``) and the discriminator's (group 1, ``d_lr``)."""
    groups = [
        {"params": list(model.generator.parameters()), "lr": lr},
        {"params": list(model.discriminator.parameters()), "lr": d_lr},
    ]
    return torch.optim.Adam(groups, betas=betas, **adam_kernel(list(model.parameters())))


def translate(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Shift each image (B, C, H, W) in [-1, 1] by up to 1/8 of its side, filling with black: DiffAugment's translation.

    Differentiable (the generator learns through it) and applied alike to real and fake images,
    so the discriminator cannot memorise a small training set's exact pixels (Zhao et al. 2020).
    """
    count, _, height, width = images.shape
    reach = max(1, height // 8)
    shifts = torch.randint(-reach, reach + 1, (count, 2), generator=generator).to(images.device)  # (B, 2) pixels
    rows = (torch.arange(height, device=images.device).view(1, -1) - shifts[:, :1]).clamp(-1, height)  # (B, H)
    columns = (torch.arange(width, device=images.device).view(1, -1) - shifts[:, 1:]).clamp(-1, width)  # (B, W)
    padded = F.pad(images + 1.0, (1, 1, 1, 1))  # zero = black once shifted back; index -1 and H land in the border
    batch = torch.arange(count, device=images.device).view(-1, 1, 1)
    picked = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None] + 1, columns[:, None, :] + 1]  # (B, H, W, C)
    return picked.permute(0, 3, 1, 2) - 1.0


def _update(
    loss: torch.Tensor, network: nn.Module, optimizer: torch.optim.Optimizer, settings: StepSettings, part: str
) -> float | None:
    """Backpropagate ``loss`` into ``network`` alone and step; the loss, or None for a skipped non-finite step."""
    optimizer.zero_grad(set_to_none=True)  # the other network's gradients too: Adam then leaves it alone
    loss.backward()
    norm = nn.utils.clip_grad_norm_(network.parameters(), settings.clip_grad_norm or math.inf)
    value, norm_value = torch.stack([loss.detach().float(), norm.float()]).tolist()  # one transfer for both
    if not (math.isfinite(value) and math.isfinite(norm_value)):
        if not settings.skip_nonfinite:
            raise NonFiniteStep(f"{part} loss {value}, gradient norm {norm_value}")
        optimizer.zero_grad(set_to_none=True)
        return None
    optimizer.step()
    return value


def train_generation_epoch(
    model: ConditionalGAN,
    data: ImageSet,
    preprocessing: Preprocessing,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    generator: torch.Generator,
    settings: StepSettings,
    step: int,
    tally: EpochTally,
    on_step: Callable[[bool], None] | None = None,
    order: torch.Generator | None = None,
) -> tuple[float, float]:
    """One pass over ``data`` in shuffled batches; returns the epoch's mean discriminator and generator losses.

    ``generator`` draws the epoch's order (unless ``order`` redraws a stopped epoch's), then
    every batch's noise; ``step`` is the number of steps the run made before this call (it
    sets the EMA's ramp); ``tally`` continues an epoch stopped part-way: its ``total_loss``
    and ``seen`` carry the discriminator's running loss, while the generator's mean covers
    the steps of this call. ``on_step(skipped)`` runs after every step. A NaN or infinite
    loss or gradient raises :class:`NonFiniteStep` before that network changes, or with
    ``settings.skip_nonfinite`` skips its update.
    """
    discriminator, live = model.discriminator, model.generator
    g_total, g_seen = 0.0, 0
    model.train()
    batches = iterate_batches(data, settings.batch_size, True, order or generator, start=tally.batches)
    for images, labels in batches:
        if len(labels) < 2:  # batch norm cannot train on one image
            tally.batches += 1
            continue
        step += 1
        labels = labels.to(device, non_blocking=True)
        real = prepare_inputs(preprocessing.normalize(images.to(device, non_blocking=True)), settings.compute)
        noise = torch.randn(len(labels), model.latent_dim, generator=generator).to(device)  # (B, latent_dim)
        train_generator = step % N_DIS == 0
        with torch.set_grad_enabled(train_generator), autocast(settings.compute):
            fake = live(noise, labels)  # (B, C, H, W) in [-1, 1]
        with autocast(settings.compute):
            real_scores = discriminator(translate(real, generator), labels).float()
            fake_scores = discriminator(translate(fake.detach(), generator), labels).float()
            d_loss = F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
        d_value = _update(d_loss, discriminator, optimizer, settings, "discriminator")
        skipped = d_value is None
        if d_value is not None:
            tally.total_loss += d_value * len(labels)
            tally.seen += len(labels)
        if train_generator:
            discriminator.requires_grad_(False)  # the generator's loss needs no discriminator gradients
            try:
                with autocast(settings.compute):
                    g_loss = -discriminator(translate(fake, generator), labels).float().mean()
                g_value = _update(g_loss, live, optimizer, settings, "generator")
            finally:
                discriminator.requires_grad_(True)
            skipped |= g_value is None
            if g_value is not None:
                g_total, g_seen = g_total + g_value * len(labels), g_seen + len(labels)
            model.update_ema(ema_decay(step // N_DIS - 1))
        tally.batches += 1
        if on_step is not None:
            on_step(skipped)
    return tally.total_loss / max(1, tally.seen), (g_total / g_seen if g_seen else math.nan)

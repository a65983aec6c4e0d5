"""The epoch loop of a GAN run: steps, the EMA's statistics, a sample grid, quality figures, checkpoints and the state.

Classification's loop (:mod:`cnnkit.training.session`) with a GAN's epoch and metric: each
epoch trains (:func:`cnnkit.training.generate_epoch.train_generation_epoch`), measures the EMA
generator's batch-norm statistics on fixed noise, draws ``samples/epoch_NNN.png`` (one row per
class, the same noise in every row and epoch), measures the quality figures against the
validation images on the judge's features (:func:`cnnkit.tasks.generate.quality.measure_quality`),
writes its row to ``metrics.csv`` and ``curves.png``, ``last.safetensors``, ``best.safetensors``
when its Fréchet distance is the lowest so far, and the resumable state
(:func:`cnnkit.training.resume.save_state`, the same file format).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from cnnkit.checkpoint import BEST, LAST, versions
from cnnkit.data.imageset import DataSplits, ImageSet
from cnnkit.modelinfo import CheckpointInfo, Preprocessing
from cnnkit.models import ModelSpec
from cnnkit.models.gan import ConditionalGAN, latent_noise, to_uint8
from cnnkit.tasks import monitor_score
from cnnkit.tasks.generate import (
    EMA_STATISTICS_BATCHES,
    GRID_COLUMNS,
    QUALITY_PER_CLASS,
    QUALITY_SEED,
    SELECTED_BY,
)
from cnnkit.training import runlog
from cnnkit.training.generate_epoch import train_generation_epoch
from cnnkit.training.interrupts import DeferredInterrupts
from cnnkit.training.loop import NonFiniteStep
from cnnkit.training.resume import EpochTally
from cnnkit.training.session import fall_back_to_fp32
from cnnkit.training.task_session import TaskSession

MONITOR = ("-frechet",)  # the lowest Fréchet distance on the judge's features is the best epoch
QUALITY_KEYS = ("frechet", "kid", "precision", "recall", "class_accuracy")  # metrics.csv columns, in this order
GRID_TILE = 32  # pixels per image side in the sample grid, at least (nearest neighbour: an 8 px digit stays sharp)
GRID_LABEL_WIDTH = 96  # pixels left of each row for its class name
STATISTICS_SEED = QUALITY_SEED + 1  # the EMA's batch-norm statistics never see the noise they are judged on


@dataclass
class GenerationData:
    """The splits and what follows from them: the preprocessing to [-1, 1] and the architecture."""

    splits: DataSplits
    preprocessing: Preprocessing
    spec: ModelSpec
    augment: None = None  # a GAN trains without augmentation of its data (what the run directory records)
    tta: str = "none"  # nor test-time flip


@dataclass
class Judge:
    """The classifier trained on the same real images, whose features the quality figures use."""

    model: nn.Module
    preprocessing: Preprocessing
    accuracy: float | None  # on the real test images (else validation), as its own run measured it


@dataclass(kw_only=True)
class GenerationSession(TaskSession):
    """What the epoch loop reads and updates: a task's fields, the judge, and its features of the real images."""

    data: GenerationData
    model: ConditionalGAN
    judge: Judge
    real_features: torch.Tensor | None = None  # the judge's (N, D) of the images each epoch is measured against

    def checkpoint_info(self, epoch: int, row: dict[str, float]) -> CheckpointInfo:
        """What a GAN's checkpoint carries: spec, classes and preprocessing to rebuild it, and the run's facts."""
        data, splits = self.data, self.data.splits
        extra = {
            "config": self.config.to_dict(),
            "task": "generate",
            "data": {"name": splits.name, "split_rule": splits.split_rule},
            "epoch": epoch,
            "metrics": row,
            "selected_by": SELECTED_BY,
            "judge": "judge/best.safetensors",
            "versions": versions(),
            "device": str(self.device),
        }
        return CheckpointInfo(data.spec, splits.classes, data.preprocessing, extra)


def train_generation_epochs(session: GenerationSession) -> bool:
    """Run the remaining epochs; True if Ctrl-C stopped them (the state is then saved, exact between two steps)."""
    return session.train_epochs(lambda epoch: run_generation_epoch(session, epoch))


def run_generation_epoch(session: GenerationSession, epoch: int) -> dict[str, float]:
    """Train one epoch, then the grid, quality, its row, ``last``, ``best`` when better, and the state; the row."""
    config, progress, data, model = session.config, session.progress, session.data, session.model
    splits, device = data.splits, session.device
    session.order_state = (session.order or session.generator).get_state()
    interrupts = DeferredInterrupts()

    def on_step(skipped: bool) -> None:
        progress.step += 1
        progress.skipped_steps += skipped
        if config.save_every and progress.step % config.save_every == 0:
            session.save_state(epoch)
        interrupts.check()

    started = time.perf_counter()
    with interrupts:
        while True:
            try:
                d_loss, g_loss = train_generation_epoch(
                    model, splits.train, data.preprocessing, session.optimisation.optimizer, device,
                    session.generator, session.steps, progress.step, progress.tally, on_step, session.order,
                )  # fmt: skip
                break
            except NonFiniteStep as error:  # auto's bf16: redo the batch in fp32 (a failed generator update
                # leaves that batch's discriminator update in place), then go on in fp32, as classification does
                fall_back_to_fp32(session, error)
    session.order = None  # the next epoch draws its order from the training generator again
    noise, labels = fixed_noise(model, EMA_STATISTICS_BATCHES * config.batch_size, STATISTICS_SEED)
    model.recompute_ema_statistics(noise.to(device), labels.to(device), config.batch_size)
    write_sample_grid(model, splits.classes, session.run_dir / "samples" / f"epoch_{epoch:03d}.png")
    real = splits.val if len(splits.val) else splits.train
    if session.real_features is None:  # the judge is fixed for the run, so are its features of the real images
        session.real_features = judge_features(session, real)
    quality = measure(session, real, session.real_features)
    row = {
        "epoch": epoch,
        "d_loss": d_loss,
        "g_loss": g_loss,
        **{key: getattr(quality, key) for key in QUALITY_KEYS},
        "seconds": time.perf_counter() - started,
    }
    progress.history.append(row)
    runlog.append_row(session.run_dir / "metrics.csv", row)
    plot_generation_curves(progress.history, session.run_dir / "curves.png")
    session.save_checkpoint(LAST, epoch, row)
    score = monitor_score(row, MONITOR)
    if score is not None and (progress.best_score is None or score > progress.best_score):
        progress.best_score, progress.best_epoch = score, epoch
        session.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        session.save_checkpoint(BEST, epoch, row)
    progress.epoch, progress.tally = epoch, EpochTally()
    session.order_state = session.generator.get_state()
    session.save_state(epoch)
    session.say(
        f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  d loss {d_loss:.4f}  g loss {g_loss:.4f}  "
        f"Fréchet distance {row['frechet']:.4g}  judge accuracy {row['class_accuracy']:.2%}  {row['seconds']:.1f}s"
    )
    return row


def measure(session: GenerationSession, real: ImageSet, features: torch.Tensor | None = None):  # -> Quality
    """The EMA generator's quality figures against ``real`` on the judge's features (fixed noise: comparable epochs).

    ``features`` are the judge's of ``real`` when already computed (:func:`judge_features`).
    """
    from cnnkit.tasks.generate.quality import measure_quality

    judge = session.judge
    return measure_quality(
        session.model, judge.model, judge.preprocessing, real.images, real.labels, QUALITY_PER_CLASS,
        QUALITY_SEED, session.device, session.data.splits.classes, features,
    )  # fmt: skip


def judge_features(session: GenerationSession, real: ImageSet) -> torch.Tensor:
    """The judge's features (N, D) of ``real``'s images, as :func:`measure` would compute them."""
    from cnnkit.tasks.generate.quality import judge_images

    judge = session.judge
    return judge_images(judge.model, judge.preprocessing, real.images, session.device)[0]


def fixed_noise(model: ConditionalGAN, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` noise vectors (count, latent_dim) from ``seed`` and labels (count,) cycling through the classes."""
    return latent_noise(count, model.latent_dim, seed), torch.arange(count) % model.num_classes


@torch.no_grad()
def write_sample_grid(model: ConditionalGAN, classes: list[str], path: Path) -> None:
    """A PNG a person looks at: one row per class, named on the left, the same GRID_COLUMNS noise vectors in each."""
    device = next(model.parameters()).device
    count = len(classes)
    noise = latent_noise(GRID_COLUMNS, model.latent_dim, QUALITY_SEED).repeat(count, 1)  # (K * columns, latent_dim)
    labels = torch.arange(count).repeat_interleave(GRID_COLUMNS)
    images = to_uint8(model(noise.to(device), labels.to(device))).cpu()  # (K * columns, C, H, W)
    scale = max(1, math.ceil(GRID_TILE / model.img_size))
    tiles = images.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # nearest-neighbour enlargement
    side = tiles.shape[-1]
    rows = tiles.view(count, GRID_COLUMNS, model.channels, side, side).permute(0, 3, 1, 4, 2)  # (K, S, cols, S, C)
    pixels = rows.reshape(count * side, GRID_COLUMNS * side, model.channels).expand(-1, -1, 3).numpy()
    grid = Image.new("RGB", (GRID_LABEL_WIDTH + GRID_COLUMNS * side, count * side), "white")
    grid.paste(Image.fromarray(np.ascontiguousarray(pixels)), (GRID_LABEL_WIDTH, 0))
    draw = ImageDraw.Draw(grid)
    for row, name in enumerate(classes):
        draw.text((4, row * side + side // 2 - 5), name[:14], fill="black")
    path.parent.mkdir(exist_ok=True)
    grid.save(path)


def plot_generation_curves(history: list[dict[str, float]], path: Path) -> None:
    """Both networks' hinge losses (left) and the validation quality figures (right) per epoch."""
    from cnnkit.understand import figures

    plt = figures.pyplot()
    epochs = [row["epoch"] for row in history]
    figure, (loss_axes, distance_axes) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("d_loss", "discriminator"), ("g_loss", "generator")):
        loss_axes.plot(epochs, [row[key] for row in history], marker=".", label=label)
    distance_axes.plot(epochs, [row["frechet"] for row in history], marker=".", color="C2", label="Fréchet distance")
    shares = distance_axes.twinx()  # the [0, 1] figures on their own axis
    for key, colour in (("class_accuracy", "C3"), ("precision", "C4"), ("recall", "C5")):
        shares.plot(epochs, [row[key] for row in history], marker=".", color=colour, label=key.replace("_", " "))
    loss_axes.set(title="hinge losses", xlabel="epoch")
    distance_axes.set(title="validation quality on the judge's features", xlabel="epoch")
    shares.set(ylim=(0.0, 1.0))
    loss_axes.legend()
    distance_axes.legend(
        distance_axes.get_lines() + shares.get_lines(), [line.get_label() for line in distance_axes.get_lines()]
        + [line.get_label() for line in shares.get_lines()], fontsize="small",
    )  # fmt: skip
    for axes in (loss_axes, distance_axes):
        axes.grid(alpha=0.3)
    figures.save(figure, path, dpi=100)

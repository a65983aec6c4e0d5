"""The epoch loop of one training session: optimizer per epoch, steps, validation, checkpoints and the state.

:func:`start_session` gathers what the loop reads and updates into a :class:`Session`
(continuing a saved state when resuming); :func:`train_epochs` runs the remaining epochs
and turns Ctrl-C, a NaN step or a full disk into a saved state and a truthful message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from cnnkit import compute
from cnnkit.checkpoint import BEST, LAST, CheckpointWriteError, save_checkpoint, versions
from cnnkit.compute import ComputeSettings
from cnnkit.config import TrainConfig
from cnnkit.data.audio import AudioSplits
from cnnkit.data.audio_augment import AudioBatchAugmentation
from cnnkit.data.loader import num_batches
from cnnkit.data.series import SeriesSplits
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.tasks import Task, monitor_score
from cnnkit.training import runlog
from cnnkit.training.distributed import World, shut_down
from cnnkit.training.interrupts import DeferredInterrupts, StepInterrupt
from cnnkit.training.loop import NonFiniteStep, StepSettings, recompute_batch_norm, train_one_epoch
from cnnkit.training.optim import Optimisation, build_optimizer, finetune_optimizer, starts_phase
from cnnkit.training.prepare import Prepared, sampling_weights
from cnnkit.training.resume import (
    STATE,
    STEPS,
    EpochTally,
    Progress,
    SavedState,
    carry_moments,
    save_state,
    truncate_logs,
)
from cnnkit.training.runlog import StepLog

if TYPE_CHECKING:
    from cnnkit.training.task_session import TaskSession


@dataclass
class Session:
    """What the epoch loop reads and updates; ``order`` draws the data order of an epoch resumed part-way.

    ``trainer`` is the module the steps run: DDP around ``model`` in a distributed run (same
    parameters), else ``model``; evaluation, checkpoints and the state use ``model``.
    """

    config: TrainConfig
    data: Prepared
    task: Task
    model: nn.Module
    device: torch.device
    run_dir: Path
    say: Callable[..., None]
    verbose: bool
    progress: Progress
    optimisation: Optimisation
    steps: StepSettings
    steps_per_epoch: int
    first_epoch: int
    generator: torch.Generator
    order: torch.Generator | None = None
    order_state: torch.Tensor | None = None
    best_state: dict[str, torch.Tensor] | None = None
    on_checkpoint: Callable[..., None] = field(default=lambda **_: None)  # (path=, epoch=, step=)
    world: World = field(default_factory=World)
    trainer: nn.Module | None = None

    def schedule(self, epoch: int) -> Optimisation:
        """A new optimizer and schedule for ``epoch``, keeping the grad scaler."""
        optimizer, scheduler = build_schedule(self.model, self.config, self.progress, epoch, self.steps_per_epoch)
        return Optimisation(optimizer, scheduler, self.optimisation.scaler)

    def starts_cycle(self, epoch: int) -> bool:
        return epoch > 1 and self.progress.cycle(epoch)[0] == epoch and self.progress.tally.batches == 0

    def save_state(self, epoch: int) -> None:
        """Write the resumable state as of the last finished step of ``epoch`` (rank 0 alone writes)."""
        if not self.world.leader:
            return
        state = (self.model, self.best_state, self.optimisation, self.order_state, self.generator)
        save_state(self.run_dir, *state, self.progress, self.data.spec, self.config)
        self.on_checkpoint(path=self.run_dir / STATE, epoch=epoch, step=self.progress.step)

    def save_checkpoint(self, name: str, epoch: int, row: dict[str, float]) -> None:
        if not self.world.leader:
            return
        save_checkpoint(self.run_dir / name, self.model, checkpoint_info(self, epoch, row))
        self.on_checkpoint(path=self.run_dir / name, epoch=epoch, step=self.progress.step)

    def close(self) -> None:
        """Release DDP and the optimizer, then leave the process group: in this order gloo exits cleanly."""
        if self.world.active:
            self.trainer = self.optimisation = None
            shut_down()

    def resume_hint(self) -> str:
        """What to do next: resume from the saved state, or start over when none was saved yet."""
        if (self.run_dir / STATE).exists():
            return f"continue with --resume {self.run_dir}"
        return (
            "run the command again to start over: no resumable state had been saved yet "
            "(one is saved after each epoch and every --save-every N steps)"
        )


def build_schedule(
    model: nn.Module, config: TrainConfig, progress: Progress, epoch: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The optimizer and schedule of ``epoch``: its fine-tuning phase's, or its learning-rate cycle's."""
    if config.finetune:
        return finetune_optimizer(model, config, epoch, steps_per_epoch)
    first, last = progress.cycle(epoch)
    return build_optimizer(model, config, (last - first + 1) * steps_per_epoch)


def start_session(
    config: TrainConfig,
    data: Prepared,
    task: Task,
    model: nn.Module,
    settings: ComputeSettings,
    device: torch.device,
    run_dir: Path,
    saved: SavedState | None,
    say: Callable[..., None],
    verbose: bool,
    world: World | None = None,
) -> Session:
    """Progress, optimizer, generator and step settings at the first step to run; a saved state is loaded back.

    In a distributed run (``world``) every rank loads the same state and draws the same
    generator, and takes its shard of each batch; rank 0 alone truncates and writes the logs.
    """
    world = world or World()
    splits = data.splits
    progress = saved.progress if saved is not None else Progress(cycles=[[1, config.epochs]])
    if progress.cycles[-1][1] < config.epochs:  # a resumed run extended with more epochs: one more cycle
        progress.cycles.append([progress.cycles[-1][1] + 1, config.epochs])
    steps = StepSettings(
        config.batch_size,
        config.clip_grad_norm,
        config.nonfinite == "skip",
        sampling_weights(splits.train.labels, config.sampler),
        data.augment,
        settings,
        (world.rank, world.size),
    )
    generator = torch.Generator().manual_seed(config.seed)
    first_epoch = min(progress.epoch + 1, config.epochs)
    steps_per_epoch = num_batches(splits.train, config.batch_size)
    optimizer, scheduler = build_schedule(model, config, progress, first_epoch, steps_per_epoch)
    optimisation = Optimisation(optimizer, scheduler, compute.grad_scaler(settings))
    session = Session(
        config, data, task, model, device, run_dir, say, verbose, progress, optimisation, steps,
        steps_per_epoch, first_epoch, generator, world=world,
    )  # fmt: skip
    if saved is not None:
        # At the first step of a new fine-tuning phase the uninterrupted run starts a fresh optimizer too.
        fresh = config.finetune and first_epoch > 1 and starts_phase(config, first_epoch) and not progress.tally.batches
        kept_scheduler = None if fresh or session.starts_cycle(first_epoch) else optimisation.scheduler
        session.best_state = saved.restore(
            model, None if fresh else optimisation.optimizer, kept_scheduler, generator, optimisation.scaler
        )
        session.order = saved.order_generator()
        if world.leader:
            truncate_logs(run_dir, progress)
        say(f"resuming {run_dir} at epoch {progress.epoch + 1}, step {progress.step}")
    session.trainer = world.wrap(model, device)
    world.record(run_dir, "nccl" if device.type == "cuda" else "gloo")
    return session


def checkpoint_info(session: Session, epoch: int, row: dict[str, float]) -> CheckpointInfo:
    """What a checkpoint carries besides the weights: enough to rebuild, preprocess and tell runs apart."""
    data, splits = session.data, session.data.splits
    # series: format, files, lengths, normalisation; audio: the clip rule
    facts = splits.facts() if isinstance(splits, (SeriesSplits, AudioSplits)) else {}
    extra = {
        "config": session.config.to_dict(),
        "data": {"name": splits.name, "split_rule": splits.split_rule, **facts},
        "epoch": epoch,
        "metrics": row,
        "versions": versions(),
        "device": str(session.device),
        "tta": data.tta,
    }
    return CheckpointInfo(data.spec, data.splits.classes, data.preprocessing, extra)


def train_epochs(session: Session, on_epoch_end: Callable[..., None]) -> bool:
    """Run the remaining epochs, calling ``on_epoch_end(row=...)`` after each; True if Ctrl-C stopped them.

    Ctrl-C between two steps saves the exact state; at any time it saves ``last``.
    """
    config, progress, run_dir = session.config, session.progress, session.run_dir
    steps = StepLog(run_dir / STEPS) if session.world.leader else None
    try:
        try:
            for epoch in range(progress.epoch + 1, config.epochs + 1):
                on_epoch_end(row=run_epoch(session, epoch, steps))
        except KeyboardInterrupt as stop:
            keep_interrupted(session, stop)
            return True
    except NonFiniteStep as error:
        saved = (run_dir / STATE).exists()
        kept = f"the last good state is kept in {run_dir / STATE}" if saved else "no resumable state had been saved yet"
        raise CnnkitError(
            f"training stopped at step {progress.step + 1} (epoch {progress.epoch + 1}): {error}; {kept}. "
            f"Lower --lr (now {config.lr}), add --clip-grad-norm 1.0, or pass --nonfinite skip to skip such steps"
        ) from None
    except CheckpointWriteError as error:
        raise CnnkitError(f"{error}; free some space, then {session.resume_hint()}") from None
    finally:
        if steps is not None:
            steps.close()
    return False


def keep_interrupted(session: Session | TaskSession, stop: KeyboardInterrupt) -> None:
    """After Ctrl-C: the state if it came between two steps, ``last`` as of the last epoch, and what to do next."""
    progress, run_dir = session.progress, session.run_dir
    if isinstance(stop, StepInterrupt):  # between two steps: the state now is exact
        session.save_state(progress.epoch + 1)
    history = progress.history
    session.save_checkpoint(LAST, len(history), history[-1] if history else {})
    session.say(f"\ninterrupted: last checkpoint kept at {run_dir / LAST}; {session.resume_hint()}")


def run_epoch(session: Session, epoch: int, steps: StepLog | None) -> dict[str, float]:
    """Train one epoch, validate, write its row, ``last``, ``best`` when better, and the state; returns the row."""
    config, progress, task, data = session.config, session.progress, session.task, session.data
    optimisation = session.optimisation
    if epoch > session.first_epoch and config.finetune and starts_phase(config, epoch):
        session.optimisation = optimisation = session.schedule(epoch)
    elif epoch > session.first_epoch and not config.finetune and session.starts_cycle(epoch):
        new = session.schedule(epoch)
        session.optimisation = optimisation = replace_moments(optimisation, new)
    session.order_state = (session.order or session.generator).get_state()
    quiet = None if session.verbose else True  # None: a bar only on a terminal
    description = f"epoch {epoch}/{config.epochs}"
    bar = tqdm(
        total=session.steps_per_epoch, initial=progress.tally.batches, desc=description, leave=False, disable=quiet
    )
    world = session.world
    interrupts = DeferredInterrupts(shared=world.active)
    name = task.score_name

    def reduce(numbers: torch.Tensor) -> torch.Tensor:  # one all-reduce a step: its numbers and any rank's Ctrl-C
        total = world.all_sum(torch.cat([numbers, numbers.new_tensor([float(interrupts.pending)])]))
        interrupts.agree(bool(total[-1] > 0))
        return total[:-1]

    def on_step(loss: float, skipped: bool) -> None:
        progress.step += 1
        progress.skipped_steps += skipped
        if steps is not None:
            steps.write(progress.step, epoch, loss, skipped)
        tally = progress.tally
        bar.update()
        if tally.batches % 10 == 0 and tally.seen:
            bar.set_postfix_str(f"loss {tally.total_loss / tally.seen:.4f} {name} {tally.correct / tally.seen:.2%}")
        if config.save_every and progress.step % config.save_every == 0:
            session.save_state(epoch)
        interrupts.check()

    epoch_start = time.perf_counter()
    splits, prep, device = data.splits, data.preprocessing, session.device
    audio = isinstance(data.augment, AudioBatchAugmentation)
    masks = data.augment.masking(session.model, session.generator) if audio else nullcontext()
    with bar, interrupts, masks:  # an audio run's SpecAugment hook on the model's front end, for the steps only
        while True:
            try:
                train_loss, train_score = train_one_epoch(
                    session.trainer or session.model, splits.train, prep, task, optimisation, device,
                    session.generator, session.steps, progress.tally, on_step, session.order,
                    reduce if world.active else None,
                )  # fmt: skip
                break
            except NonFiniteStep as error:
                fall_back_to_fp32(session, error, session.world.leader)
    session.order = None  # the next epoch draws its order from the training generator again
    statistics = data.augment if audio else None  # an audio run's batch norms measured on the clips as trained
    recompute_batch_norm(session.model, splits.train, prep, device, config.batch_size, augment=statistics)
    val = task.evaluate(session.model, splits.val, prep, device)
    row = {
        "epoch": epoch,
        "train_loss": train_loss,
        f"train_{name}": train_score,
        **{f"val_{key}": value for key, value in task.metrics(val).items()},
        "lr": optimisation.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - epoch_start,
    }
    progress.history.append(row)
    if world.leader:
        runlog.append_row(session.run_dir / "metrics.csv", row)
    session.save_checkpoint(LAST, epoch, row)
    monitor = task.monitor if len(splits.val) else tuple(key.replace("val_", "train_") for key in task.monitor)
    score = monitor_score(row, monitor)
    if score is not None and (progress.best_score is None or score > progress.best_score):
        progress.best_score, progress.best_epoch = score, epoch
        session.best_state = {k: v.detach().clone() for k, v in session.model.state_dict().items()}
        session.save_checkpoint(BEST, epoch, row)
    progress.epoch, progress.tally = epoch, EpochTally()
    session.order_state = session.generator.get_state()
    session.save_state(epoch)
    shown = ("val_loss", f"val_{name}")  # a task's further validation metrics follow, e.g. an embedding's recall@1
    more = "".join(f" {key[4:]} {row[key]:.2%}" for key in row if key.startswith("val_") and key not in shown)
    session.say(
        f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  train loss {train_loss:.4f} "
        f"{name} {train_score:.2%}  val loss {row['val_loss']:.4f} {name} {row[f'val_{name}']:.2%}{more}  "
        f"{row['seconds']:.1f}s"
    )
    return row


def fall_back_to_fp32(session: Session | TaskSession, error: NonFiniteStep, record: bool = True) -> None:
    """After a NaN or infinite step on ``auto``'s bf16, go on in fp32 from that step; else re-raise.

    The loop raises before the weights change, so the step is repeated from the same weights.
    ``record`` writes the new precision to the run's log (in a distributed run rank 0 alone does).
    """
    fp32 = compute.fall_back(session.steps.compute, f"step {session.progress.step + 1} ({error})")
    if fp32 is None:
        raise error
    session.steps = replace(session.steps, compute=fp32)
    session.order = torch.Generator().set_state(session.order_state)  # the epoch's order again, from the failed step
    if record:
        runlog.record_compute(session.run_dir, fp32.to_dict())
    session.say(f"{fp32.precision_note}: the step is repeated and the run goes on in fp32")


def replace_moments(old: Optimisation, new: Optimisation) -> Optimisation:
    """The new learning-rate cycle's optimizer, carrying the moments the old one learned."""
    return Optimisation(carry_moments(old.optimizer, new.optimizer), new.scheduler, old.scaler)

"""The epoch loop of a detection run: steps, batch-norm statistics, validation mAP, checkpoints and the state.

Classification's loop (:mod:`cnnkit.training.session`) with a detector's epoch and metric:
each epoch trains (:func:`cnnkit.training.detect_epoch.train_detection_epoch`), recomputes
the batch-norm statistics, measures COCO mAP on the validation images in original pixels
(:func:`cnnkit.tasks.detect.evaluate.evaluate_boxes`), writes its row to ``metrics.csv``,
``last.safetensors``, ``best.safetensors`` when its mAP is the best so far, and the
resumable state (:func:`cnnkit.training.resume.save_state`, the same file format).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from cnnkit.checkpoint import BEST, LAST, versions
from cnnkit.data.box_augment import BoxAugmentation
from cnnkit.data.boxset import DecodedDetection
from cnnkit.modelinfo import CheckpointInfo, Preprocessing
from cnnkit.models import ModelSpec
from cnnkit.tasks import monitor_score
from cnnkit.tasks.detect import MONITOR
from cnnkit.tasks.detect.evaluate import evaluate_boxes
from cnnkit.training import runlog
from cnnkit.training.detect_epoch import recompute_detector_batch_norm, train_detection_epoch
from cnnkit.training.interrupts import DeferredInterrupts
from cnnkit.training.loop import NonFiniteStep
from cnnkit.training.optim import Optimisation
from cnnkit.training.resume import STEPS, EpochTally, carry_moments
from cnnkit.training.runlog import StepLog
from cnnkit.training.session import build_schedule, fall_back_to_fp32
from cnnkit.training.task_session import TaskSession


@dataclass
class DetectionData:
    """The decoded splits and what follows from them: preprocessing, architecture, augmentation."""

    splits: DecodedDetection
    preprocessing: Preprocessing
    spec: ModelSpec
    augment: BoxAugmentation | None


@dataclass(kw_only=True)
class DetectionSession(TaskSession):
    """What the epoch loop reads and updates: a task's fields, and where a new learning-rate cycle starts."""

    data: DetectionData
    steps_per_epoch: int
    first_epoch: int

    def checkpoint_info(self, epoch: int, row: dict[str, float]) -> CheckpointInfo:
        """What a detector's checkpoint carries: spec, classes and preprocessing to rebuild it, and the run's facts."""
        data, splits = self.data, self.data.splits
        extra = {
            "config": self.config.to_dict(),
            "task": "detect",
            "data": {"name": splits.name, "format": splits.format, "split_rule": splits.split_rule},
            "epoch": epoch,
            "metrics": row,
            "versions": versions(),
            "device": str(self.device),
        }
        return CheckpointInfo(data.spec, splits.classes, data.preprocessing, extra)


def train_detection_epochs(session: DetectionSession) -> bool:
    """Run the remaining epochs, each step's loss in ``steps.csv``; True if Ctrl-C stopped them."""
    steps = StepLog(session.run_dir / STEPS)
    try:
        return session.train_epochs(lambda epoch: run_detection_epoch(session, epoch, steps))
    finally:
        steps.close()


def run_detection_epoch(session: DetectionSession, epoch: int, steps: StepLog) -> dict[str, float]:
    """Train one epoch, validate, write its row, ``last``, ``best`` when better, and the state; returns the row."""
    config, progress, data = session.config, session.progress, session.data
    splits, prep, device = data.splits, data.preprocessing, session.device
    if epoch > session.first_epoch and epoch > 1 and progress.cycle(epoch)[0] == epoch:  # an extended run's new cycle
        optimizer, scheduler = build_schedule(session.model, config, progress, epoch, session.steps_per_epoch)
        old = session.optimisation
        session.optimisation = Optimisation(carry_moments(old.optimizer, optimizer), scheduler, old.scaler)
    session.order_state = (session.order or session.generator).get_state()
    interrupts = DeferredInterrupts()

    def on_step(loss: float, skipped: bool) -> None:
        progress.step += 1
        progress.skipped_steps += skipped
        steps.write(progress.step, epoch, loss, skipped)
        if config.save_every and progress.step % config.save_every == 0:
            session.save_state(epoch)
        interrupts.check()

    started = time.perf_counter()
    with interrupts:
        while True:
            try:
                losses = train_detection_epoch(
                    session.model, splits.train, prep, session.optimisation, device, session.generator,
                    session.steps, data.augment, progress.tally, on_step, session.order,
                )  # fmt: skip
                break
            except NonFiniteStep as error:  # auto's bf16: repeat the step in fp32, as classification does
                fall_back_to_fp32(session, error)
    session.order = None
    recompute_detector_batch_norm(session.model, splits.train, prep, device, config.batch_size)
    val = evaluate_boxes(session.model, splits.val, prep, device) if len(splits.val) else None
    row = {
        "epoch": epoch,
        **{f"train_{name}": value for name, value in losses.items()},
        "val_map": val.map if val else math.nan,
        "val_map50": val.map50 if val else math.nan,
        "lr": session.optimisation.optimizer.param_groups[0]["lr"],
        "seconds": time.perf_counter() - started,
    }
    progress.history.append(row)
    runlog.append_row(session.run_dir / "metrics.csv", row)
    session.save_checkpoint(LAST, epoch, row)
    score = monitor_score(row, MONITOR if val else ("-train_loss",))
    if score is not None and (progress.best_score is None or score > progress.best_score):
        progress.best_score, progress.best_epoch = score, epoch
        session.best_state = {k: v.detach().clone() for k, v in session.model.state_dict().items()}
        session.save_checkpoint(BEST, epoch, row)
    progress.epoch, progress.tally = epoch, EpochTally()
    session.order_state = session.generator.get_state()
    session.save_state(epoch)
    parts = "  ".join(f"{name[6:]} {value:.4f}" for name, value in row.items() if name.startswith("train_"))
    shown = f"val mAP {row['val_map']:.3f} mAP@0.5 {row['val_map50']:.3f}" if val else "no val images"
    session.say(f"epoch {epoch:>{len(str(config.epochs))}}/{config.epochs}  {parts}  {shown}  {row['seconds']:.1f}s")
    return row

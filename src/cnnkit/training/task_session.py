"""What a task's own epoch loop shares (detection's, the GAN's): the session's fields, its epochs and its saving.

Classification's :class:`cnnkit.training.session.Session` without a distributed world: one
process writes, fit's callbacks hear every event through ``notify``, and a task's subclass
says what its checkpoints carry and runs its own epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.checkpoint import CheckpointWriteError, save_checkpoint
from cnnkit.config import TrainConfig
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.training.loop import NonFiniteStep, StepSettings
from cnnkit.training.optim import Optimisation
from cnnkit.training.resume import STATE, Progress, save_state
from cnnkit.training.session import keep_interrupted


@dataclass(kw_only=True)
class TaskSession:
    """What a task's epoch loop reads and updates; a subclass narrows ``data`` and adds its own fields."""

    config: TrainConfig
    data: Any  # the task's prepared data; the state records its ``spec``
    model: nn.Module
    device: torch.device
    run_dir: Path
    say: Callable[..., None]
    progress: Progress
    optimisation: Optimisation
    steps: StepSettings
    generator: torch.Generator
    order: torch.Generator | None = None
    order_state: torch.Tensor | None = None
    best_state: dict[str, torch.Tensor] | None = None
    notify: Callable[..., None] = field(default=lambda *_, **__: None)  # (event, **kwargs): fit's callbacks

    def checkpoint_info(self, epoch: int, row: dict[str, float]) -> CheckpointInfo:
        """What a checkpoint of ``epoch`` carries besides the weights: the task's facts."""
        raise NotImplementedError

    def save_state(self, epoch: int) -> None:
        state = (self.model, self.best_state, self.optimisation, self.order_state, self.generator)
        save_state(self.run_dir, *state, self.progress, self.data.spec, self.config)
        self.notify(
            "on_checkpoint", run_dir=self.run_dir, path=self.run_dir / STATE, epoch=epoch, step=self.progress.step
        )

    def save_checkpoint(self, name: str, epoch: int, row: dict[str, float]) -> None:
        save_checkpoint(self.run_dir / name, self.model, self.checkpoint_info(epoch, row))
        self.notify(
            "on_checkpoint", run_dir=self.run_dir, path=self.run_dir / name, epoch=epoch, step=self.progress.step
        )

    def resume_hint(self) -> str:
        if (self.run_dir / STATE).exists():
            return f"continue with --resume {self.run_dir}"
        return "run the command again to start over: no resumable state had been saved yet"

    def train_epochs(self, run_epoch: Callable[[int], dict[str, float]]) -> bool:
        """Run the remaining epochs through ``run_epoch(epoch) -> row``; True if Ctrl-C stopped them.

        Ctrl-C between two steps saves the exact state; at any time it saves ``last``.
        """
        config, progress = self.config, self.progress
        try:
            try:
                for epoch in range(progress.epoch + 1, config.epochs + 1):
                    self.notify("on_epoch_end", run_dir=self.run_dir, row=run_epoch(epoch))
            except KeyboardInterrupt as stop:
                keep_interrupted(self, stop)
                return True
        except NonFiniteStep as error:
            raise CnnkitError(
                f"training stopped at step {progress.step + 1} (epoch {progress.epoch + 1}): {error}. "
                f"Lower --lr (now {config.lr}), add --clip-grad-norm 1.0, or pass --nonfinite skip; "
                f"{self.resume_hint()}"
            ) from None
        except CheckpointWriteError as error:
            raise CnnkitError(f"{error}; free some space, then {self.resume_hint()}") from None
        return False

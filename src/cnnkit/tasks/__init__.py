"""What a network is trained to do: the small protocol the training loop relies on.

A task supplies the loss of a batch, how a training batch is scored, which metrics of an
epoch pick the best weights, how a split is evaluated, and the records a prediction
becomes. ``training/`` calls only these, so a new task (embeddings, detection) plugs in
by implementing them in its own package here, without a change to the loop. There are
two, chosen by ``--task``: :class:`cnnkit.tasks.classify.ClassifyTask` and
:class:`cnnkit.tasks.embed.EmbedTask` (an embedding for similarity search).

This module imports no PyTorch, so the packages under it stay light to import.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from cnnkit.data import ImageSet
    from cnnkit.modelinfo import Preprocessing


class Task(Protocol):
    """What a trained network is for, as the training loop sees it.

    Attributes:
        score_name: The metric a training batch is scored by, e.g. ``acc``; the epoch row
            holds ``train_<score_name>`` and ``val_<score_name>``.
        monitor: Epoch-row keys that pick the best epoch, compared in order with later
            keys breaking ties; a leading ``-`` means lower is better, e.g.
            ``("val_acc", "-val_loss")``.
    """

    score_name: str
    monitor: tuple[str, ...]

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training loss of a batch: a scalar tensor to backpropagate."""
        ...

    def score_batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The batch's score summed over its items (a scalar tensor, left on the device until read)."""
        ...

    def evaluate(
        self, model: nn.Module, data: ImageSet, preprocessing: Preprocessing, device: torch.device, tta: bool = False
    ) -> Any:
        """The task's result on a split; :meth:`metrics` turns it into epoch-row values."""
        ...

    def metrics(self, result: Any) -> dict[str, float]:
        """``{"loss": ..., score_name: ...}`` of an :meth:`evaluate` result."""
        ...

    def records(self, probabilities: np.ndarray, sources: Sequence[str], top_k: int = 5) -> list[Any]:
        """One record per input from its (N, K) model outputs, as a prediction is written out (``predict``)."""
        ...


def monitor_score(row: Mapping[str, float], monitor: Sequence[str]) -> list[float] | None:
    """The values of ``monitor`` in an epoch row, signed so that higher is better; None if any is NaN.

    Lists compare element by element, so ``monitor_score(a) > monitor_score(b)`` picks the
    better epoch with the later keys breaking ties.

    Example:
        >>> monitor_score({"val_acc": 0.9, "val_loss": 0.3}, ("val_acc", "-val_loss"))
        [0.9, -0.3]
    """
    score = [-row[key[1:]] if key.startswith("-") else row[key] for key in monitor]
    return None if any(math.isnan(value) for value in score) else score

"""Classification: one label per image, learned with cross-entropy and scored by accuracy.

:class:`ClassifyTask` is the :class:`cnnkit.tasks.Task` that ``cnnkit train`` uses, and every
classifier ranks its predictions through it. PyTorch and the evaluation code are imported
inside its methods (the loss is made at the first step), so importing this package and
ranking predictions (as ONNX Runtime-only prediction does) need no PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.tasks.classify.records import Prediction, rank

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cnnkit.data import ImageSet
    from cnnkit.modelinfo import Preprocessing
    from cnnkit.tasks.classify.metrics import EvalResult


@dataclass
class ClassifyTask:
    """Cross-entropy on logits (B, K) against class indices (B,), scored by the number of right answers.

    The best epoch has the highest validation accuracy, then the lowest validation loss.

    Args:
        classes: The K class names, in label order (named in prediction records).
        class_weights: Loss weight per class (K,), e.g. inversely proportional to class
            frequency; None weighs every image alike. Defaults to None.
        label_smoothing: Share of each target spread evenly over all classes. Defaults to 0.

    Example:
        >>> task = ClassifyTask(["cat", "dog"])
        >>> task.score_batch(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])).item()
        1
    """

    classes: list[str]
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    score_name: str = "acc"
    monitor: tuple[str, ...] = ("val_acc", "-val_loss")

    def __post_init__(self) -> None:
        self._loss: nn.Module | None = None  # made at the first loss: a task that only ranks predictions needs no torch

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self._loss is None:
            from torch import nn

            self._loss = nn.CrossEntropyLoss(weight=self.class_weights, label_smoothing=self.label_smoothing)
        return self._loss(outputs, targets)  # outputs (B, K) logits, targets (B,) class indices

    def score_batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(1) == targets).sum()

    def evaluate(
        self, model: nn.Module, data: ImageSet, preprocessing: Preprocessing, device: torch.device, tta: bool = False
    ) -> EvalResult:
        from cnnkit.tasks.classify.evaluate import evaluate

        return evaluate(model, data, preprocessing, device, tta=tta)

    def metrics(self, result: EvalResult) -> dict[str, float]:
        return {"loss": result.loss, self.score_name: result.accuracy}

    def records(self, probabilities: np.ndarray, sources: Sequence[str], top_k: int = 5) -> list[Prediction]:
        """The top ``top_k`` labels of each image from class probabilities (N, K), as ``predict`` writes them."""
        return rank(probabilities, self.classes, sources, top_k)

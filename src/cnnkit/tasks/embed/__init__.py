"""Embeddings: vectors in which images of one class are close, for similarity search.

:class:`EmbedTask` is the :class:`cnnkit.tasks.Task` of ``cnnkit train --task embed``. The
network is an :class:`cnnkit.models.embedding.EmbeddingNetwork` (normalised softmax, Zhai &
Wu 2019: cosine logits to learnable class proxies), so the loss is cross-entropy on its
logits and the training loop is unchanged; the searched vector is the backbone's
normalised pooled convolutional features, the projection and proxies (and any hidden head
layer) a head for the loss only. What differs is what picks the best epoch and
what is reported: leave-one-out Recall@1 on the validation images of the seen classes picks
the epoch (never the held-out test classes, which would select on the test set), and
Recall@1/2/4/8 and MAP@R on the held-out classes' test images are the result
(:mod:`cnnkit.tasks.embed.holdout`).
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
    from cnnkit.tasks.embed.evaluate import EmbedResult


@dataclass
class EmbedTask:
    """Cross-entropy on cosine logits (B, K) to the K seen classes' proxies; the best epoch by validation Recall@1.

    A training batch is scored by the proxies' accuracy (``acc``), which needs no search;
    an epoch's validation row adds ``recall@1`` and ``map@r``. Ties in Recall@1 go to the
    lower validation loss.

    Args:
        classes: The K seen class names, in label order (the proxies' names).
        class_weights: Loss weight per class (K,); None weighs every image alike. Defaults to None.
        label_smoothing: Share of each target spread evenly over all classes. Defaults to 0.

    Example:
        >>> task = EmbedTask(["cat", "dog"])
        >>> task.monitor
        ('val_recall@1', '-val_loss')
    """

    classes: list[str]
    class_weights: torch.Tensor | None = None
    label_smoothing: float = 0.0
    score_name: str = "acc"
    monitor: tuple[str, ...] = ("val_recall@1", "-val_loss")

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        from torch.nn import functional

        # outputs (B, K) scaled cosines, targets (B,) class indices
        return functional.cross_entropy(outputs, targets, self.class_weights, label_smoothing=self.label_smoothing)

    def score_batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return (outputs.argmax(1) == targets).sum()

    def evaluate(
        self, model: nn.Module, data: ImageSet, preprocessing: Preprocessing, device: torch.device, tta: bool = False
    ) -> EmbedResult:
        from cnnkit.tasks.embed.evaluate import evaluate

        return evaluate(model, data, preprocessing, device, self.classes, tta=tta)

    def metrics(self, result: EmbedResult) -> dict[str, float]:
        return {
            "loss": result.loss,
            self.score_name: result.accuracy,
            "recall@1": result.metrics["recall@1"],
            "map@r": result.metrics["map@r"],
        }

    def records(self, probabilities: np.ndarray, sources: Sequence[str], top_k: int = 5) -> list[Prediction]:
        """The seen classes nearest each image, by softmax of its cosines to their proxies (N, K), as ``predict`` does.

        Images of other classes get the nearest seen classes too; ``cnnkit index`` and
        ``cnnkit search`` find similar images of any class.
        """
        return rank(probabilities, self.classes, sources, top_k)

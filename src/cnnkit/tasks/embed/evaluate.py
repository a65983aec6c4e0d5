"""Scoring an embedding: L2-normalised vectors for uint8 images, and leave-one-out Recall@K and MAP@R."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from cnnkit.data import ImageSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.classify.evaluate import predict_logits
from cnnkit.tasks.embed.metrics import retrieval_metrics

RECALL_AT = (1, 2, 4, 8)  # the Ks the field reports (Musgrave et al. 2020; Zhai & Wu 2019)


class EmbeddingForward(nn.Module):
    """``model.forward_embedding`` as a module's forward: (B, C, H, W) -> (B, D) L2-normalised.

    With ``flip`` the embedding of an image and of its mirror image are summed before
    normalising (the embedding's test-time flip; the classifier's averages probabilities).
    """

    def __init__(self, model: nn.Module, flip: bool = False) -> None:
        super().__init__()
        self.model, self.flip = model, flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        vectors = functional.normalize(self.model.forward_embedding(images).float(), dim=1)  # (B, D)
        if self.flip:
            vectors = vectors + functional.normalize(self.model.forward_embedding(images.flip(-1)).float(), dim=1)
        return functional.normalize(vectors, dim=1)


def embed_images(
    model: nn.Module, images: torch.Tensor, preprocessing: Preprocessing, device: torch.device, tta: bool = False
) -> torch.Tensor:
    """L2-normalised embeddings (N, D) on the CPU of uint8 images (N, C, H, W), in memory-bounded batches.

    Any :class:`~cnnkit.models.network.Network` works: an embedding run's own vector, or a
    classifier's features (the input of its classifier).
    """
    return predict_logits(EmbeddingForward(model, tta), images, preprocessing, device)


@dataclass
class EmbedResult:
    """Retrieval quality of an embedding on one set of labelled images, each a query against the others.

    ``loss`` and ``accuracy`` are those of the class proxies (cosine logits) and are NaN on
    images of classes the model was not trained on, the held-out test classes.
    """

    metrics: dict[str, float]
    count: int
    classes: list[str]
    loss: float = math.nan
    accuracy: float = math.nan
    held_out: bool = False

    def to_dict(self) -> dict:
        """``recall@K`` for each K, ``map@r``, ``queries``, ``count``, ``classes``; the proxies' loss where defined."""
        proxies = {} if self.held_out else {"loss": self.loss, "accuracy": self.accuracy}
        return {**self.metrics, "count": self.count, "classes": self.classes, **proxies}

    def describe(self) -> str:
        """One line: Recall@1/2/4/8 and MAP@R, on how many images of how many classes."""
        recalls = " ".join(f"R@{k} {self.metrics[f'recall@{k}']:.2%}" for k in RECALL_AT)
        return f"{recalls}  MAP@R {self.metrics['map@r']:.2%} on {self.count} images of {len(self.classes)} classes"

    def format(self) -> str:
        """The terminal form of ``cnnkit evaluate``: the metrics, how they were measured, the classes searched."""
        return (
            f"{self.describe()}\n(leave-one-out: each image a query against all the others)\n"
            f"classes: {', '.join(self.classes)}"
        )


def evaluate(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    device: torch.device,
    trained_classes: list[str] | None = None,
    tta: bool = False,
) -> EmbedResult:
    """Leave-one-out retrieval metrics of ``model``'s embeddings of ``data``.

    When ``data`` holds the ``trained_classes`` (validation), the loss and accuracy of the
    proxies come too, from the same embeddings (the cosine classifier normalises its input,
    so one forward pass serves both).
    """
    vectors = embed_images(model, data.images, preprocessing, device, tta=tta)
    metrics = retrieval_metrics(vectors, data.labels, RECALL_AT)
    if data.classes != trained_classes or not len(data):
        return EmbedResult(metrics, len(data), data.classes, held_out=True)
    with torch.no_grad():
        logits = model.get_classifier()(vectors.to(device)).float().cpu()  # (N, K) scaled cosines
    loss = functional.cross_entropy(logits, data.labels).item()
    accuracy = (logits.argmax(1) == data.labels).double().mean().item()
    return EmbedResult(metrics, len(data), data.classes, loss, accuracy)

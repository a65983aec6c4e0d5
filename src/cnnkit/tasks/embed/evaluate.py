"""Scoring an embedding: L2-normalised vectors for uint8 images, and leave-one-out Recall@K and MAP@R."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional

from cnnkit.data import ImageSet
from cnnkit.data.imageset import SkippedFile
from cnnkit.data.labelled import labelled_images, takes_split
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.classify.evaluate import predict_logits
from cnnkit.tasks.embed.holdout import held_out_classes, keep_classes
from cnnkit.tasks.embed.metrics import retrieval_metrics

if TYPE_CHECKING:
    from cnnkit.deploy.classifier import Classifier

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
    proxies come too, from a second pass through the whole network: the embedding may be
    the features under the projection, which the proxies do not take.
    """
    vectors = embed_images(model, data.images, preprocessing, device, tta=tta)
    metrics = retrieval_metrics(vectors, data.labels, RECALL_AT)
    if data.classes != trained_classes or not len(data):
        return EmbedResult(metrics, len(data), data.classes, held_out=True)
    with torch.no_grad():
        logits = predict_logits(model, data.images, preprocessing, device, tta=tta)  # (N, K) scaled cosines
    loss = functional.cross_entropy(logits, data.labels).item()
    accuracy = (logits.argmax(1) == data.labels).double().mean().item()
    return EmbedResult(metrics, len(data), data.classes, loss, accuracy)


def embedding_images(classifier: Classifier, data: str | None, split: str) -> tuple[ImageSet, list[SkippedFile]]:
    """The labelled images ``cnnkit evaluate`` searches for an embedding run, and any skipped files.

    On the run's own data the split keeps the classes it had in training: ``test`` the
    held-out classes (the run's result), ``train`` and ``val`` the seen ones. Other data is
    searched with all its classes, whatever the model was trained on.

    Raises:
        CnnkitError: ``classifier`` runs an ONNX export, which holds the proxies' logits but not the embedding.
    """
    if not hasattr(getattr(classifier, "model", None), "forward_embedding"):
        raise CnnkitError(
            "an ONNX export of an embedding run gives the class proxies' logits, not the embedding; "
            "evaluate the run directory or its checkpoint"
        )
    prep, config = classifier.preprocessing, classifier.info.extra.get("config", {})
    images, skipped = labelled_images(data, split, None, (prep.img_size, prep.channels, prep.resize), config)
    if takes_split(data, config) and _is_training_data(data, config):
        held_out = held_out_classes(images.classes, config.get("held_out"))
        kept = held_out if split == "test" else [name for name in images.classes if name not in held_out]
        images = keep_classes(images, kept)
    return images, skipped


def _is_training_data(data: str | None, config: dict) -> bool:
    trained_on = config.get("data")
    if data is None or data == trained_on:
        return True
    return trained_on is not None and Path(data).expanduser().resolve() == Path(trained_on).expanduser().resolve()


def evaluate_embedding(
    classifier: Classifier, data: str | None = None, split: str = "test"
) -> tuple[EmbedResult, list[SkippedFile]]:
    """Retrieval metrics of an embedding run on :func:`embedding_images`, as ``cnnkit evaluate`` reports them."""
    images, skipped = embedding_images(classifier, data, split)
    tta = classifier.info.test_time_flip
    result = evaluate(classifier.model, images, classifier.preprocessing, classifier.device, classifier.classes, tta)
    return result, skipped

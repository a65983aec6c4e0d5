"""Scoring a classifier: logits for uint8 images or float series, and loss, accuracy and per-class metrics."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnkit.data import ImageSet
from cnnkit.data.series import SeriesSet
from cnnkit.modelinfo import Preprocessing, SeriesPreprocessing
from cnnkit.tasks.classify.metrics import EvalResult, confusion_matrix, per_class_report
from cnnkit.tasks.classify.tta import FlipAveraged

EVAL_BATCH_VALUES = 1 << 22  # pixel values per evaluation batch: 16 MB as float32


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    preprocessing: Preprocessing | SeriesPreprocessing,
    device: torch.device,
    batch_size: int = 256,
    tta: bool = False,
) -> torch.Tensor:
    """Logits (N, K) on the CPU for uint8 images (N, C, H, W), or float series (N, C, L) with their preprocessing.

    ``tta`` averages the predictions for each image and its mirror image
    (:class:`~cnnkit.tasks.classify.tta.FlipAveraged`). Batches are taken one at a time, so a
    memory-mapped set is never copied whole, and large images come in smaller batches (at
    most ``EVAL_BATCH_VALUES`` pixel values), so evaluating 200-pixel photos
    needs no more memory than training on them.
    """
    model = FlipAveraged(model) if tta else model
    model.eval()
    per_image = images[0].numel() if len(images) else 1
    batch_size = max(1, min(batch_size, EVAL_BATCH_VALUES // per_image))
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        outputs.append(model(preprocessing.normalize(batch)).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


def score(logits: torch.Tensor, labels: torch.Tensor, classes: list[str]) -> EvalResult:
    """Loss, accuracy, confusion matrix and per-class report of logits (N, K) against labels (N,).

    The one place a classifier's predictions become the numbers users read: evaluation,
    the report, ONNX Runtime, int8 quantization and the benchmark all score through it, so
    they cannot disagree. No images give NaN loss and accuracy and an all-zero matrix.

    Args:
        logits: Model outputs (N, K), any real values (test-time flip output included).
        labels: True class indices (N,) into ``classes``.
        classes: The K class names.

    Example:
        >>> score(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), ["a", "b"]).accuracy
        0.5
    """
    num_classes = len(classes)
    if len(labels) == 0:
        empty = torch.zeros(num_classes, num_classes, dtype=torch.long)
        return EvalResult(math.nan, math.nan, empty.tolist(), per_class_report(empty, classes), classes)
    logits = logits.float()
    predictions = logits.argmax(1)
    confusion = confusion_matrix(predictions, labels, num_classes)
    loss = nn.functional.cross_entropy(logits, labels).item()
    accuracy = (predictions == labels).double().mean().item()
    return EvalResult(loss, accuracy, confusion.tolist(), per_class_report(confusion, classes), classes)


def evaluate(
    model: nn.Module,
    data: ImageSet | SeriesSet,
    preprocessing: Preprocessing | SeriesPreprocessing,
    device: torch.device,
    batch_size: int = 256,
    tta: bool = False,
) -> EvalResult:
    """:func:`score` of ``model`` on ``data``; test-time flip with ``tta``."""
    logits = predict_logits(model, data.inputs, preprocessing, device, batch_size, tta=tta)
    return score(logits, data.labels, data.classes)

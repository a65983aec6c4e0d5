"""Scoring a classifier: logits for uint8 images, and loss, accuracy and per-class metrics against labels."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnkit.data import ImageSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.tasks.classify.metrics import EvalResult, confusion_matrix, per_class_report
from cnnkit.tasks.classify.tta import FlipAveraged

EVAL_BATCH_VALUES = 1 << 22  # pixel values per evaluation batch: 16 MB as float32


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int = 256,
    flip: bool = False,
    tta: bool = False,
) -> torch.Tensor:
    """Logits (N, K) on the CPU for uint8 images (N, C, H, W).

    ``flip`` mirrors the images left to right; ``tta`` averages the predictions for each
    image and its mirror (:class:`~cnnkit.tasks.classify.tta.FlipAveraged`). Batches are taken one at a
    time, so a memory-mapped set is never copied whole, and large images come in smaller
    batches (at most ``EVAL_BATCH_VALUES`` pixel values), so evaluating 200-pixel photos
    needs no more memory than training on them.
    """
    model = FlipAveraged(model) if tta else model
    model.eval()
    per_image = images[0].numel() if len(images) else 1
    batch_size = max(1, min(batch_size, EVAL_BATCH_VALUES // per_image))
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        outputs.append(model(preprocessing.normalize(batch.flip(-1) if flip else batch)).float().cpu())
    return torch.cat(outputs) if outputs else torch.zeros(0, 0)


def evaluate(
    model: nn.Module,
    data: ImageSet,
    preprocessing: Preprocessing,
    device: torch.device,
    batch_size: int = 256,
    tta: bool = False,
) -> EvalResult:
    """Loss, accuracy, confusion matrix and per-class report of ``model`` on ``data``; test-time flip with ``tta``."""
    num_classes = len(data.classes)
    if len(data) == 0:
        empty = [[0] * num_classes for _ in range(num_classes)]
        return EvalResult(math.nan, math.nan, empty, per_class_report(torch.tensor(empty), data.classes), data.classes)
    logits = predict_logits(model, data.images, preprocessing, device, batch_size, tta=tta)
    loss = nn.functional.cross_entropy(logits, data.labels).item()
    predictions = logits.argmax(1)
    confusion = confusion_matrix(predictions, data.labels, num_classes)
    accuracy = (predictions == data.labels).double().mean().item()
    return EvalResult(loss, accuracy, confusion.tolist(), per_class_report(confusion, data.classes), data.classes)

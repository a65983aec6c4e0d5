"""A checkpoint run by PyTorch: predict images, or evaluate on labelled data; a detector's boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cnnkit.checkpoint import load_model, resolve_checkpoint
from cnnkit.compute import select_device
from cnnkit.data.decode import ImageSource
from cnnkit.deploy.classifier import ImageClassifier
from cnnkit.deploy.detector import ImageDetector
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec
from cnnkit.models import model_entry
from cnnkit.tasks.classify.evaluate import predict_logits


class Classifier(ImageClassifier):
    """A trained PyTorch model with the preprocessing and class names it was trained with.

    Example:
        >>> classifier = cnnkit.load("runs/train")
        >>> classifier.predict(["seven.png"], top_k=3)[0].label
        '7'
    """

    def __init__(self, model: torch.nn.Module, info: CheckpointInfo, device: torch.device) -> None:
        super().__init__(info)
        self.model = model
        self.device = device

    def preprocess(self, images: list[ImageSource]) -> torch.Tensor:
        """Decode images exactly as in training: a uint8 tensor (N, C, H, W)."""
        return torch.from_numpy(self.pixels(images))

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        return self.logits(torch.from_numpy(pixels)).softmax(1).numpy()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) on the CPU for uint8 images (N, C, H, W)."""
        return predict_logits(self.model, images, self.preprocessing, self.device, tta=self.info.test_time_flip)


def load_checkpoint_classifier(
    path: str | Path, device: str = "auto", pretrained: bool = False, weights: str | None = None
) -> Classifier:
    """A checkpoint or run directory, or an architecture's ImageNet weights, as a :class:`Classifier`.

    The arguments are those of :func:`cnnkit.load`, which is the way in.
    """
    target = select_device(device)
    if pretrained or weights:
        from cnnkit.models.pretrained import create_pretrained, imagenet_classes, pretrained_preprocessing

        name = str(path)
        preprocessing = pretrained_preprocessing(name)
        model = create_pretrained(name, len(imagenet_classes()), weights=weights).to(target).eval()
        spec = ModelSpec(name, len(imagenet_classes()), 3, preprocessing.img_size)
        return Classifier(model, CheckpointInfo(spec, imagenet_classes(), preprocessing, {}), target)
    model, info = load_model(resolve_checkpoint(path), target)
    if model_entry(info.model.name).task == "detect":
        raise CnnkitError(
            f"{path} is a detector ({info.model.name}): evaluate, predict, export and serve take it "
            "(cnnkit.deploy.load.load_detector in Python); explain and index need a classifier"
        )
    return Classifier(model, info, target)


class TorchDetector(ImageDetector):
    """A trained PyTorch detector with the preprocessing and class names it was trained with.

    Example:
        >>> detector = load_detector("runs/train")
        >>> detector.predict("shelf.jpg", threshold=0.5)[0].labels
    """

    def __init__(self, model: torch.nn.Module, info: CheckpointInfo, device: torch.device) -> None:
        super().__init__(info)
        self.model = model
        self.device = device

    def detect(self, pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
        from cnnkit.tasks.detect.evaluate import detect_images

        return detect_images(self.model, torch.from_numpy(pixels), self.preprocessing, self.device)


def load_checkpoint_detector(path: str | Path, device: str = "auto") -> TorchDetector:
    """A detection run or checkpoint as a :class:`TorchDetector`; a classifier's is refused in one line."""
    target = select_device(device)
    model, info = load_model(resolve_checkpoint(path), target)
    if model_entry(info.model.name).task != "detect":
        raise CnnkitError(f"{path} is a classifier ({info.model.name}), not a detector; load it with cnnkit.load")
    return TorchDetector(model, info, target)

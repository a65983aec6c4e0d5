"""Using a trained model: ``load`` a checkpoint, then ``predict`` images or ``evaluate`` on labelled data."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnkit.checkpoint import CheckpointInfo, load_model, resolve_checkpoint
from cnnkit.compute import select_device
from cnnkit.data import BUILTINS, ImageSet, SkippedFile, decode_image, load_data
from cnnkit.data.decode import ImageDecodeError, ImageSource
from cnnkit.data.folder import has_split_folders, read_folder
from cnnkit.epochs import evaluate, predict_logits
from cnnkit.errors import CnnkitError
from cnnkit.metrics import EvalResult
from cnnkit.models import ModelSpec


@dataclass
class Prediction:
    """Ranked labels and probabilities for one image."""

    source: str
    labels: list[str]
    probabilities: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict:
        return {"path": self.source, "labels": self.labels, "probabilities": self.probabilities}


def _name(source: ImageSource, index: int) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<image {index}>"


class Classifier:
    """A trained model with the preprocessing and class names it was trained with.

    Example:
        >>> classifier = cnnkit.load("runs/train")
        >>> classifier.predict(["seven.png"], top_k=3)[0].label
        '7'
    """

    def __init__(self, model: torch.nn.Module, info: CheckpointInfo, device: torch.device) -> None:
        self.model = model
        self.info = info
        self.device = device

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self):
        return self.info.preprocessing

    def preprocess(self, images: Sequence[ImageSource]) -> torch.Tensor:
        """Decode images exactly as in training: uint8 (N, C, H, W)."""
        prep = self.preprocessing
        return torch.from_numpy(
            np.stack([decode_image(image, prep.img_size, prep.channels, prep.resize) for image in images])
        )

    def predict_proba(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities (N, K) for one image or a list of images."""
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self.logits(self.preprocess(images)).softmax(1).numpy()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) on the CPU for uint8 images (N, C, H, W)."""
        return predict_logits(self.model, images, self.preprocessing, self.device)

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Top-k labels and probabilities for one image or a list of images (file paths, bytes, PIL, arrays)."""
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self._rank(self.predict_proba(images), [_name(source, i) for i, source in enumerate(images)], top_k)

    def predict_files(
        self, paths: Sequence[str | Path], top_k: int = 5, batch_size: int = 256
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict many files in batches; files that cannot be decoded are skipped and returned with the reason."""
        prep = self.preprocessing
        predictions, failures = [], []
        for start in range(0, len(paths), batch_size):
            arrays, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    arrays.append(decode_image(path, prep.img_size, prep.channels, prep.resize))
                    names.append(str(path))
                except ImageDecodeError as error:
                    failures.append((str(path), str(error)))
            if arrays:
                logits = self.logits(torch.from_numpy(np.stack(arrays)))
                predictions += self._rank(logits.softmax(1).numpy(), names, top_k)
        return predictions, failures

    def _rank(self, probabilities: np.ndarray, names: list[str], top_k: int) -> list[Prediction]:
        k = max(1, min(top_k, len(self.classes)))
        ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        return [
            Prediction(name, [self.classes[j] for j in order], [float(p) for p in row[order]])
            for name, order, row in zip(names, ranked, probabilities)
        ]

    def evaluate(self, data: str | None = None, split: str = "test") -> tuple[EvalResult, list[SkippedFile]]:
        """Evaluate on labelled data; returns the result and any images that could not be read.

        Args:
            data: A built-in dataset name or an image folder; defaults to the data the model was trained on.
            split: ``train``, ``val`` or ``test``. Built-in datasets, folders with split subfolders and the
                model's own training folder (split as in training) use this split; any other folder is
                evaluated whole. Defaults to ``test``.
        """
        images, skipped = self.labelled_images(data, split)
        return evaluate(self.model, images, self.preprocessing, self.device), skipped

    def labelled_images(self, data: str | None, split: str) -> tuple[ImageSet, list[SkippedFile]]:
        """The labelled images :meth:`evaluate` uses, relabelled to the model's classes, and any skipped files."""
        if split not in ("train", "val", "test"):
            raise CnnkitError(f"unknown split {split!r}; use train, val or test")
        config = self.info.extra.get("config", {})
        trained_on = config.get("data")
        data = data or trained_on
        if data is None:
            raise CnnkitError("this checkpoint does not record its training data; pass --data")
        prep = self.preprocessing
        same_folder = (
            trained_on not in BUILTINS
            and trained_on is not None
            and data not in BUILTINS
            and Path(data).expanduser().resolve() == Path(trained_on).expanduser().resolve()
        )
        if data in BUILTINS or same_folder or has_split_folders(Path(data).expanduser()):
            splits = load_data(
                data,
                prep.img_size,
                prep.channels,
                prep.resize,
                config.get("val_split", 0.1),
                config.get("test_split", 0.2),
                config.get("data_dir") if data == trained_on else None,
            )
            return self._relabel(getattr(splits, split), data), splits.skipped
        return read_folder(
            Path(data).expanduser(),
            prep.img_size,
            prep.channels,
            prep.resize,
            workers=os.cpu_count() or 1,
            classes=self.classes,
        )

    def _relabel(self, images: ImageSet, data: str) -> ImageSet:
        """Map the dataset's class indices onto the model's, by name."""
        if images.classes == self.classes:
            return images
        unknown = sorted(set(images.classes) - set(self.classes))
        if unknown:
            raise CnnkitError(f"{data} has classes the model does not know: {', '.join(unknown)}")
        mapping = torch.tensor([self.classes.index(name) for name in images.classes])
        return ImageSet(images.images, mapping[images.labels], self.classes, images.sources)


def load(path: str | Path, device: str = "auto", pretrained: bool = False, weights: str | None = None) -> Classifier:
    """Load a run directory or checkpoint file as a :class:`Classifier`, or an ImageNet-pretrained architecture.

    Args:
        path: A run directory from ``cnnkit train`` (its best checkpoint), a ``.safetensors`` checkpoint, a
            ``.onnx`` model from ``cnnkit export`` (run by ONNX Runtime on the CPU; ``device`` is ignored), or an
            architecture name with ``pretrained`` or ``weights`` (ImageNet classes).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.
        pretrained: With an architecture name: its ImageNet weights. Defaults to False.
        weights: With an architecture name: a local ImageNet weights file. Defaults to None.

    Example:
        >>> load("efficientnet_lite0", pretrained=True).predict("photo.jpg")[0].label
    """
    if Path(path).suffix.lower() == ".onnx":
        from cnnkit.runtime import OnnxClassifier

        return OnnxClassifier(path)
    target = select_device(device)
    if pretrained or weights:
        from cnnkit.models.pretrained import create_pretrained, imagenet_classes, pretrained_preprocessing

        name = str(path)
        preprocessing = pretrained_preprocessing(name)
        model = create_pretrained(name, len(imagenet_classes()), weights=weights).to(target).eval()
        spec = ModelSpec(name, len(imagenet_classes()), 3, preprocessing.img_size)
        return Classifier(model, CheckpointInfo(spec, imagenet_classes(), preprocessing, {}), target)
    model, info = load_model(resolve_checkpoint(path), target)
    return Classifier(model, info, target)

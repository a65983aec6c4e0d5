"""Using a trained model: ``load`` it, then rank the labels of images.

:class:`ImageClassifier` decodes images through the one shared path and ranks the
probabilities its subclass computes: :class:`cnnkit.deploy.torch_runtime.Classifier` with PyTorch
for checkpoints, :class:`cnnkit.deploy.onnx_runtime.OnnxClassifier` with ONNX Runtime for exports.
This module needs no PyTorch, so an exported model predicts with ONNX Runtime alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.data.decode import ImageSource, decode_batches, decode_image
from cnnkit.data.series_formats import read_series_inputs
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, Preprocessing, SeriesPreprocessing
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.tasks.classify.records import Prediction

if TYPE_CHECKING:
    import torch

    from cnnkit.data import ImageSet, SkippedFile
    from cnnkit.tasks.classify.metrics import EvalResult


def _name(source: ImageSource, index: int) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<image {index}>"


class ImageClassifier:
    """A trained model with the class names and preprocessing it was trained with.

    Subclasses compute :meth:`probabilities`; decoding and ranking are shared, so a
    checkpoint and its export rank the same file the same way.
    """

    def __init__(self, info: CheckpointInfo) -> None:
        self.info = info

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing

    def pixels(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Decode images exactly as in training: uint8 (N, C, H, W)."""
        prep = self.preprocessing
        if prep.modality != "image":  # prediction, serving and explanation read image files
            raise CnnkitError("this model reads time series, not images; predict series files with predict_series")
        return np.stack([decode_image(image, prep.img_size, prep.channels, prep.resize) for image in images])

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, C, H, W), or float32 series (N, C, L)."""
        raise NotImplementedError

    def predict_proba(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities (N, K) for one image or a list of images."""
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self.probabilities(self.pixels(images))

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Top-k labels and probabilities for one image or a list of images (file paths, bytes, PIL, arrays)."""
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self.rank(self.predict_proba(images), [_name(source, i) for i, source in enumerate(images)], top_k)

    def predict_files(
        self, paths: Sequence[str | Path], top_k: int = 5, batch_size: int = 256
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict many files in batches; files that cannot be decoded are skipped and returned with the reason."""
        prep = self.preprocessing
        predictions, failures = [], []
        for pixels, names, failed in decode_batches(paths, prep.img_size, prep.channels, prep.resize, batch_size):
            failures += failed
            if pixels is not None:
                predictions += self.rank(self.probabilities(pixels), names, top_k)
        return predictions, failures

    def predict_series(self, paths: Sequence[str | Path], top_k: int = 5) -> list[Prediction]:
        """Top-k labels of every series in each file (``.tsv``, ``.ts``, ``.csv``, ``.npy``), named ``file:row``.

        Each file is read as the run read its training set (:func:`~cnnkit.data.series_formats.read_series_inputs`:
        the same padding, z-normalised when the run was); a file whose series have other channels than the
        model's is refused in one line.
        """
        prep = self.preprocessing
        if not isinstance(prep, SeriesPreprocessing):
            raise CnnkitError(f"this model reads {prep.modality} files, not time series; use predict_files")
        predictions = []
        for path in paths:
            values, names = read_series_inputs(Path(path), prep.channels, prep.length, prep.series_normalize)
            predictions += self.rank(self.probabilities(values), names, top_k)
        return predictions

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) on the CPU for uint8 images (N, C, H, W), as the model predicts (test-time flip included)."""
        raise NotImplementedError

    def labelled_images(self, data: str | None, split: str) -> tuple[ImageSet, list[SkippedFile]]:
        """The labelled images :meth:`evaluate` uses, relabelled to the model's classes, and any skipped files."""
        from cnnkit.data.labelled import labelled_audio, labelled_images, labelled_series  # torch; predict needs none

        prep = self.preprocessing
        config = self.info.extra.get("config", {})
        if prep.modality == "audio":  # decoded by the run's clip rule: rate, length, pad and crop
            return labelled_audio(data, split, self.classes, prep.to_dict(), config)
        if prep.modality == "series":  # read as the run read its own: same channels, z-normalised or not
            return labelled_series(data, split, self.classes, (prep.channels, prep.series_normalize), config), []
        return labelled_images(data, split, self.classes, (prep.img_size, prep.channels, prep.resize), config)

    def evaluated_split(self, data: str | None, split: str) -> str | None:
        """The split :meth:`evaluate` takes of ``data``, or None when it reads a folder whole (``split`` unused)."""
        from cnnkit.data.labelled import takes_split

        return split if takes_split(data, self.info.extra.get("config", {})) else None

    def evaluate(self, data: str | None = None, split: str = "test") -> tuple[EvalResult, list[SkippedFile]]:
        """Evaluate on labelled data; returns the result and any images that could not be read.

        Args:
            data: A built-in dataset name or an image folder; defaults to the data the model was trained on.
            split: ``train``, ``val`` or ``test``. Built-in datasets, folders with split subfolders and the
                model's own training folder (split as in training) use this split; any other folder is
                evaluated whole (:meth:`evaluated_split` says which). Defaults to ``test``.
        """
        from cnnkit.tasks.classify.evaluate import score

        images, skipped = self.labelled_images(data, split)
        return score(self.logits(images.inputs), images.labels, images.classes), skipped

    def rank(self, probabilities: np.ndarray, names: list[str], top_k: int) -> list[Prediction]:
        """One :class:`Prediction` per row of ``probabilities`` (N, K), named by ``names``: the top ``top_k`` labels."""
        return ClassifyTask(self.classes).records(probabilities, names, top_k)

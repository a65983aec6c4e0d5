"""Using a trained model: ``load`` it, then rank the labels of images, series files or WAV recordings.

:class:`ImageClassifier` decodes inputs through the one shared path of their kind (images:
:mod:`cnnkit.data.decode`; series: :mod:`cnnkit.data.series_formats`; WAV files:
:mod:`cnnkit.data.wav`, by the run's recorded clip rule) and ranks the probabilities its
subclass computes: :class:`cnnkit.deploy.torch_runtime.Classifier` with PyTorch for
checkpoints, :class:`cnnkit.deploy.onnx_runtime.OnnxClassifier` with ONNX Runtime for exports.
This module needs no PyTorch, so an exported model predicts with ONNX Runtime alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.data.decode import ImageSource, decode_batches, decode_image
from cnnkit.data.series_formats import read_series_inputs
from cnnkit.data.wav import AudioDecodeError, AudioFormat, fit_length, read_wav, to_mono
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, CheckpointInfo, Preprocessing, SeriesPreprocessing
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.tasks.classify.records import Prediction

if TYPE_CHECKING:
    import torch

    from cnnkit.data import ImageSet, SkippedFile
    from cnnkit.tasks.classify.metrics import EvalResult

# What a model's inputs are called in messages (parity, calibration, skipped files), by modality.
INPUT_NOUNS = {"image": "images", "series": "series", "audio": "clips"}
WavSource = str | Path | bytes  # a WAV file's path, or an upload's bytes


def _name(source: ImageSource, index: int) -> str:
    return str(source) if isinstance(source, (str, Path)) else f"<image {index}>"


class ImageClassifier:
    """A trained model with the class names and preprocessing it was trained with.

    Subclasses compute :meth:`probabilities`; decoding and ranking are shared, so a
    checkpoint and its export rank the same file the same way.
    """

    def __init__(self, info: CheckpointInfo) -> None:
        if info.extra.get("task") == "generate":  # a generator's run or export: noise in, images out
            raise CnnkitError(
                f"{info.model.name} is a generator: it makes images and classifies none; give its run to "
                "cnnkit generate, export or serve"
            )
        self.info = info

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self) -> Preprocessing | SeriesPreprocessing | AudioPreprocessing:
        return self.info.preprocessing

    @property
    def input_noun(self) -> str:
        """What the model's inputs are called in messages: ``images``, ``series`` or ``clips``."""
        return INPUT_NOUNS[self.preprocessing.modality]

    def _require_images(self) -> Preprocessing:
        """The image preprocessing, or the one-line refusal naming what reads this model's files instead."""
        prep = self.preprocessing
        if prep.modality != "image":  # prediction, serving and explanation read image files
            reads = "WAV files" if prep.modality == "audio" else "time series"
            reader = "predict_clips" if prep.modality == "audio" else "predict_series"
            raise CnnkitError(f"this model reads {reads}, not images; predict its files with {reader}")
        return prep

    def pixels(self, images: Sequence[ImageSource]) -> np.ndarray:
        """Decode images exactly as in training: uint8 (N, C, H, W)."""
        prep = self._require_images()
        return np.stack([decode_image(image, prep.img_size, prep.channels, prep.resize) for image in images])

    def decode_clip(self, source: WavSource) -> tuple[np.ndarray, str | None]:
        """One WAV file (a path or an upload's bytes) as the model's input, by the run's recorded clip rule.

        Mixed down to mono, resampled to the run's rate and padded or cropped to its clip length
        (:class:`~cnnkit.data.wav.AudioFormat`, as training decoded its own files), so a file gives the
        same waveform here as in training.

        Returns:
            float32 (1, clip_samples), and a one-line note when the recording was longer than the clip
            and so cropped (the model hears only part of it), else None.

        Raises:
            AudioDecodeError: not a WAV file, no audio, a corrupt header or an unsupported codec.
        """
        prep = self.preprocessing
        if not isinstance(prep, AudioPreprocessing):
            raise CnnkitError(f"this model reads {self.input_noun}, not WAV files")
        audio_format = AudioFormat.from_facts(prep.to_dict())
        samples, info = read_wav(source)
        clip, change = fit_length(to_mono(samples, info.sample_rate, audio_format), audio_format)
        note = None
        if change == "cropped":
            name = "the upload" if isinstance(source, bytes) else str(source)
            window = f"{audio_format.clip_seconds:g} s"
            note = (
                f"{name} is {info.seconds:.2f} s, longer than the model's {window} clip: "
                f"classified its {audio_format.crop} {window} only (the run's crop rule)"
            )
        return clip[None], note

    def decode(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """Model inputs for image files (uint8 (N, C, H, W)) or WAV files (float32 (N, 1, clip_samples))."""
        if self.preprocessing.modality == "audio":
            return np.stack([self.decode_clip(source)[0] for source in sources])
        return self.pixels(sources)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        """Class probabilities (N, K) for uint8 images (N, C, H, W), or float32 series (N, C, L) or clips (N, 1, T)."""
        raise NotImplementedError

    def predict_proba(self, images: ImageSource | Sequence[ImageSource]) -> np.ndarray:
        """Class probabilities (N, K) for one image or a list of images (WAV files for an audio model)."""
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self.probabilities(self.decode(images))

    def predict(self, images: ImageSource | Sequence[ImageSource], top_k: int = 5) -> list[Prediction]:
        """Top-k labels and probabilities for one image or a list of images (file paths, bytes, PIL, arrays).

        An audio model takes WAV files (paths or bytes) instead; :meth:`predict_clips` also says which
        were cropped and skips unreadable ones.
        """
        images = [images] if not isinstance(images, (list, tuple)) else images
        return self.rank(self.predict_proba(images), [_name(source, i) for i, source in enumerate(images)], top_k)

    def predict_files(
        self, paths: Sequence[str | Path], top_k: int = 5, batch_size: int = 256
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Predict many files in batches; files that cannot be decoded are skipped and returned with the reason."""
        prep = self._require_images()
        predictions, failures = [], []
        for pixels, names, failed in decode_batches(paths, prep.img_size, prep.channels, prep.resize, batch_size):
            failures += failed
            if pixels is not None:
                predictions += self.rank(self.probabilities(pixels), names, top_k)
        return predictions, failures

    def predict_clips(
        self, paths: Sequence[str | Path], top_k: int = 5, batch_size: int = 256
    ) -> tuple[list[Prediction], list[tuple[str, str]], list[str]]:
        """Predict many WAV files in batches, each decoded by the run's clip rule (:meth:`decode_clip`).

        Returns:
            The predictions; (path, reason) for each file that could not be decoded (skipped: not a WAV,
            no audio, a corrupt header); and one note per file longer than the clip, which was cropped.
        """
        predictions, failures, notes = [], [], []
        for start in range(0, len(paths), batch_size):
            clips, names = [], []
            for path in paths[start : start + batch_size]:
                try:
                    clip, note = self.decode_clip(path)
                except AudioDecodeError as error:
                    failures.append((str(path), str(error)))
                    continue
                clips.append(clip)
                names.append(str(path))
                notes += [note] if note else []
            if clips:
                predictions += self.rank(self.probabilities(np.stack(clips)), names, top_k)
        return predictions, failures, notes

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
        """Logits (N, K) on the CPU for the model's inputs (uint8 images, float series or clips), as it predicts.

        Test-time flip included, for the image runs trained with it.
        """
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

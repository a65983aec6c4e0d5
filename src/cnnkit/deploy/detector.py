"""Using a trained detector: boxes, labels and scores per image, in the image's original pixels.

:class:`ImageDetector` decodes images through the one shared path, maps each detection
back to its image's upright original pixels (:mod:`cnnkit.data.placement`, the map
evaluation uses) and ranks it (:func:`cnnkit.tasks.detect.records.rank_boxes`); its
subclass only finds boxes in the model input: :class:`cnnkit.deploy.torch_runtime.TorchDetector`
with PyTorch for runs, :class:`cnnkit.deploy.onnx_detector.OnnxDetector` with ONNX Runtime
for exports. This module needs no PyTorch, so an export predicts boxes with ONNX Runtime alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnnkit.data.decode import ImageDecodeError, ImageSource, decode_batches, decode_image, load_image
from cnnkit.data.placement import Placement, image_sizes, to_original, upright_size
from cnnkit.modelinfo import CheckpointInfo, Preprocessing
from cnnkit.tasks.detect.records import MAX_BOXES, THRESHOLD, BoxPrediction, rank_boxes

BATCH_SIZE = 32  # images decoded and detected at once (tasks.detect.evaluate's batch)
TASK = "detect"  # the ``task`` a detection run's checkpoint and export record


def is_detector(info: CheckpointInfo) -> bool:
    """Whether a checkpoint's or export's description is a detector's (the ``task`` every detection run records)."""
    return info.extra.get("task") == TASK


def _size(source: ImageSource) -> tuple[int, int] | str:
    """The upright original (width, height) of one image, from the header of a file or encoded bytes."""
    if isinstance(source, (str, Path, bytes)):
        return upright_size(source)
    return load_image(source).size  # a PIL image or an array is decoded already: its size is its own


class ImageDetector:
    """A trained detector with the class names and preprocessing it was trained with.

    Subclasses compute :meth:`detect` (boxes in the model input); decoding, the map back to
    original pixels and ranking are shared, so a run and its export report a file alike.
    """

    def __init__(self, info: CheckpointInfo) -> None:
        self.info = info

    @property
    def classes(self) -> list[str]:
        return self.info.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.info.preprocessing

    def detect(self, pixels: np.ndarray) -> list[dict[str, np.ndarray]]:
        """``{"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,)}`` per uint8 image (B, C, S, S), in input pixels."""
        raise NotImplementedError

    def place(
        self,
        pixels: np.ndarray,
        sizes: Sequence[tuple[int, int]],
        names: Sequence[str],
        threshold: float = THRESHOLD,
        max_boxes: int = MAX_BOXES,
    ) -> list[BoxPrediction]:
        """Detections of decoded images (B, C, S, S) with original (width, height) ``sizes``, in original pixels."""
        prep = self.preprocessing
        return [
            rank_boxes(
                to_original(found, Placement.of(size, prep.img_size, prep.resize), size),
                self.classes,
                name,
                threshold,
                max_boxes,
            )
            for found, size, name in zip(self.detect(pixels), sizes, names)
        ]

    def predict(
        self, images: ImageSource | Sequence[ImageSource], threshold: float = THRESHOLD, max_boxes: int = MAX_BOXES
    ) -> list[BoxPrediction]:
        """Boxes for one image or a list of images (paths, encoded bytes, PIL images, arrays), in original pixels.

        Example:
            >>> detector = load_detector("runs/train")
            >>> detector.predict("shelf.jpg")[0].to_dict()["boxes"]
        """
        images = [images] if not isinstance(images, (list, tuple)) else images
        prep = self.preprocessing
        pixels = np.stack([decode_image(image, prep.img_size, prep.channels, prep.resize) for image in images])
        names = [str(image) if isinstance(image, (str, Path)) else f"<image {i}>" for i, image in enumerate(images)]
        sizes = [_size(image) for image in images]
        for name, size in zip(names, sizes):
            if isinstance(size, str):  # decoded, yet its header gave no size: nowhere to put the boxes back
                raise ImageDecodeError(f"{name}: {size}")
        return self.place(pixels, sizes, names, threshold, max_boxes)

    def predict_files(
        self,
        paths: Sequence[str | Path],
        threshold: float = THRESHOLD,
        max_boxes: int = MAX_BOXES,
        batch_size: int = BATCH_SIZE,
    ) -> tuple[list[BoxPrediction], list[tuple[str, str]]]:
        """Boxes for many files in batches; files that cannot be decoded are skipped and returned with the reason.

        Args:
            paths: Image files.
            threshold: Lowest score reported. Defaults to 0.25.
            max_boxes: Most boxes reported per image. Defaults to 100.
            batch_size: Images decoded and detected at once. Defaults to 32.
        """
        prep = self.preprocessing
        sizes = image_sizes(Path(), [str(path) for path in paths])
        predictions, failures = [], []
        for pixels, names, failed in decode_batches(paths, prep.img_size, prep.channels, prep.resize, batch_size):
            failures += failed
            if pixels is None:
                continue
            # decoded, yet its header gave no size: nowhere to put the boxes back
            failures += [(name, sizes[name]) for name in names if isinstance(sizes[name], str)]
            placed = [i for i, name in enumerate(names) if not isinstance(sizes[name], str)]
            if placed:
                chosen = [names[i] for i in placed]
                predictions += self.place(pixels[placed], [sizes[n] for n in chosen], chosen, threshold, max_boxes)
        return predictions, failures

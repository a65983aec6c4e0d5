"""The way in to a trained model: ``load`` a run, checkpoint, ONNX export or pretrained architecture.

This is the one place that tells an ONNX export from a checkpoint (:func:`is_onnx`); the
CLI, the benchmark and the service all load through :func:`load`.
"""

from __future__ import annotations

from pathlib import Path

from cnnkit.deploy.classifier import ImageClassifier
from cnnkit.deploy.detector import ImageDetector, is_detector


def is_onnx(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX export (a ``.onnx`` file) rather than a run, checkpoint or architecture."""
    return Path(path).suffix.lower() == ".onnx"


def load(
    path: str | Path,
    device: str = "auto",
    pretrained: bool = False,
    weights: str | None = None,
    threads: int | None = None,
) -> ImageClassifier:
    """Load a run directory, a checkpoint, an ONNX export, or an ImageNet-pretrained architecture.

    Args:
        path: A run directory from ``cnnkit train`` (its best checkpoint), a ``.safetensors`` checkpoint, a
            ``.onnx`` model from ``cnnkit export`` (run by ONNX Runtime on the CPU, without PyTorch; ``device``
            is ignored), or an architecture name with ``pretrained`` or ``weights`` (ImageNet classes).
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.
        pretrained: With an architecture name: its ImageNet weights. Defaults to False.
        weights: With an architecture name: a local ImageNet weights file. Defaults to None.
        threads: ONNX Runtime intra-op threads for a ``.onnx`` model (a server running one request per thread
            passes 1); checkpoints use PyTorch's thread setting. Defaults to None (all cores).

    Example:
        >>> load("efficientnet_lite0", pretrained=True).predict("photo.jpg")[0].label
    """
    if is_onnx(path):
        from cnnkit.deploy.onnx_runtime import OnnxClassifier

        return OnnxClassifier(path, threads)
    from cnnkit.deploy.torch_runtime import load_checkpoint_classifier

    return load_checkpoint_classifier(path, device, pretrained, weights)


def load_detector(path: str | Path, device: str = "auto", threads: int | None = None) -> ImageDetector:
    """Load a detection run, checkpoint or ``.onnx`` export (ONNX Runtime without PyTorch, ``device`` ignored).

    Args:
        path: A detection run directory, its ``.safetensors`` checkpoint, or its ``cnnkit export`` model.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.
        threads: ONNX Runtime intra-op threads for a ``.onnx`` model. Defaults to None (all cores).

    Example:
        >>> load_detector("runs/export/model.onnx").predict("shelf.jpg")[0].to_dict()
    """
    if is_onnx(path):
        from cnnkit.deploy.onnx_detector import OnnxDetector

        return OnnxDetector(path, threads)
    from cnnkit.deploy.torch_runtime import load_checkpoint_detector

    return load_checkpoint_detector(path, device)


def load_predictor(
    path: str | Path,
    device: str = "auto",
    pretrained: bool = False,
    weights: str | None = None,
    threads: int | None = None,
) -> ImageClassifier | ImageDetector:
    """What ``cnnkit predict`` and ``cnnkit serve`` run: a detector for a detection run or export, else :func:`load`.

    An export is opened once, and its metadata says which it is (without PyTorch).
    """
    if is_onnx(path):
        from cnnkit.deploy.onnx_detector import OnnxDetector
        from cnnkit.deploy.onnx_runtime import OnnxClassifier, open_model

        opened = open_model(Path(path).expanduser(), threads)
        return (OnnxDetector if is_detector(opened[1]) else OnnxClassifier)(path, threads, opened)
    from cnnkit.tasks.detect.evaluate import is_detection_run

    if is_detection_run(path):
        return load_detector(path, device)
    return load(path, device, pretrained, weights, threads)

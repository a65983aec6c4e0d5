"""The way in to a trained model: ``load`` a run, checkpoint, ONNX export or pretrained architecture.

This is the one place that tells an ONNX export from a checkpoint (:func:`is_onnx`); the
CLI, the benchmark and the service all load through :func:`load`.
"""

from __future__ import annotations

from pathlib import Path

from cnnkit.deploy.classifier import ImageClassifier


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

"""Running an exported ``.onnx`` model with ONNX Runtime, behind the same interface as a checkpoint.

The exported graph takes uint8 images (N, C, H, W) and applies the mean/std
normalisation itself, so the only preprocessing outside it is the shared decoding path
(:func:`cnnkit.data.decode_image`): a file gives the same tensor here as in training.
A series model's graph takes float32 series (N, C, L), read by the same torch-free path
as a run's (:func:`cnnkit.data.series_formats.read_series_inputs`); an audio model's takes
float32 waveforms (N, 1, T), decoded by the run's clip rule (:mod:`cnnkit.data.wav`, NumPy
only), with the log-mel front end inside the graph.
Prediction imports no PyTorch at all (a test blocks it); only :meth:`OnnxClassifier.logits`
and :meth:`OnnxClassifier.evaluate`, which compare against checkpoints and datasets,
hand back ``torch`` tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cnnkit.deploy.classifier import ImageClassifier
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo

if TYPE_CHECKING:
    import torch

FORMAT = "cnnkit.onnx/1"
INPUT_NAME, OUTPUT_NAME = "images", "logits"
SERIES_INPUT = "series"  # a series model's input, float32 (N, C, L)
AUDIO_INPUT = "waves"  # an audio model's input, float32 waveforms (N, 1, T) in [-1, 1]


def require(*modules: str) -> None:
    """Fail with the install command when an optional ``deploy`` dependency is missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise CnnkitError(f"{', '.join(missing)} not installed; install the deploy extra: pip install 'cnnkit[deploy]'")


def read_metadata(session) -> CheckpointInfo:
    """The checkpoint description an exported model carries in its metadata_props."""
    props = session.get_modelmeta().custom_metadata_map
    if props.get("format") != FORMAT:
        raise ValueError(f"metadata format {props.get('format')!r}, expected {FORMAT!r}")
    # Other tools add dotted keys (onnxruntime's quantizer writes "onnx.quant.pre_process"); cnnkit's have no dots.
    return CheckpointInfo.from_dict(
        {key: json.loads(value) for key, value in props.items() if key != "format" and "." not in key}
    )


def create_session(path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with every graph optimisation on.

    ``threads`` caps intra-op threads; a server that runs one request per thread passes 1,
    which also stops idle pool threads spin-waiting on cores the other requests need.
    """
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0" if threads == 1 else "1")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def open_model(path: Path, threads: int | None = None) -> tuple:
    """(session, the checkpoint description) of a ``cnnkit export`` model; anything else is refused in one line."""
    if not path.is_file():
        raise CnnkitError(f"ONNX model not found: {path}; give a .onnx file written by `cnnkit export`")
    require("onnxruntime")
    try:
        session = create_session(path, threads)
        return session, read_metadata(session)
    except Exception as error:  # onnxruntime raises its own error types for every malformed file
        raise CnnkitError(
            f"{path} is not a cnnkit ONNX model ({type(error).__name__}: {str(error).splitlines()[0]}); "
            "export one with `cnnkit export RUN --format onnx`"
        ) from None


class OnnxClassifier(ImageClassifier):
    """An exported model run by ONNX Runtime, with the class names and preprocessing from its metadata.

    Args:
        path: A ``.onnx`` file written by ``cnnkit export``.
        threads: ONNX Runtime intra-op threads. Defaults to all cores.
        opened: The (session, description) :func:`open_model` already returned for ``path``. Defaults to None.

    Example:
        >>> classifier = cnnkit.load("runs/export/model.onnx")
        >>> classifier.predict("seven.png")[0].label
        '7'
    """

    def __init__(self, path: str | Path, threads: int | None = None, opened: tuple | None = None) -> None:
        self.path = Path(path).expanduser()
        self.session, info = opened or open_model(self.path, threads)
        if info.extra.get("task") == "detect":
            raise CnnkitError(
                f"{path} is a detector's export ({info.model.name}): predict and serve take it "
                "(cnnkit.deploy.load.load_detector in Python); the other commands need a classifier"
            )
        super().__init__(info)

    def run(self, pixels: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits (N, K) for uint8 images (N, C, H, W), or float32 series (N, C, L) or waveforms (N, 1, T).

        Inputs go in batches of ``batch_size``.
        """
        graph_input = self.session.get_inputs()[0]
        if graph_input.name in (SERIES_INPUT, AUDIO_INPUT):
            pixels = np.ascontiguousarray(pixels, np.float32)
            fixed = graph_input.shape[2]  # an int where the exporter fixed the length, else the axis' name
            if isinstance(fixed, int) and pixels.shape[2] != fixed:
                raise CnnkitError(
                    f"{self.path} takes {self.input_noun} of length {fixed} (its model exported with a fixed "
                    f"length), not {pixels.shape[2]}; predict longer {self.input_noun} with the run itself"
                )
        else:
            pixels = np.ascontiguousarray(pixels, np.uint8)
        outputs = [
            self.session.run([OUTPUT_NAME], {graph_input.name: pixels[i : i + batch_size]})[0]
            for i in range(0, len(pixels), batch_size)
        ]
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), np.float32)

    def probabilities(self, pixels: np.ndarray) -> np.ndarray:
        logits = self.run(pixels)
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) as a tensor, to compare with a checkpoint's :meth:`Classifier.logits`."""
        import torch

        return torch.from_numpy(self.run(images.numpy()))

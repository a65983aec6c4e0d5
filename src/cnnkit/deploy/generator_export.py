"""ONNX export of a generator run: noise and class in, image out, checked against PyTorch before it is called a success.

The graph is the EMA generator (what sampling, the service and the quality figures use):
inputs ``noise`` float32 (B, latent_dim) and ``labels`` int64 (B,), output ``images`` float32
(B, C, H, W) in [-1, 1], with a dynamic batch axis. The output stays the network's own float
rather than uint8 pixels, for the parity check's sake: a float difference of 1e-7 between
runtimes moves a pixel that sits on a rounding boundary by one level, so a check on pixels
would need a tolerance of a whole level, while on the float output rounding shows as about
1e-6 and any real fault (a wrong class embedding, a missing layer) as tenths. A deployment turns
the output into pixels with the one rule the metadata states (:func:`cnnkit.models.gan.to_uint8`:
``round((x + 1) * 127.5)``, clipped to 0-255) and draws its noise as it likes; the same images as
``cnnkit generate`` need its noise (:func:`cnnkit.tasks.generate.sampling.class_noise`, PyTorch's
generator). The metadata holds the class names (label ``k`` is ``classes[k]``), ``latent_dim``
and the checkpoint's description, as every cnnkit export does.

The graph is traced (the TorchScript exporter, ``dynamo=False``, as :mod:`cnnkit.deploy.detect_export`
exports torchvision's detectors): the generator has no data-dependent branch, so one trace is the
whole function, and it takes about 0.5 s where the dynamo exporter took 15 s for the same 8 px
generator (once each, on the shared 2-core development machine under load: indicative only).

The check: ONNX Runtime and PyTorch on the same fixed noise (:func:`~cnnkit.models.gan.latent_noise`,
seed 0), every class in turn, at the full batch and at batch 1 (so the batch axis is free), held
to :data:`ATOL`.
"""

from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cnnkit.checkpoint import versions, write_atomic
from cnnkit.deploy.export import export_paths, record_parity
from cnnkit.deploy.onnx_runtime import FORMAT, create_session, require
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.models.gan import ConditionalGAN, latent_noise
from cnnkit.tasks.generate.sampling import load_generator

NOISE, LABELS, IMAGES = "noise", "labels", "images"
TASK = "generate"  # the export's ``task``, as a detector's export says ``detect``
# fp32 ONNX Runtime and PyTorch differ by float rounding (other convolution algorithms and summation
# orders): about 1e-6 on tanh outputs in [-1, 1], on any CPU. A real fault shows as 0.1 or more.
ATOL = 1e-3
PARITY_IMAGES = 64  # compared per check: every class in turn, as many rounds as fit
OPSET = 17  # the generator's operators (Gemm, Gather, BatchNormalization, ConvTranspose, Conv, Relu, Tanh) all have it


class GeneratorGraph(nn.Module):
    """What the export traces: the EMA generator alone (the discriminator's weights stay out of the file)."""

    def __init__(self, model: ConditionalGAN) -> None:
        super().__init__()
        self.generator = model.generator_ema

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.generator(noise, labels)  # (B, latent_dim), (B,) -> (B, C, H, W) in [-1, 1]


def generator_metadata(model: ConditionalGAN, info: CheckpointInfo) -> dict[str, str]:
    """The export's metadata_props: the checkpoint's description, ``latent_dim`` and what the graph takes and gives."""
    graph = {
        NOISE: f"float32 (B, {model.latent_dim}), standard normal",
        LABELS: f"int64 (B,), class indices 0-{model.num_classes - 1} into classes",
        IMAGES: f"float32 (B, {model.channels}, {model.img_size}, {model.img_size}) in [-1, 1]; "
        "pixels = clip(round((images + 1) * 127.5), 0, 255) as uint8",
    }
    values = {
        **info.extra,
        "model": info.model.to_dict(),
        "classes": info.classes,
        "preprocessing": info.preprocessing.to_dict(),
        "task": TASK,
        "latent_dim": model.latent_dim,
        "generator": graph,
        "versions": {**info.extra.get("versions", {}), **versions(), "exported_by": "cnnkit export"},
    }
    return {"format": FORMAT, **{key: json.dumps(value) for key, value in values.items()}}


def write_generator_onnx(model: ConditionalGAN, info: CheckpointInfo, path: Path) -> None:
    """Export the EMA generator of ``model`` with its metadata to ``path`` (dynamic batch axis, atomic write)."""
    require("onnx", "onnxruntime")
    import onnx

    model = model.cpu().eval()
    example = (latent_noise(2, model.latent_dim, 0), torch.zeros(2, dtype=torch.int64))
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's deprecation notes are not the user's problem
        torch.onnx.export(
            GeneratorGraph(model),
            example,
            buffer,
            input_names=[NOISE, LABELS],
            output_names=[IMAGES],
            dynamic_axes={NOISE: {0: "batch"}, LABELS: {0: "batch"}, IMAGES: {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    for key, value in generator_metadata(model, info).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    write_atomic(path, proto.SerializeToString())


@dataclass
class GeneratorParity:
    """How closely ONNX Runtime reproduces PyTorch's images from the same noise and labels."""

    images: int
    max_abs_diff: float  # over every output value in [-1, 1], at the full batch and at batch 1
    atol: float = ATOL

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def format(self) -> str:
        return (
            f"parity on {self.images} images from fixed noise (every class in turn, batch {self.images} and 1): "
            f"max |output difference| {self.max_abs_diff:.2e} (tolerance {self.atol:.0e}, outputs in [-1, 1])"
        )


@torch.no_grad()
def check_generator_parity(model: ConditionalGAN, path: Path, count: int = PARITY_IMAGES) -> GeneratorParity:
    """Run ``count`` images of fixed noise, labels cycling through the classes, in PyTorch and the export."""
    noise = latent_noise(count, model.latent_dim, 0)  # (count, latent_dim)
    labels = torch.arange(count, dtype=torch.int64) % model.num_classes
    expected = model.cpu().eval()(noise, labels).numpy()
    session = create_session(path)
    whole = session.run([IMAGES], {NOISE: noise.numpy(), LABELS: labels.numpy()})[0]
    single = session.run([IMAGES], {NOISE: noise[:1].numpy(), LABELS: labels[:1].numpy()})[0]
    difference = max(float(np.abs(whole - expected).max()), float(np.abs(single - expected[:1]).max()))
    return GeneratorParity(count, difference)


def export_generator(
    checkpoint: str | Path, out: str | Path = "runs", name: str | None = None, verbose: bool = True
) -> dict:
    """Export a generator run to ONNX and verify its images against PyTorch on fixed noise.

    What ``cnnkit export`` runs for a generator run; it writes the files
    :func:`cnnkit.deploy.export.export_onnx` writes (``model.onnx`` and ``export.json`` in a new
    folder under ``out``, or ``out`` itself and its ``.export.json`` sibling).

    Args:
        checkpoint: A run directory of ``cnnkit train --task generate``, or its checkpoint.
        out: Folder for the export directory, or the ``.onnx`` file to write. Defaults to ``runs``.
        name: Export directory name under ``out``. Defaults to ``export``, ``export2``, ...
        verbose: Print each step. Defaults to True.

    Returns:
        The report also written to ``export.json``.

    Raises:
        CnnkitError: the run is not a generator, or the export disagrees with PyTorch beyond :data:`ATOL`
            (the model file is then removed).

    Example:
        >>> export_generator("runs/train")["parity"]["passed"]
        True
    """
    say = print if verbose else (lambda *args: None)
    model, info = load_generator(checkpoint, "cpu")
    path, _, report_path = export_paths(out, name)
    write_generator_onnx(model, info, path)
    parity = check_generator_parity(model, path)
    report = record_parity(path, report_path, parity, say)
    say(f"report written to {report_path}")
    return report

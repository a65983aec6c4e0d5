"""ONNX export that proves itself: the exported graph is run by ONNX Runtime on the run's
validation images (series, clips) and compared with PyTorch before the export is called a success.

The graph takes uint8 images (N, C, H, W) with a dynamic batch axis and applies the
checkpoint's mean/std inside, so a deployment only decodes and resizes (the
preprocessing record in the metadata says how); a mean/std mismatch, the most common
reason an exported model disagrees with the trained one, cannot happen. A series model's
graph takes float32 series (N, C, L), read and z-normalised as the run read them (its
``SeriesPreprocessing`` in the metadata), with dynamic batch and length axes where the
exporter keeps the length free (the 1-D models end in global average pooling). An audio
model's graph takes float32 waveforms (N, 1, T), mono at the run's rate, decoded by its clip
rule (``AudioPreprocessing`` in the metadata); the log-mel front end is inside the graph (as
a windowed-DFT convolution, :mod:`cnnkit.models.frontend`), so a deployment only decodes the
WAV file. The length axis stays free (both audio models pool globally over time), so a
spotter can slide windows of another length.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
from torch import nn

from cnnkit.checkpoint import versions, write_atomic
from cnnkit.data import ImageSet
from cnnkit.data.series import SeriesSet
from cnnkit.deploy.load import is_onnx, load
from cnnkit.deploy.onnx_runtime import (
    AUDIO_INPUT,
    FORMAT,
    INPUT_NAME,
    OUTPUT_NAME,
    SERIES_INPUT,
    OnnxClassifier,
    require,
)
from cnnkit.deploy.torch_runtime import Classifier
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, CheckpointInfo, Preprocessing, SeriesPreprocessing
from cnnkit.models.fold import fold_pooled_batch_norms
from cnnkit.rundir import new_run_dir
from cnnkit.tasks.classify.tta import FlipAveraged

# fp32 ONNX Runtime and PyTorch differ by float rounding (fused Conv+BN, other summation
# orders): about 1e-6 on logits of order 10. 1e-3 leaves room for deeper models while
# catching any real difference (a wrong mean, a missing layer), which shows as > 0.1.
DEFAULT_ATOL = 1e-3


class NormalizedModel(nn.Module):
    """The model with the checkpoint's normalisation in front: uint8 (B, C, H, W) -> logits (B, K).

    A run trained with test-time flip is exported with it (:class:`~cnnkit.tasks.classify.tta.FlipAveraged`
    inside the graph), so the export gives the checkpoint's answers.
    """

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, -1, 1, 1) * 255.0)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(preprocessing.std).view(1, -1, 1, 1) * 255.0))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images.float() - self.mean) * self.inv_std)


def metadata(info: CheckpointInfo) -> dict[str, str]:
    """The metadata_props of an export: the checkpoint's own description plus what the graph expects."""
    if isinstance(info.preprocessing, SeriesPreprocessing):
        expects = (
            f"{SERIES_INPUT}: float32 (N, C, L), zeros after each series' length up to the length above, "
            "z-normalised per series and channel when series_normalize is true"
        )
    elif isinstance(info.preprocessing, AudioPreprocessing):
        expects = (
            f"{AUDIO_INPUT}: float32 (N, 1, T) waveforms in [-1, 1] at sample_rate, channels averaged to mono, "
            "T = clip_samples (padded with zeros or cropped by the rule above); the log-mel features are "
            "computed inside the graph"
        )
    else:
        expects = (
            f"{INPUT_NAME}: uint8 (N, C, H, W), 0-255, decoded and resized by the rule above; "
            "mean and std are applied inside the graph"
        )
    preprocessing = {**info.preprocessing.to_dict(), "input": expects}
    values = {**info.extra, "model": info.model.to_dict(), "classes": info.classes, "preprocessing": preprocessing}
    values["versions"] = {**info.extra.get("versions", {}), **versions(), "exported_by": "cnnkit export"}
    return {"format": FORMAT, **{key: json.dumps(value) for key, value in values.items()}}


def write_onnx(model: nn.Module, info: CheckpointInfo, path: Path) -> None:
    """Export ``model`` with its normalisation and metadata to ``path`` (dynamic batch axis, atomic write)."""
    model = fold_pooled_batch_norms(model.cpu().eval())
    model = FlipAveraged(model) if info.test_time_flip else model
    image = isinstance(info.preprocessing, Preprocessing)  # float series and waveforms: nothing to normalise
    write_graph(
        NormalizedModel(model, info.preprocessing) if image else model, info, path, [OUTPUT_NAME], metadata(info)
    )


def write_graph(wrapped: nn.Module, info: CheckpointInfo, path: Path, outputs: list[str], props: dict) -> None:
    """Export ``wrapped`` (uint8 images, float32 series or waveforms in, ``outputs`` out) with ``props`` to ``path``.

    The file is written atomically. A series or audio graph asks for a dynamic length; an exporter that
    fixes it anyway leaves a graph whose input says so (:meth:`~cnnkit.deploy.onnx_runtime.OnnxClassifier.run`
    then refuses other lengths).
    """
    require("onnx", "onnxscript", "onnxruntime")
    import onnx

    prep = info.preprocessing
    if isinstance(prep, SeriesPreprocessing):  # (B, C, L): the length is free where the exporter keeps it so
        name, axes = SERIES_INPUT, {0: torch.export.Dim("batch"), 2: torch.export.Dim("length")}
        example = torch.zeros(2, prep.channels, prep.length)
    elif isinstance(prep, AudioPreprocessing):  # (B, 1, T): Dim.DYNAMIC lets the exporter take m5's lower bound
        name, axes = AUDIO_INPUT, {0: torch.export.Dim("batch"), 2: torch.export.Dim.DYNAMIC}
        example = torch.zeros(2, 1, prep.clip_samples)
    else:
        name, axes = INPUT_NAME, {0: torch.export.Dim("batch")}
        example = torch.zeros(2, prep.channels, prep.img_size, prep.img_size, dtype=torch.uint8)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's progress notes and deprecations are not the user's problem
        program = torch.onnx.export(
            wrapped,
            (example,),
            input_names=[name],
            output_names=outputs,
            dynamic_shapes=(axes,),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    proto = program.model_proto
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    write_atomic(path, proto.SerializeToString())


@dataclass
class Parity:
    """How closely ONNX Runtime reproduces PyTorch on the same inputs.

    Attributes:
        images: How many inputs were compared (images, series or clips; the key export.json has always had).
        max_abs_diff: The largest absolute logit difference.
        top1_agreement: Share of inputs whose top label agrees.
        atol: The tolerance ``max_abs_diff`` is held to.
        compared: What the inputs were, in words. Defaults to ``validation images``.
    """

    images: int
    max_abs_diff: float
    top1_agreement: float
    atol: float
    compared: str = "validation images"

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def format(self) -> str:
        return (
            f"parity on {self.images} {self.compared}: max |logit difference| {self.max_abs_diff:.2e} "
            f"(tolerance {self.atol:.0e}), top-1 agreement {self.top1_agreement:.2%}"
        )


def check_parity(
    reference: Classifier,
    exported: Classifier,
    images: ImageSet | SeriesSet,
    atol: float = DEFAULT_ATOL,
    compared: str = "validation images",
) -> Parity:
    """Compare the logits of two classifiers on the same inputs (uint8 images, float32 series or clips).

    ``compared`` names the inputs in the report line (``validation clips``, ``test series``).
    """
    expected, actual = reference.logits(images.inputs), exported.logits(images.inputs)
    return Parity(
        images=len(images),
        max_abs_diff=float((expected - actual).abs().max()),
        top1_agreement=float((expected.argmax(1) == actual.argmax(1)).double().mean()),
        atol=atol,
        compared=compared,
    )


def verification_split(classifier: Classifier) -> tuple[ImageSet | SeriesSet, str]:
    """The run's validation split (its test split when it has none), read as in training, and its name."""
    for split in ("val", "test"):
        inputs, _ = classifier.labelled_images(None, split)
        if len(inputs):
            return inputs, "validation" if split == "val" else split
    raise CnnkitError(f"the run has no validation or test {classifier.input_noun} to verify the export on")


def validation_images(classifier: Classifier) -> ImageSet | SeriesSet:
    """The inputs an export is verified on: :func:`verification_split`'s set alone."""
    return verification_split(classifier)[0]


def export_paths(out: str | Path, name: str | None) -> tuple[Path, Path, Path]:
    """(fp32 model, int8 model, report) paths: in a new export directory under ``out``, or ``out`` and its siblings.

    ``--out deploy/digits.onnx`` writes ``deploy/digits.onnx``, ``deploy/digits.int8.onnx`` and
    ``deploy/digits.export.json``; as everywhere in cnnkit, no earlier output is overwritten.
    """
    out = Path(out).expanduser()
    if not is_onnx(out):
        export_dir = new_run_dir(out, name, "export")
        return export_dir / "model.onnx", export_dir / "model.int8.onnx", export_dir / "export.json"
    if name is not None:
        raise CnnkitError(f"--out {out} names the model file itself; leave out --name (it names an export folder)")
    stem = out.name[: -len(out.suffix)]
    paths = out, out.with_name(f"{stem}.int8.onnx"), out.with_name(f"{stem}.export.json")
    if taken := [str(path) for path in paths if path.exists()]:
        raise CnnkitError(f"{', '.join(taken)} already exists; remove it or pass another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    return paths


class ParityCheck(Protocol):
    """What every export's parity check reports (a dataclass): whether it passed, and the line that says so."""

    @property
    def passed(self) -> bool: ...

    def format(self) -> str: ...


def record_parity(path: Path, report_path: Path, parity: ParityCheck, say: Callable[..., None]) -> dict:
    """The export's report, written with ``parity`` and printed; a failed check removes ``path`` and raises.

    Classifier, detector and generator exports each check their own outputs, then end the same way.
    """
    report: dict = {"model": str(path), "parity": {**asdict(parity), "passed": parity.passed}}
    write_atomic(report_path, json.dumps(report, indent=2).encode())
    say(f"wrote {path}\n{parity.format()}")
    if not parity.passed:
        raise _reject(path, f"ONNX Runtime disagrees with PyTorch: {parity.format()}")
    return report


def _reject(path: Path, message: str) -> CnnkitError:
    path.unlink(missing_ok=True)
    return CnnkitError(f"{message}; {path.name} was removed so it cannot be deployed by mistake")


def export_onnx(
    checkpoint: str | Path,
    out: str | Path = "runs",
    name: str | None = None,
    int8: bool = False,
    atol: float = DEFAULT_ATOL,
    max_accuracy_drop: float = 0.5,
    verbose: bool = True,
) -> dict:
    """Export a run to ONNX, verify it against PyTorch and optionally quantize it to int8.

    Writes ``model.onnx`` (and ``model.int8.onnx``) and ``export.json`` (the measurements)
    to a new directory under ``out``, or, when ``out`` ends in ``.onnx``, writes that file
    with its ``.int8.onnx`` and ``.export.json`` siblings beside it.

    The int8 model is judged on the run's validation and test images against the fp32 one,
    image by image (:class:`~cnnkit.deploy.quantize.AccuracyDrop`): accepted when the drop is
    within ``max_accuracy_drop`` with 95% confidence, rejected when it is beyond it with 95%
    confidence, and otherwise kept with a warning that there are not enough images to tell.

    Args:
        checkpoint: A run directory or ``.safetensors`` checkpoint.
        out: Folder for the export directory, or the ``.onnx`` file to write. Defaults to ``runs``.
        name: Export directory name under ``out``. Defaults to ``export``, ``export2``, ...
        int8: Also write a statically quantized (QDQ, per-channel) int8 model. Defaults to False.
        atol: Largest allowed absolute logit difference between ONNX Runtime and PyTorch. Defaults to 1e-3.
        max_accuracy_drop: Largest acceptable accuracy drop of the int8 model, in percentage points.
            Defaults to 0.5.
        verbose: Print each step. Defaults to True.

    Returns:
        The report also written to ``export.json``.

    Raises:
        CnnkitError: the fp32 model is not faithful (parity above ``atol``) or the int8 model loses more
            than ``max_accuracy_drop`` points with 95% confidence; the failing model file is removed.

    Example:
        >>> report = export_onnx("runs/train", int8=True)
        >>> report["parity"]["top1_agreement"]
        1.0
    """
    from cnnkit.tasks.detect.evaluate import is_detection_run

    if is_detection_run(checkpoint):  # boxes, not logits: its own graph and parity check
        raise CnnkitError(
            f"{checkpoint} is a detector: export it with cnnkit.deploy.detect_export.export_detector "
            "(what cnnkit export runs for it)"
        )
    say = print if verbose else (lambda *args: None)
    reference = load(checkpoint, device="cpu")
    if int8 and reference.preprocessing.modality == "series":
        raise CnnkitError(
            f"--int8 quantizes image and audio models so far; {checkpoint} reads time series: leave it out"
        )
    images, split = verification_split(reference)
    path, int8_path, report_path = export_paths(out, name)
    write_onnx(reference.model, reference.info, path)
    parity = check_parity(reference, OnnxClassifier(path), images, atol, f"{split} {reference.input_noun}")
    report = record_parity(path, report_path, parity, say)
    if int8:
        from cnnkit.deploy.quantize import REJECTED, quantize_run

        report["int8"], drop = quantize_run(path, int8_path, reference, max_accuracy_drop, say)
        write_atomic(report_path, json.dumps(report, indent=2).encode())
        if drop.decision == REJECTED:
            raise _reject(int8_path, f"{drop.format()}; the fp32 {path.name} is fine to use")
        say(drop.format())
    say(f"report written to {report_path}")
    return report

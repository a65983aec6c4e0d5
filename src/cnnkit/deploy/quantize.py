"""Static int8 quantization of an exported model, calibrated on the run's own training images.

QDQ format with per-channel int8 weights and uint8 activations (ONNX Runtime's
recommended x86 combination). ``reduce_range`` keeps weights to 7 bits because CPUs
without VNNI multiply uint8 by int8 with a saturating 16-bit instruction; the full range
would overflow there and cost accuracy for nothing. Activation ranges come from the
99.999th percentile of the calibration activations rather than their extremes: on the
digits model min-max ranges lost 0.19 points on the 539 val+test images, percentiles none.

An audio model's graph (waveforms in) is quantized only in its convolutions and classifier,
and its log-mel front end stays float (:func:`float_nodes`). Measured on a bcresnet trained on
five FSDD speakers (87.2% on 517 validation and test clips in fp32): the whole graph in int8
kept 16.6% (the power spectrum spans about ten decades, which 8 bits cannot hold), the front end
in float but the sub-spectral norms, broadcast residuals and their adds in uint8 kept 30.8%,
and convolutions and classifier alone kept 87.2% (96.9% top-1 agreement). That int8 model was
not faster (0.55x fp32's throughput on one thread of a shared 2-core machine): the front end's
windowed-DFT convolution is most of the work and stays float, and bcresnet's own convolutions
are small (9.2k weights), so the quantize/dequantize steps cost more than the int8 arithmetic
saves. The export reports the measured speed-up either way.
"""

from __future__ import annotations

import contextlib
import io
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

import numpy as np

from cnnkit.data import ImageSet
from cnnkit.data.series import SeriesSet
from cnnkit.deploy.onnx_runtime import AUDIO_INPUT, OnnxClassifier
from cnnkit.deploy.torch_runtime import Classifier
from cnnkit.errors import CnnkitError

CALIBRATION_IMAGES = 512
JUDGE_IMAGES = 10_000  # enough to resolve a 0.05-point drop; more only costs time
CONFIDENCE = 0.95  # one-sided, for each bound
ACCEPTED, REJECTED, UNDECIDED = "accepted", "rejected", "not enough images to tell"


@dataclass(frozen=True)
class AccuracyDrop:
    """The paired comparison of int8 with fp32 on the same images, and what it shows about the accuracy drop.

    Only the images the two models score differently carry information: ``fp32_only`` were
    right in fp32 and wrong in int8, ``int8_only`` the reverse. The drop is their difference
    over all ``images``; its bounds are one-sided Tango score bounds (Tango 1998, a standard
    interval for a difference of paired proportions), which, unlike a normal approximation,
    stay meaningful when no image, or one, changed. A fixed threshold on the measured drop
    alone flips on one image: on 179 validation images one image is 0.56 points.

    Attributes:
        images: Images scored by both models.
        fp32_only: Images right in fp32 and wrong in int8.
        int8_only: Images wrong in fp32 and right in int8.
        max_drop: The largest acceptable drop, in points of accuracy.
        confidence: Coverage of each one-sided bound. Defaults to 0.95.
        noun: What the inputs are called in :meth:`format` (``images``, ``clips``). Defaults to ``images``.
    """

    images: int
    fp32_only: int
    int8_only: int
    max_drop: float
    confidence: float = CONFIDENCE
    noun: str = "images"

    @property
    def drop(self) -> float:
        """The measured drop in points: (fp32_only - int8_only) / images."""
        return 100.0 * (self.fp32_only - self.int8_only) / self.images

    @property
    def upper_bound(self) -> float:
        """The drop is at most this many points, with ``confidence``."""
        return 100.0 * paired_bound(self.images, self.fp32_only, self.int8_only, self.confidence)

    @property
    def lower_bound(self) -> float:
        """The drop is at least this many points, with ``confidence``."""
        return -100.0 * paired_bound(self.images, self.int8_only, self.fp32_only, self.confidence)

    @property
    def decision(self) -> str:
        """``accepted`` (shown within ``max_drop``), ``rejected`` (shown beyond it) or ``not enough images to tell``."""
        if self.upper_bound <= self.max_drop:
            return ACCEPTED
        if self.lower_bound > self.max_drop:
            return REJECTED
        return UNDECIDED

    def to_dict(self) -> dict:
        return {
            "images": self.images,
            "fp32_only": self.fp32_only,
            "int8_only": self.int8_only,
            "accuracy_drop": self.drop,
            "drop_lower_bound": self.lower_bound,
            "drop_upper_bound": self.upper_bound,
            "confidence": self.confidence,
            "max_accuracy_drop": self.max_drop,
            "decision": self.decision,
            "passed": self.decision == ACCEPTED,
        }

    def format(self) -> str:
        measured = (
            f"accuracy drop {self.drop:.2f} points on {self.images} {self.noun} ({self.confidence:.0%} bounds "
            f"{self.lower_bound:.2f} to {self.upper_bound:.2f}; {self.fp32_only} right only in fp32, "
            f"{self.int8_only} only in int8)"
        )
        if self.decision == ACCEPTED:
            return f"int8 accepted: {measured}, within --max-accuracy-drop {self.max_drop}"
        if self.decision == REJECTED:
            return f"int8 quantization is not a success: {measured}, beyond --max-accuracy-drop {self.max_drop}"
        return (
            f"int8 kept but not confirmed: {measured}; that is not enough {self.noun} to tell whether the drop is "
            f"within --max-accuracy-drop {self.max_drop}. Check it on more labelled {self.noun} "
            "(cnnkit evaluate model.int8.onnx --data FOLDER)"
        )


def paired_bound(images: int, losses: int, gains: int, confidence: float = CONFIDENCE) -> float:
    """One-sided upper bound on ``p(loss) - p(gain)`` from paired counts (Tango's score bound), a fraction.

    Each of ``images`` is a loss (right before, wrong after), a gain (the reverse) or
    unchanged. Tango's statistic for a hypothesised difference ``d`` uses the maximum
    likelihood of the gain rate given ``d``; it falls as ``d`` grows, and the bound is the
    ``d`` where it reaches the normal quantile of ``confidence``. With no losses and no
    gains the bound is ``z² / (images + z²)``, about 2.7 / ``images`` at 95%.
    """
    z = NormalDist().inv_cdf(confidence)
    measured = (losses - gains) / images

    def statistic(d: float) -> float:
        # The gain rate's maximum likelihood given d: the root of 2n q² + b q - gains d (1 - d) = 0.
        b = -losses - gains + (2 * images - losses + gains) * d
        gain_rate = (math.sqrt(b * b + 8 * images * gains * d * (1 - d)) - b) / (4 * images)
        variance = images * (2 * gain_rate + d * (1 - d))
        difference = losses - gains - images * d
        if variance <= 0:  # only at d = 0 with no changes, or at d = 1
            return math.copysign(math.inf, difference) if difference else 0.0
        return difference / math.sqrt(variance)

    low, high = measured, 1.0
    if statistic(high) > -z:  # every image a loss: nothing can rule out the largest difference
        return 1.0
    for _ in range(60):  # bisection to 1e-18, well below one image in any real set
        middle = (low + high) / 2
        low, high = (middle, high) if statistic(middle) > -z else (low, middle)
    return high


def calibration_images(classifier: Classifier, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """``count`` training inputs spread evenly over the split (which is ordered by class).

    uint8 images (N, C, H, W), or an audio run's float32 clips (N, 1, T).
    """
    train, _ = classifier.labelled_images(None, "train")
    index = np.linspace(0, len(train) - 1, num=min(count, len(train))).round().astype(int)
    return train.inputs[np.unique(index)].numpy()


def float_nodes(graph) -> list[str]:
    """The nodes of an exported ONNX ``graph`` that came from the log-mel front end, which int8 cannot hold.

    The exporter records each node's module path in its metadata (``pkg.torch.onnx.class_hierarchy``).
    A graph without it gets none back, and int8 of its front end then fails the accuracy judge.
    """
    from cnnkit.models.frontend import LogMel

    module = f"{LogMel.__module__}.{LogMel.__qualname__}"
    return [
        node.name
        for node in graph.node
        if any(p.key == "pkg.torch.onnx.class_hierarchy" and module in p.value for p in node.metadata_props)
    ]


def quantize_int8(fp32_path: Path, int8_path: Path, images: np.ndarray, batch_size: int = 32) -> None:
    """Write a statically quantized copy of ``fp32_path``, calibrated on ``images`` (its graph input's batches).

    An audio graph's front end stays float and only its convolutions and classifier are quantized
    (the module docstring has the measurements).
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    graph = onnx.load(str(fp32_path), load_external_data=False).graph
    input_name = graph.input[0].name
    audio = {"nodes_to_exclude": float_nodes(graph), "op_types_to_quantize": ["Conv", "Gemm"]}

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.split(images, range(batch_size, len(images), batch_size)))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {input_name: np.ascontiguousarray(batch)}

    with tempfile.TemporaryDirectory() as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # Folds constants and infers shapes, for cleaner QDQ placement. ONNX's own shape inference
        # is enough for these graphs; the symbolic one crashes on the test-time-flip graph.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        with contextlib.redirect_stdout(io.StringIO()):  # the percentile calibrator prints its progress
            quantize_static(
                str(prepared),
                str(int8_path),
                Batches(),
                quant_format=QuantFormat.QDQ,
                calibrate_method=CalibrationMethod.Percentile,
                per_channel=True,
                reduce_range=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                **(audio if input_name == AUDIO_INPUT else {}),
            )


def held_out_images(classifier: Classifier, count: int = JUDGE_IMAGES) -> ImageSet | SeriesSet:
    """The run's validation then test images (or clips), at most ``count`` (each split thinned evenly), to judge int8.

    Both splits are unseen in training and calibration; the test split joins because a
    validation split alone is often too small to show a drop of half a point (no change on
    179 images still leaves a 1.5-point bound).
    """
    import torch

    splits = []
    for split in ("val", "test"):
        images, _ = classifier.labelled_images(None, split)
        room = count - sum(len(s) for s in splits)
        if len(images) and room > 0:
            index = np.linspace(0, len(images) - 1, num=min(room, len(images))).round().astype(int)
            splits.append(images.subset(np.unique(index)))
    if not splits:
        raise CnnkitError(f"the run has no validation or test {classifier.input_noun} to judge the int8 model on")
    labels, classes = torch.cat([s.labels for s in splits]), splits[0].classes
    sources = [source for s in splits for source in s.sources]
    if isinstance(splits[0], SeriesSet):
        values, lengths = torch.cat([s.values for s in splits]), torch.cat([s.lengths for s in splits])
        return SeriesSet(values, lengths, labels, classes, sources)
    return ImageSet(torch.cat([s.images for s in splits]), labels, classes, sources)


def quantize_run(
    fp32_path: Path, int8_path: Path, reference: Classifier, max_drop: float, say: Callable = print
) -> tuple[dict, AccuracyDrop]:
    """Quantize, judge the int8 model against fp32 on held-out images, and measure batch-32 throughput of both.

    Returns the report that ``export.json`` keeps (the counts, top-1 agreement, the measured
    drop, its bounds and the decision) and the :class:`AccuracyDrop` itself.
    """
    from cnnkit.deploy.timing import throughput
    from cnnkit.tasks.classify.evaluate import score

    calibration = calibration_images(reference)
    quantize_int8(fp32_path, int8_path, calibration)
    images = held_out_images(reference)
    fp32, int8 = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
    logits = {key: model.logits(images.inputs) for key, model in (("fp32", fp32), ("int8", int8))}
    accuracy = {key: score(value, images.labels, images.classes).accuracy for key, value in logits.items()}
    predicted = {key: value.argmax(1) for key, value in logits.items()}
    right = {key: value == images.labels for key, value in predicted.items()}  # (N,) bool, paired by image
    losses, gains = int((right["fp32"] & ~right["int8"]).sum()), int((right["int8"] & ~right["fp32"]).sum())
    drop = AccuracyDrop(len(images), losses, gains, max_drop, noun=reference.input_noun)
    agreement = float((predicted["fp32"] == predicted["int8"]).double().mean())
    batch = images.inputs[:32]
    speed = {key: throughput(model.logits, batch) for key, model in (("fp32", fp32), ("int8", int8))}
    report = {
        "model": str(int8_path),
        "calibration_images": len(calibration),
        "top1_agreement": agreement,
        "accuracy_fp32": accuracy["fp32"],
        "accuracy_int8": accuracy["int8"],
        **drop.to_dict(),
        "throughput_fp32": speed["fp32"],
        "throughput_int8": speed["int8"],
        "speedup": speed["int8"] / speed["fp32"],
    }
    noun = reference.input_noun
    say(
        f"wrote {int8_path} (calibrated on {len(calibration)} training {noun})\n"
        f"on {len(images)} validation and test {noun}: top-1 agreement with fp32 {agreement:.2%}, "
        f"accuracy fp32 {accuracy['fp32']:.2%}, int8 {accuracy['int8']:.2%}\n"
        f"batch-32 throughput: fp32 {speed['fp32']:,.0f}/s, int8 {speed['int8']:,.0f}/s "
        f"(int8 speed-up {report['speedup']:.2f}x)"
    )
    return report, drop

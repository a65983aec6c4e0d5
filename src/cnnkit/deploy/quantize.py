"""Static int8 quantization of an exported model, calibrated on the run's own training images.

QDQ format with per-channel int8 weights and uint8 activations (ONNX Runtime's
recommended x86 combination). ``reduce_range`` keeps weights to 7 bits because CPUs
without VNNI multiply uint8 by int8 with a saturating 16-bit instruction; the full range
would overflow there and cost accuracy for nothing. Activation ranges come from the
99.999th percentile of the calibration activations rather than their extremes: on the
digits model min-max ranges lost 0.19 points on the 539 val+test images, percentiles none.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cnnkit.data import ImageSet
from cnnkit.deploy.onnx_runtime import INPUT_NAME, OnnxClassifier
from cnnkit.deploy.torch_runtime import Classifier

CALIBRATION_IMAGES = 512


def calibration_images(classifier: Classifier, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """``count`` training images spread evenly over the split (which is ordered by class), uint8 (N, C, H, W)."""
    train, _ = classifier.labelled_images(None, "train")
    index = np.linspace(0, len(train) - 1, num=min(count, len(train))).round().astype(int)
    return train.images[np.unique(index)].numpy()


def quantize_int8(fp32_path: Path, int8_path: Path, images: np.ndarray, batch_size: int = 32) -> None:
    """Write a statically quantized copy of ``fp32_path``, calibrated on uint8 ``images`` (N, C, H, W)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(np.split(images, range(batch_size, len(images), batch_size)))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}

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
            )


def quantize_run(
    fp32_path: Path, int8_path: Path, reference: Classifier, images: ImageSet, say: Callable = print
) -> dict:
    """Quantize, then measure validation accuracy and batch-32 throughput of the fp32 and int8 models."""
    from cnnkit.deploy.timing import throughput

    calibration = calibration_images(reference)
    quantize_int8(fp32_path, int8_path, calibration)
    fp32, int8 = OnnxClassifier(fp32_path), OnnxClassifier(int8_path)
    accuracy = {
        key: float((model.logits(images.images).argmax(1) == images.labels).double().mean())
        for key, model in (("fp32", fp32), ("int8", int8))
    }
    batch = images.images[:32]
    speed = {key: throughput(model.logits, batch) for key, model in (("fp32", fp32), ("int8", int8))}
    report = {
        "model": str(int8_path),
        "calibration_images": len(calibration),
        "validation_images": len(images),
        "accuracy_fp32": accuracy["fp32"],
        "accuracy_int8": accuracy["int8"],
        "accuracy_drop": 100.0 * (accuracy["fp32"] - accuracy["int8"]),
        "throughput_fp32": speed["fp32"],
        "throughput_int8": speed["int8"],
        "speedup": speed["int8"] / speed["fp32"],
    }
    say(
        f"wrote {int8_path} (calibrated on {len(calibration)} training images)\n"
        f"validation accuracy: fp32 {accuracy['fp32']:.2%}, int8 {accuracy['int8']:.2%} "
        f"(drop {report['accuracy_drop']:.2f} points)\n"
        f"batch-32 throughput: fp32 {speed['fp32']:,.0f}/s, int8 {speed['int8']:,.0f}/s "
        f"(int8 speed-up {report['speedup']:.2f}x)"
    )
    return report

"""Test-time flip: the averaged prediction, the automatic choice, and one answer across checkpoint and export."""

import json
import math

import pytest
import torch

import cnnkit
from cnnkit.data import load_data
from cnnkit.data.augment import parse_augmentation
from cnnkit.models import create_model
from cnnkit.tasks.classify.tta import FlipAveraged, resolve_tta


def test_flip_average_is_the_log_of_the_mean_probability_and_ignores_mirroring():
    torch.manual_seed(0)
    model = create_model("convnet", num_classes=5, in_channels=1, img_size=16).eval()
    images = torch.randn(4, 1, 16, 16)
    with torch.no_grad():
        averaged = FlipAveraged(model)(images)
        expected = ((model(images).softmax(1) + model(images.flip(-1)).softmax(1)) / 2).log()
        mirrored = FlipAveraged(model)(images.flip(-1))
    torch.testing.assert_close(averaged, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(averaged.exp().sum(1), torch.ones(4))  # still a probability distribution
    torch.testing.assert_close(mirrored, averaged, atol=1e-5, rtol=1e-5)


def test_flip_average_stays_finite_for_certain_predictions():
    confident = torch.nn.Linear(4, 3)
    torch.nn.init.constant_(confident.weight, 200.0)
    with torch.no_grad():
        logits = FlipAveraged(torch.nn.Sequential(torch.nn.Flatten(), confident))(torch.ones(2, 1, 2, 2))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize(
    ("requested", "augment", "expected"),
    [("auto", "hflip", "flip"), ("auto", "crop=4", "none"), ("auto", "none", "none"), ("flip", "none", "flip")],
)
def test_auto_flips_only_when_training_flipped(requested, augment, expected):
    assert resolve_tta(requested, parse_augmentation(augment, "folder", 32)) == expected


@pytest.mark.slow
def test_a_flip_trained_run_predicts_and_exports_with_flip(tmp_path):
    run = cnnkit.train(data="digits", epochs=1, augment="hflip", out=str(tmp_path), verbose=False)
    classifier = cnnkit.load(run.dir, device="cpu")
    assert classifier.info.extra["tta"] == "flip"
    images = load_data("digits").test.images[:16]
    # The checkpoint's prediction for an image and for its mirror are the same distribution.
    torch.testing.assert_close(classifier.logits(images), classifier.logits(images.flip(-1)), atol=1e-5, rtol=1e-5)
    assert math.isclose(run.test.accuracy, classifier.evaluate()[0].accuracy, abs_tol=1e-9)
    # The run's report shows the same flipped numbers as the console and results.json, labelled as such.
    report = json.loads((run.dir / "report" / "report.json").read_text())
    assert report["test_time_flip"] and report["accuracy"] == run.test.accuracy
    results = json.loads((run.dir / "results.json").read_text())
    assert report["confusion"] == run.test.confusion == results["test"]["confusion"]
    assert report["per_class"] == run.test.to_dict()["per_class"]
    assert "with test-time flip" in (run.dir / "report" / "report.html").read_text()
    pytest.importorskip("onnxruntime", reason="the deploy extra provides onnxruntime")
    from cnnkit.deploy.export import export_onnx

    report = export_onnx(run.dir, out=tmp_path, name="export", int8=True, max_accuracy_drop=100, verbose=False)
    assert report["parity"]["passed"] and report["parity"]["top1_agreement"] == 1.0
    assert report["int8"]["accuracy_int8"] > 0.5  # the flip graph quantizes and still classifies
    exported = cnnkit.load(tmp_path / "export" / "model.onnx")
    torch.testing.assert_close(exported.logits(images), classifier.logits(images), atol=1e-4, rtol=1e-4)

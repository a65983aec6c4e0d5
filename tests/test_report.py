"""The evaluation report: calibration and confusion numbers, ``evaluate --report`` and the report of a training run."""

import json

import pytest
import torch
from conftest import run_cli

from cnnkit.understand.report import calibration, most_confused, write_report


def test_calibration_of_a_calibrated_and_an_overconfident_model():
    labels = torch.zeros(10, dtype=torch.long)
    calibrated = torch.tensor([[0.8, 0.2]] * 8 + [[0.2, 0.8]] * 2)  # confident 0.8 each time, right 8 times in 10
    bins, ece = calibration(calibrated, labels)
    assert ece == pytest.approx(0.0, abs=1e-6)
    assert bins[8].count == 10 and bins[8].accuracy == pytest.approx(0.8)
    overconfident = torch.tensor([[0.0, 1.0]] * 10)  # always sure, always wrong
    bins, ece = calibration(overconfident, labels)
    assert ece == pytest.approx(1.0) and bins[-1].count == 10


def test_most_confused_pairs_come_largest_first_without_the_diagonal():
    confusion = torch.tensor([[9, 1, 0], [4, 20, 2], [0, 0, 7]])
    assert most_confused(confusion, ["a", "b", "c"]) == [("b", "a", 4), ("b", "c", 2), ("a", "b", 1)]


@pytest.mark.slow
def test_evaluate_report_cli_writes_a_page_that_agrees_with_evaluate(digits_run, tmp_path):
    plain = run_cli("evaluate", str(digits_run), "--json")
    assert plain.returncode == 0, plain.stderr
    evaluated = json.loads(plain.stdout)
    accuracy = evaluated["accuracy"]
    result = run_cli("evaluate", str(digits_run), "--report", "--out", str(tmp_path), "--name", "report")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "report"
    numbers = json.loads((folder / "report.json").read_text())
    assert numbers["accuracy"] == pytest.approx(accuracy) and numbers["confusion"] == evaluated["confusion"]
    assert numbers["count"] == sum(map(sum, numbers["confusion"])) == 359
    assert 0 <= numbers["expected_calibration_error"] <= 1 and 0 <= numbers["tta_flip_accuracy"] <= 1
    wrong = numbers["count"] - sum(numbers["confusion"][i][i] for i in range(10))
    assert len(numbers["top_losses"]) == min(wrong, 12)
    confidences = [loss["confidence"] for loss in numbers["top_losses"]]
    assert confidences == sorted(confidences, reverse=True)
    page = (folder / "report.html").read_text()
    for section in ("Per class", "Confusion matrix", "Most confused pairs", "Calibration", "flip-TTA accuracy"):
        assert section in page
    assert all(loss["source"] in page for loss in numbers["top_losses"])
    assert (folder / "confusion.png").is_file() and (folder / "reliability.png").is_file()


def test_training_runs_write_the_report(digits_run):
    numbers = json.loads((digits_run / "report" / "report.json").read_text())
    results = json.loads((digits_run / "results.json").read_text())
    assert numbers["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert numbers["confusion"] == results["test"]["confusion"]
    assert (digits_run / "report" / "report.html").is_file()


@pytest.mark.slow
def test_report_of_a_flip_model_equals_evaluate_and_names_each_wrong_file(tmp_path):
    from cnnkit.data import ImageSet
    from cnnkit.modelinfo import Preprocessing
    from cnnkit.models import create_model
    from cnnkit.tasks.classify.evaluate import evaluate

    torch.manual_seed(0)
    model = create_model("convnet", num_classes=3, in_channels=1, img_size=12).eval()
    images = torch.randint(0, 256, (30, 1, 12, 12), dtype=torch.uint8)
    labels = torch.arange(30) % 3
    sources = [f"{'abc'[i % 3]}/scan_{i:03d}.png" for i in range(30)]
    data = ImageSet(images, labels, ["a", "b", "c"], sources)
    prep, cpu = Preprocessing(12, 1, (0.5,), (0.25,)), torch.device("cpu")
    numbers = write_report(model, data, prep, cpu, tmp_path, tta=True)
    expected = evaluate(model, data, prep, cpu, tta=True)
    assert numbers["test_time_flip"] and numbers["accuracy"] == expected.accuracy == numbers["tta_flip_accuracy"]
    assert numbers["loss"] == pytest.approx(expected.loss) and numbers["macro_f1"] == pytest.approx(expected.macro_f1)
    assert numbers["confusion"] == expected.confusion
    assert numbers["per_class"] == expected.to_dict()["per_class"]
    assert numbers["no_flip_accuracy"] == evaluate(model, data, prep, cpu).accuracy
    page = (tmp_path / "report.html").read_text()
    assert "accuracy (with test-time flip)" in page and "Confusion matrix (with test-time flip)" in page
    assert numbers["top_losses"], "an untrained model gets some of 30 images wrong"
    for loss in numbers["top_losses"]:
        assert loss["source"] == sources[loss["index"]] and loss["source"] in page

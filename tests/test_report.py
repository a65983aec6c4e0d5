"""The evaluation report: calibration and confusion numbers, ``evaluate --report`` and the report of a training run."""

import json

import pytest
import torch
from conftest import run_cli

from cnnkit.understand.report import calibration, most_confused


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


def test_evaluate_report_cli_writes_a_page_that_agrees_with_evaluate(digits_run, tmp_path):
    plain = run_cli("evaluate", str(digits_run), "--json")
    assert plain.returncode == 0, plain.stderr
    accuracy = json.loads(plain.stdout)["accuracy"]
    result = run_cli("evaluate", str(digits_run), "--report", "--out", str(tmp_path), "--name", "report")
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "report"
    numbers = json.loads((folder / "report.json").read_text())
    assert numbers["accuracy"] == pytest.approx(accuracy)
    assert numbers["count"] == sum(map(sum, numbers["confusion"])) == 359
    assert 0 <= numbers["expected_calibration_error"] <= 1 and 0 <= numbers["tta_flip_accuracy"] <= 1
    wrong = numbers["count"] - sum(numbers["confusion"][i][i] for i in range(10))
    assert len(numbers["top_losses"]) == min(wrong, 12)
    confidences = [loss["confidence"] for loss in numbers["top_losses"]]
    assert confidences == sorted(confidences, reverse=True)
    page = (folder / "report.html").read_text()
    for section in ("Per class", "Confusion matrix", "Most confused pairs", "Calibration", "flip-TTA accuracy"):
        assert section in page
    assert (folder / "confusion.png").is_file() and (folder / "reliability.png").is_file()


def test_training_runs_write_the_report(digits_run):
    numbers = json.loads((digits_run / "report" / "report.json").read_text())
    results = json.loads((digits_run / "results.json").read_text())
    assert numbers["accuracy"] == pytest.approx(results["test"]["accuracy"])
    assert (digits_run / "report" / "report.html").is_file()

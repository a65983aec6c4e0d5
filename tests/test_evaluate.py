"""``cnnkit evaluate``: which split it reads, macro F1 on data holding a few of the model's classes, and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli
from PIL import Image

from cnnkit.cli.main import main
from cnnkit.deploy.torch_runtime import Classifier
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models import create_model


def _untrained_digits_classifier() -> Classifier:
    model = create_model("convnet", num_classes=10, in_channels=1, img_size=8)
    info = CheckpointInfo(
        ModelSpec("convnet", 10, 1, 8), [str(i) for i in range(10)], Preprocessing(8, 1, (0.3,), (0.3,)), {}
    )
    info.extra["config"] = {"data": "digits"}
    return Classifier(model, info, torch.device("cpu"))


def _digits_folder(root: Path, classes: tuple[int, ...]) -> Path:
    """The test images of ``classes`` as PNG files in one subfolder per class (no split subfolders)."""
    from cnnkit.data import load_data

    test = load_data("digits").test
    for index, (image, label) in enumerate(zip(test.images, test.labels.tolist())):
        if label in classes:
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[0].numpy()).save(root / str(label) / f"{index}.png")
    return root


def _split_tree(root: Path) -> Path:
    """A folder with train/val/test subfolders, one image each."""
    for split in ("train", "val", "test"):
        (root / split / "0").mkdir(parents=True)
        Image.new("L", (8, 8)).save(root / split / "0" / "a.png")
    return root


def test_evaluated_split_is_none_for_a_folder_read_whole(shapes_folder, tmp_path):
    classifier = _untrained_digits_classifier()
    assert classifier.evaluated_split(None, "val") == "val"  # the training data: a built-in, split as in training
    assert classifier.evaluated_split("digits", "train") == "train"
    assert classifier.evaluated_split(str(shapes_folder), "val") is None
    split_tree = _split_tree(tmp_path / "splits")
    assert classifier.evaluated_split(str(split_tree), "val") == "val"


def test_evaluate_report_of_an_onnx_export_is_refused_in_one_line(tmp_path, capsys):
    export = tmp_path / "model.onnx"
    export.write_bytes(b"not read")
    assert main(["evaluate", str(export), "--report", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--report" in error and "the run or checkpoint" in error
    assert not any(tmp_path.glob("evaluate*"))


@pytest.mark.slow
def test_evaluate_cli_on_a_subset_of_classes_averages_present_classes_and_names_no_split(digits_run, tmp_path):
    from sklearn.metrics import f1_score

    folder = _digits_folder(tmp_path / "zeros_and_ones", (0, 1))
    result = run_cli("evaluate", str(digits_run), "--data", str(folder), "--split", "val", "--json")
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout)
    assert numbers["split"] is None and numbers["count"] == 72
    assert "--split val does not apply" in result.stderr and "all 72 images were evaluated" in result.stderr
    pairs = [(i, j) for i, row in enumerate(numbers["confusion"]) for j, n in enumerate(row) for _ in range(n)]
    truth, predicted = zip(*pairs)
    assert numbers["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    present = set(truth) | set(predicted)
    assert numbers["absent_classes"] == [str(k) for k in range(10) if k not in present]
    text = run_cli("evaluate", str(digits_run), "--data", str(folder))
    assert text.returncode == 0, text.stderr
    assert f"{10 - len(present)} of the model's 10 classes are absent" in text.stdout

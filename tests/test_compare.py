"""``cnnkit compare``: perturbations, the depth knob, the pipeline end to end, a verdict that follows the numbers."""

import copy
import json

import pytest
import torch
from conftest import run_cli

from cnnkit.compare.verdict import verdict
from cnnkit.models import create_model
from cnnkit.understand.robustness import PERTURBATIONS, perturb, random_shift


def test_shift_moves_each_image_the_asked_number_of_pixels():
    images = torch.zeros(4, 1, 9, 9, dtype=torch.uint8)
    images[:, :, 4, 4] = 255
    shifted = perturb(images, "shift", 3)
    spots = [tuple(image[0].nonzero()[0].tolist()) for image in shifted]
    assert spots == [(4, 7), (4, 1), (7, 4), (1, 4)]  # right, left, down, up


@pytest.mark.parametrize("kind", list(PERTURBATIONS))
def test_perturbations_are_deterministic_and_change_the_images(kind):
    images = torch.randint(30, 200, (6, 3, 16, 16), dtype=torch.uint8)
    level = PERTURBATIONS[kind][-1]
    first, second = perturb(images, kind, level), perturb(images, kind, level)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    assert torch.equal(first, second) and not torch.equal(first, images)


def test_random_shift_keeps_every_image_within_the_offset():
    images = torch.zeros(50, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 4, 4] = 255
    shifted = random_shift(images, 1, torch.Generator().manual_seed(0))
    spots = torch.stack([image[0].nonzero()[0] for image in shifted])
    assert ((spots - 4).abs() <= 1).all() and len(spots.unique(dim=0)) > 4


def test_convnet_stages_and_depth_add_convolutions():
    def convolutions(**kwargs) -> int:
        model = create_model("convnet", 10, 1, 28, **kwargs)
        return len([m for m in model.modules() if isinstance(m, torch.nn.Conv2d)])

    assert {stages: convolutions(stages=stages) for stages in (1, 2, 3, 4)} == {1: 1, 2: 2, 3: 3, 4: 4}
    assert convolutions(depth=2) == 6


def _results(cnn_accuracy=0.98, mlp_accuracy=0.95, cnn_shift=0.90, mlp_shift=0.60, cnn_small=0.85, mlp_small=0.80):
    levels = PERTURBATIONS

    def robustness(clean, shifted):
        return {
            "clean": clean,
            **{k: [[lv, shifted if k == "shift" else clean - 0.1] for lv in v] for k, v in levels.items()},
        }

    def model(name, accuracy, parameters, macs, seconds):
        return {
            "name": name,
            "parameters": parameters,
            "multiply_adds": macs,
            "train_seconds": seconds,
            "test_accuracy": accuracy,
        }

    fit = {"train_accuracy": 1.0, "val_accuracy": 0.95, "gap": 0.05}
    return {
        "models": {
            "cnn": model("convnet", cnn_accuracy, 300_000, 5_000_000, 10.0),
            "mlp": model("mlp", mlp_accuracy, 500_000, 500_000, 2.0),
        },
        "robustness": {"cnn": robustness(cnn_accuracy, cnn_shift), "mlp": robustness(mlp_accuracy, mlp_shift)},
        "data_efficiency": {
            "fractions": [0.05, 1.0],
            "train_images": [60, 1200],
            "cnn": [cnn_small, cnn_accuracy],
            "mlp": [mlp_small, mlp_accuracy],
        },
        "overfitting": {
            k: {"plain": fit, "regularised": {**fit, "val_accuracy": 0.97, "gap": 0.02}} for k in ("cnn", "mlp")
        },
        "depth": [
            {"stages": s, "conv_layers": 2 * s + 1, "parameters": 1000 * s, "test_accuracy": a}
            for s, a in ((1, 0.9), (2, 0.97), (3, 0.98))
        ],
    }


def test_verdict_follows_the_numbers():
    base = verdict(_results())
    assert base[0].startswith("Use the CNN") and "98.0% vs 95.0%" in base[0]
    assert "Translation robustness" in base[1] and ": held" in base[1]
    assert "Parameter efficiency" in base[3] and ": held" in base[3]
    assert "Hunger for data" in base[4] and "did not hold" in base[4] and "60 images" in base[4]
    assert base[-1].startswith("Depth paid off")

    assert verdict(_results(cnn_accuracy=0.90, mlp_accuracy=0.95))[0].startswith("Use the MLP")
    assert verdict(_results(cnn_accuracy=0.951, mlp_accuracy=0.95))[0].startswith("Either model")
    assert "did not hold" in verdict(_results(cnn_shift=0.60, mlp_shift=0.90))[1]
    assert "neither model held up better" in base[5]
    assert ": held" in verdict(_results(cnn_small=0.50, mlp_small=0.80))[4]
    flat = _results()
    flat["depth"] = [{**row, "test_accuracy": 0.98} for row in flat["depth"]]
    assert verdict(flat)[-1].startswith("Depth did not pay off")
    more_parameters = copy.deepcopy(_results())
    more_parameters["models"]["cnn"]["parameters"] = 900_000
    assert "did not hold" in verdict(more_parameters)[3]


@pytest.mark.slow
def test_compare_cli_runs_end_to_end_on_a_tiny_budget(tmp_path):
    args = ["--epochs", "1", "--train-size", "100", "--test-size", "40", "--out", str(tmp_path), "--name", "tiny"]
    result = run_cli("compare", "--data", "digits", *args, "--json")
    assert result.returncode == 0, result.stderr
    results = json.loads(result.stdout)
    assert results["sizes"]["test"] == 40 and results["budget"]["epochs"] == 1
    assert results["verdict"] == verdict(results)  # the verdict is derived from the numbers, nothing else
    assert len(results["data_efficiency"]["cnn"]) == 5 and [r["stages"] for r in results["depth"]] == [1, 2, 3, 4]
    assert set(results["robustness"]["mlp"]) == {"clean", *PERTURBATIONS}
    assert results["models"]["cnn"]["multiply_adds"] > results["models"]["cnn"]["parameters"]  # weights reused
    assert results["models"]["mlp"]["multiply_adds"] == pytest.approx(results["models"]["mlp"]["parameters"], rel=0.01)
    folder = tmp_path / "tiny"
    markdown = (folder / "report.md").read_text()
    assert results["verdict"][0] in markdown and f"{results['models']['mlp']['test_accuracy']:.2%}" in markdown
    for plot in ("summary.png", "data_efficiency.png", "robustness.png", "overfitting.png", "depth.png"):
        assert (folder / plot).stat().st_size > 1000 and plot in (folder / "report.html").read_text()

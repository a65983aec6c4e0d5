"""``cnnkit compare``: perturbations, the depth knob, the pipeline end to end, a verdict that follows the numbers."""

import copy
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from cnnkit.compare import report as report_module
from cnnkit.compare import study as study_module
from cnnkit.compare.budget import Budget
from cnnkit.compare.depth import DEFAULT_STAGES, DEFAULT_WIDTHS, MAX_WIDTH, STAGES, TOLERANCE, plan_depths
from cnnkit.compare.study import Study, compare, count_convnet_parameters
from cnnkit.compare.verdict import verdict
from cnnkit.data import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import create_model
from cnnkit.understand.robustness import PERTURBATIONS, perturb


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
            {
                "stages": s,
                "widths": [16 * s] * s,
                "conv_layers": s,
                "parameters": 100_000 + 1000 * s,
                "multiply_adds": 1_000_000 * s,
                "test_accuracy": a,
            }
            for s, a in ((1, 0.9), (2, 0.97), (3, 0.98))
        ],
        "depth_match": {"parameters": 103_000, "tolerance": 0.15, "max_width": 1024, "left_out": []},
    }


def test_verdict_follows_the_numbers():
    base = verdict(_results())
    assert base[0].startswith("Use the CNN") and "98.0% vs 95.0%" in base[0]
    assert "Translation robustness" in base[1] and ": held" in base[1]
    assert "Parameter efficiency" in base[3] and ": held" in base[3]
    assert "Hunger for data" in base[4] and "did not hold" in base[4] and "60 images" in base[4]
    assert base[-1].startswith("Depth paid off at a matched size (103,000 parameters ± 15%)")
    assert "left out" not in base[-1]

    assert verdict(_results(cnn_accuracy=0.90, mlp_accuracy=0.95))[0].startswith("Use the MLP")
    assert verdict(_results(cnn_accuracy=0.951, mlp_accuracy=0.95))[0].startswith("Either model")
    assert "did not hold" in verdict(_results(cnn_shift=0.60, mlp_shift=0.90))[1]
    assert "neither model held up better" in base[5]
    assert ": held" in verdict(_results(cnn_small=0.50, mlp_small=0.80))[4]
    flat = _results()
    flat["depth"] = [{**row, "test_accuracy": 0.98} for row in flat["depth"]]
    assert verdict(flat)[-1].startswith("Depth did not pay off at a matched size")
    assert "a shallower CNN of the same size is enough" in verdict(flat)[-1]
    flat["depth_match"]["left_out"] = [{"stages": 4, "parameters": 40_000}]
    assert "4 stage(s) left out: with at most 1,024 channels" in verdict(flat)[-1]
    flat["depth"] = flat["depth"][:1]
    assert verdict(flat)[-1].startswith("Depth could not be compared")
    more_parameters = copy.deepcopy(_results())
    more_parameters["models"]["cnn"]["parameters"] = 900_000
    assert "did not hold" in verdict(more_parameters)[3]


def _random_study(channels: int = 1, img_size: int = 8) -> Study:
    """A study of 40 random images in 10 classes: enough to build its models, not to learn anything."""
    images = torch.randint(0, 256, (40, channels, img_size, img_size), dtype=torch.uint8)
    data = ImageSet(images, torch.arange(40) % 10, [str(c) for c in range(10)], [""] * 40)
    prep = Preprocessing(img_size, channels, [0.5] * channels, [0.25] * channels)
    return Study(data, data, data, prep, Budget(), torch.device("cpu"))


@pytest.mark.parametrize("channels, img_size", [(1, 8), (1, 28), (3, 32)])
def test_depth_plan_matches_parameter_counts(channels, img_size):
    study = _random_study(channels, img_size)
    plan = plan_depths(partial(count_convnet_parameters, study))
    default = sum(p.numel() for p in study.build("convnet").parameters())
    assert plan.target == default and plan.widths[DEFAULT_STAGES] == DEFAULT_WIDTHS
    assert sorted([*plan.widths, *plan.left_out]) == list(STAGES) and len(plan.widths) >= 3
    for stages, widths in plan.widths.items():
        parameters = sum(p.numel() for p in study.build("convnet", stages=stages, widths=widths).parameters())
        assert parameters == plan.parameters[stages]  # the meta-device count is the real one
        assert abs(parameters / plan.target - 1) <= TOLERANCE and max(widths) <= MAX_WIDTH
    assert not plan.left_out or img_size > 8  # the 8x8 digits fit every depth: one stage of 608 channels


def _contents(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_compare_failure_leaves_no_run_dir(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    with pytest.raises(CnnkitError):
        compare(str(tmp_path / "missing"), out=runs)
    with pytest.raises(CnnkitError):
        compare(budget=Budget(epochs=0), out=runs)
    assert not runs.exists()  # both refused before any folder was made

    monkeypatch.setattr(study_module, "load_study", lambda *args: _random_study())

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_module.Study, "fit", interrupted)
    for name in (None, "named"):  # a named folder is claimed before the study, so it must be removed
        with pytest.raises(KeyboardInterrupt):
            compare(out=runs, name=name, say=lambda line: None)
        assert _contents(runs) == []

    def half_written(results, out_dir):
        (out_dir / "summary.png").write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(study_module, "measure", lambda *args: _results())
    monkeypatch.setattr(report_module, "write_compare_report", half_written)
    with pytest.raises(OSError):
        compare(out=runs)
    assert _contents(runs) == []
    (runs / "mine").mkdir(parents=True)
    with pytest.raises(OSError):
        compare(out=runs, name="mine")
    assert _contents(runs) == ["mine"] and _contents(runs / "mine") == []  # the user's folder stays, emptied


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory: pytest.TempPathFactory):
    """``cnnkit compare`` on the digits with 100 training images and one epoch, under a hostile matplotlibrc.

    The user's matplotlibrc asks for a font that is not installed and for constrained
    layout, which make matplotlib warn on every figure unless the report sets its own style.
    """
    root = tmp_path_factory.mktemp("compare")
    config = root / "matplotlib"
    config.mkdir()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MPLCONFIGDIR", str(config))
        # build the font cache first: a build over 5 s logs "building the font cache", which is not this test's matter
        subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], capture_output=True, check=True)
        (config / "matplotlibrc").write_text("font.family: NoSuchFont\nfigure.constrained_layout.use: True\n")
        args = ["--epochs", "1", "--train-size", "100", "--test-size", "40", "--out", str(root), "--name", "tiny"]
        result = run_cli("compare", "--data", "digits", *args)
    assert result.returncode == 0, result.stderr
    return result, root / "tiny"


@pytest.mark.slow
def test_compare_cli_runs_end_to_end_on_a_tiny_budget(tiny_compare):
    _, folder = tiny_compare
    results = json.loads((folder / "results.json").read_text())
    assert results["sizes"]["test"] == 40 and results["budget"]["epochs"] == 1
    assert results["verdict"] == verdict(results)  # the verdict is derived from the numbers, nothing else
    assert len(results["data_efficiency"]["cnn"]) == 5
    assert set(results["robustness"]["mlp"]) == {"clean", *PERTURBATIONS}
    assert results["models"]["cnn"]["multiply_adds"] > results["models"]["cnn"]["parameters"]  # weights reused
    assert results["models"]["mlp"]["multiply_adds"] == pytest.approx(results["models"]["mlp"]["parameters"], rel=0.01)
    markdown = (folder / "report.md").read_text()
    assert results["verdict"][0] in markdown and f"{results['models']['mlp']['test_accuracy']:.2%}" in markdown
    assert f"within ±15% of the default network's {results['depth_match']['parameters']:,}" in markdown
    for plot in ("summary.png", "data_efficiency.png", "robustness.png", "overfitting.png", "depth.png"):
        assert (folder / plot).stat().st_size > 1000 and plot in (folder / "report.html").read_text()


@pytest.mark.slow
def test_compare_depth_study_matches_parameter_counts(tiny_compare):
    results = json.loads((tiny_compare[1] / "results.json").read_text())
    match, depth = results["depth_match"], results["depth"]
    assert [row["stages"] for row in depth] == [1, 2, 3, 4] and match["left_out"] == []
    assert match["parameters"] == results["models"]["cnn"]["parameters"]  # the default network is the target
    for row in depth:
        assert abs(row["parameters"] / match["parameters"] - 1) <= match["tolerance"] == TOLERANCE
    assert depth[0]["widths"][0] > 16  # one stage is widened to the default network's size


@pytest.mark.slow
def test_compare_cli_prints_readable_lines(tiny_compare):
    result, folder = tiny_compare
    assert "{'" not in result.stdout and "['" not in result.stdout
    assert "convnet, plain: train accuracy" in result.stdout and "stage(s) of 16/64/128 channels" in result.stdout
    results = json.loads((folder / "results.json").read_text())
    assert all(sentence in result.stdout for sentence in results["verdict"])


@pytest.mark.slow
def test_compare_cli_prints_no_warnings(tiny_compare):
    result, _ = tiny_compare
    assert result.stderr == "", result.stderr

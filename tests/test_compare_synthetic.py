"""``cnnkit compare --synthetic``: the three arms, the interval arithmetic, the verdict wording, the bad input."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_shapes_folder

from cnnkit.checkpoint import save_checkpoint
from cnnkit.cli.main import main
from cnnkit.compare.interval import mean_interval, t_quantile
from cnnkit.compare.synthetic import compare_synthetic, standard_augmentation, summarise_arms
from cnnkit.compare.synthetic_report import synthetic_verdict
from cnnkit.data import load_data
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPES = ["circle", "square", "triangle"]
TINY = ["--train-size", "5", "--synthetic-size", "4", "--epochs", "1", "--seeds", "2", "--batch-size", "16"]
TINY += ["--test-size", "40"]


def save_generator(path: Path, classes: list[str], task_model: str = "dcgan") -> Path:
    """An untrained model at 8x8 RGB saved as a run directory's best checkpoint: enough for files and shapes."""
    kwargs = {"latent_dim": 8, "width": 8} if task_model == "dcgan" else {}
    model = create_model(task_model, len(classes), 3, 8, **kwargs)
    path.mkdir(parents=True)
    preprocessing = Preprocessing(8, 3, (0.5,) * 3, (0.5,) * 3)  # normalize(uint8) gives [-1, 1], as a GAN run's
    info = CheckpointInfo(ModelSpec(task_model, len(classes), 3, 8, kwargs), classes, preprocessing, {})
    save_checkpoint(path / "best.safetensors", model, info)
    return path


@pytest.fixture(scope="module")
def shapes_and_generator(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return make_shapes_folder(root / "shapes", per_class=12), save_generator(root / "gan", SHAPES)


@pytest.fixture(scope="module")
def synthetic_report(generate_run: Path, digits_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``cnnkit compare --synthetic`` of the GAN run on its own digits folder, in-process: K=5, M=4, 1 epoch."""
    out = tmp_path_factory.mktemp("reports")
    flags = ["--out", str(out), "--name", "s", "--device", "cpu", "--json"]
    printed, threads = io.StringIO(), torch.get_num_threads()
    torch.set_num_threads(1)  # the module's one_thread starts after its module fixtures
    try:
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(io.StringIO()):  # --json: progress: stderr
            assert main(["compare", "--synthetic", str(generate_run), "--data", str(digits_folder), *TINY, *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    (out / "s" / "printed.json").write_text(printed.getvalue())
    return out / "s"


@pytest.mark.slow
def test_compare_synthetic_trains_three_arms_per_seed_at_equal_steps(synthetic_report: Path):
    results = json.loads((synthetic_report / "results.json").read_text())
    assert json.loads((synthetic_report / "printed.json").read_text()) == results  # --json prints the results
    arms = results["arms"]
    assert results["kind"] == "synthetic" and list(arms) == ["real", "mixed", "synthetic"]
    assert [arms[arm]["images"] for arm in arms] == [50, 90, 40]  # 5 real, 5 + 4, 4 generated per class of 10
    steps = {arm: [run["steps"] for run in arms[arm]["runs"]] for arm in arms}
    assert steps == {"real": [8, 8], "mixed": [6, 6], "synthetic": [6, 6]}  # 1 pass of 90 in 16s: 6; 50: 2 passes
    assert [run["seed"] for run in arms["real"]["runs"]] == [0, 1] and results["sizes"]["test"] == 40
    assert arms["real"]["generation_seconds"] == 0.0 < arms["mixed"]["generation_seconds"]
    for arm in ("mixed", "synthetic"):  # the paired difference is the mean of the per-seed differences
        gaps = [
            run["test_accuracy"] - base["test_accuracy"] for run, base in zip(arms[arm]["runs"], arms["real"]["runs"])
        ]
        assert results["differences"][arm]["mean"] == pytest.approx(sum(gaps) / 2)
    generator = results["generator"]
    assert results["augment"] == "crop,hflip" and generator["split_checked"] and generator["train_images"] == 140
    assert results["verdict"][0].split(":")[0] in (
        "The synthetic images paid off on this data",
        "The synthetic images hurt on this data",
        "No measurable benefit on this data",
    )
    assert results["verdict"][1].startswith("Train on synthetic, test on real: 4 generated images per class")
    assert results["verdict"][3].startswith("The generator learned from 140 labelled images")
    report = (synthetic_report / "report.md").read_text()
    assert report.startswith("# Do synthetic images help?") and "5 real + 4 synthetic / class" in report
    assert (synthetic_report / "summary.png").stat().st_size > 0 and (synthetic_report / "report.html").is_file()


def test_t_quantile_matches_the_t_table():
    table = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 9: 2.2622, 30: 2.0423}  # two-sided 95%
    for df, value in table.items():
        assert t_quantile(0.95, df) == pytest.approx(value, abs=1e-4)
    assert t_quantile(0.90, 2) == pytest.approx(2.9200, abs=1e-4)


def test_mean_interval_is_the_mean_plus_minus_t_standard_errors():
    interval = mean_interval([0.70, 0.72, 0.74])  # sample std 0.02
    half = t_quantile(0.95, 2) * 0.02 / math.sqrt(3)
    assert (interval.mean, interval.low, interval.high) == pytest.approx((0.72, 0.72 - half, 0.72 + half))
    assert half == pytest.approx(0.049683, abs=1e-6) and not interval.spans_zero
    assert mean_interval([-0.01, 0.03]).spans_zero  # mean 0.01 +- 12.7 * 0.02
    with pytest.raises(ValueError, match="at least two"):
        mean_interval([0.5])


def made_up(real: list[float], mixed: list[float], synthetic: list[float]) -> dict:
    """Results as measure_synthetic returns them, from given per-seed accuracies."""

    def records(accuracies: list[float], images: int, generation: float) -> list[dict]:
        return [
            {"seed": seed, "test_accuracy": value, "train_seconds": 2.0, "generation_seconds": generation,
             "images": images, "steps": 100}
            for seed, value in enumerate(accuracies)
        ]  # fmt: skip

    arms, differences = summarise_arms(
        {"real": records(real, 100, 0.0), "mixed": records(mixed, 600, 1.5), "synthetic": records(synthetic, 500, 1.5)}
    )
    generator = {"split_checked": True, "train_seconds": 120.0, "train_images": 5000}
    return {"per_class": 10, "synthetic_per_class": 50, "classes": 10, "chance": 0.1, "arms": arms,
            "differences": differences, "generator": generator}  # fmt: skip


def test_synthetic_verdict_says_paid_off_hurt_or_no_measurable_benefit():
    gain = synthetic_verdict(made_up([0.60, 0.62, 0.61], [0.70, 0.71, 0.72], [0.40, 0.42, 0.41]))
    assert gain[0].startswith(
        "The synthetic images paid off on this data: adding 50 generated images per class to 10 real ones changed "
        "test accuracy by +10.0 pp (95% CI +7.5 to +12.5 pp) over 3 seeds (61.0% -> 71.0%)"
    )
    assert "generating 500 images took 1.5 s a seed" in gain[0] and "120 s of training the generator" in gain[0]
    assert "alone reached 41.0%" in gain[1] and "carry less of each class than 10 real ones" in gain[1]
    assert "never trained on the test images" in gain[2]
    assert gain[3].startswith("The generator learned from 5,000 labelled images, the real arm from 10 per class (100)")
    tie = synthetic_verdict(made_up([0.60, 0.62, 0.61], [0.62, 0.60, 0.63], [0.60, 0.63, 0.61]))
    assert tie[0].startswith("No measurable benefit on this data") and "spans 0" in tie[0] and "about as much" in tie[1]
    loss = synthetic_verdict(made_up([0.60, 0.62, 0.61], [0.50, 0.51, 0.52], [0.70, 0.71, 0.72]))
    assert loss[0].startswith("The synthetic images hurt on this data") and "leave them out" in loss[0]
    assert "carry more of each class than 10 real ones" in loss[1]


def test_standard_augmentation_adds_the_crop_to_autos_choice():
    assert standard_augmentation("digits") == "crop"  # auto: no flips for digits
    assert standard_augmentation("fashion-mnist") == "crop,hflip"
    assert standard_augmentation("cifar10") == "crop=4,hflip"  # auto already crops
    assert standard_augmentation("some/folder") == "crop,hflip"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("classifier", "is not a generator; give a run of `cnnkit train --task generate`"),
        ("other classes", "only the generator: star; only the data: triangle"),
        ("K too large", "--train-size 10 (real images per class) is more than"),
        ("K zero", "--train-size must be an integer >= 1 (got 0)"),
        ("one seed", "--seeds >= 2 (an interval needs two seeds)"),
        ("trained on test", "the generator trained on 1 of the test images compare measures on"),
    ],
)
def test_compare_synthetic_refuses_bad_input_in_one_line(case, expected, shapes_and_generator, tmp_path, capsys):
    shapes, generator = shapes_and_generator
    sizes = {"K too large": ["--train-size", "10"], "K zero": ["--train-size", "0"], "one seed": ["--seeds", "1"]}
    if case == "classifier":
        generator = save_generator(tmp_path / "classifier", SHAPES, task_model="convnet")
    elif case == "other classes":
        generator = save_generator(tmp_path / "stars", ["circle", "square", "star"])
    elif case == "trained on test":  # its run's split.json lists a test image among its training images
        generator = save_generator(tmp_path / "leaky", SHAPES)
        test_image = load_data(str(shapes), img_size=8, channels=3).test.sources[0]
        (generator / "split.json").write_text(json.dumps({"train": ["circle/circle_000.jpg", test_image]}))
    flags = ["--train-size", "5", *sizes.get(case, []), "--out", str(tmp_path / "runs")]
    if case == "K zero":  # the flag's own type refuses it before the study is reached
        with pytest.raises(SystemExit, match="2"):
            main(["compare", "--synthetic", str(generator), "--data", str(shapes), *flags])
    else:
        assert main(["compare", "--synthetic", str(generator), "--data", str(shapes), *flags]) == 2
    error = capsys.readouterr().err
    assert expected in error and error.count("\n") == 1 and not (tmp_path / "runs").exists()


def test_compare_synthetic_refuses_k_below_one_from_python(shapes_and_generator, tmp_path):
    shapes, generator = shapes_and_generator
    with pytest.raises(CnnkitError, match=r"--train-size >= 1 \(real images per class\)"):
        compare_synthetic(str(shapes), generator, {"train_size": 0}, out=tmp_path / "runs")
    with pytest.raises(CnnkitError, match="--synthetic-size >= 1"):
        compare_synthetic(str(shapes), generator, {"train_size": 2}, synthetic_size=0, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_compare_synthetic_flags_out_of_place_are_one_line(shapes_and_generator, tmp_path, capsys):
    shapes, generator = shapes_and_generator
    out = ["--out", str(tmp_path / "runs")]
    assert main(["compare", "--data", str(shapes), "--synthetic-size", "3", *out]) == 2
    assert "--synthetic-size is for --synthetic RUN" in capsys.readouterr().err
    assert main(["compare", "--synthetic", str(generator), "--data", str(shapes), "--keywords", "yes,no", *out]) == 2
    error = capsys.readouterr().err
    assert "--keywords is for speech-commands" in error and error.count("\n") == 1 and not (tmp_path / "runs").exists()

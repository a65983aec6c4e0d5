"""``cnnkit compare`` on time series and audio: the MLP baselines, time shifts, where the pattern sits, the verdict."""

from __future__ import annotations

import json

import pytest
import torch
from test_series_train import sines_and_squares, write_tsv
from torch import nn

from cnnkit.cli.main import main
from cnnkit.compare.signals import fixed_position_facts, shift_in_time, signal_budget
from cnnkit.compare.verdict import signal_verdict
from cnnkit.data.series import SeriesSet
from cnnkit.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _bumps(count: int, length: int, shifted: bool, seed: int) -> SeriesSet:
    """Class 0 a bump, class 1 a dip, at step 20 (or anywhere in 5..45 when ``shifted``), plus noise."""
    generator = torch.Generator().manual_seed(seed)
    values = 0.05 * torch.randn(count, 1, length, generator=generator)
    labels = torch.arange(count) % 2
    for index in range(count):
        start = int(torch.randint(5, length - 15, (1,), generator=generator)) if shifted else 20
        values[index, 0, start : start + 10] += 1.0 if labels[index] == 0 else -1.0
    return SeriesSet(values, torch.full((count,), length), labels, ["bump", "dip"], [f"s{i}" for i in range(count)])


def test_mlp1d_is_wang_et_als_baseline():
    model = create_model("mlp1d", num_classes=3, in_channels=2, img_size=150)
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(300, 500), (500, 500), (500, 500), (500, 3)]
    assert [m.p for m in model.modules() if isinstance(m, nn.Dropout)] == [0.1, 0.2, 0.2, 0.3]
    assert model(torch.randn(4, 2, 150)).shape == (4, 3)
    image = create_model("mlp", num_classes=3, in_channels=1, img_size=8)  # image checkpoints keep their layer names
    assert list(image.state_dict())[:2] == ["features.1.weight", "features.1.bias"]


@pytest.mark.parametrize(("rate", "n_fft", "hop"), [(16000, 512, 160), (8000, 256, 80)])
def test_mlp_logmel_reads_the_log_mels_of_the_keyword_spotters_front_end(rate, n_fft, hop):
    model = create_model("mlp_logmel", num_classes=4, in_channels=1, img_size=rate // 2, sample_rate=rate)
    assert (model.frontend.n_fft, model.frontend.hop_length, model.frontend.n_mels) == (n_fft, hop, 40)
    first = next(m for m in model.modules() if isinstance(m, nn.Linear))
    assert first.in_features == 40 * (1 + (rate // 2) // hop)
    assert model(0.1 * torch.randn(2, 1, rate // 2)).shape == (2, 4)


def test_shift_in_time_moves_even_rows_later_and_odd_rows_earlier():
    values = torch.arange(10.0).repeat(2, 1, 1)  # (2, 1, 10)
    edges = shift_in_time(values, 0.2, fill_edges=True)
    assert edges[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7] and edges[1, 0].tolist() == [
        2,
        3,
        4,
        5,
        6,
        7,
        8,
        9,
        9,
        9,
    ]
    silence = shift_in_time(values, 0.2, fill_edges=False)
    assert silence[0, 0, :2].tolist() == [0, 0] and silence[1, 0, -2:].tolist() == [0, 0]
    assert torch.equal(values, torch.arange(10.0).repeat(2, 1, 1))  # the test set itself is untouched


def test_fixed_position_facts_tell_aligned_classes_from_moving_ones():
    aligned = fixed_position_facts(_bumps(40, 60, False, 0), _bumps(20, 60, False, 1))
    assert aligned["template_accuracy"] == 1.0 and aligned["median_lag"] == 0
    moving = fixed_position_facts(_bumps(40, 60, True, 0), _bumps(20, 60, True, 1))
    assert moving["lag_share"] >= 0.05 and moving["median_lag"] >= 3


def _results(cnn: float, mlp: float, template: float, lag_share: float, mlp_shifted: float) -> dict:
    def model(name: str, accuracy: float) -> dict:
        runs = [{"test_accuracy": accuracy}] * 3
        return {"name": name, "parameters": 1000, "multiply_adds": 5000, "test_accuracy": accuracy,
                "test_accuracy_std": 0.0, "train_accuracy": 1.0, "runs": runs}  # fmt: skip

    return {
        "modality": "series",
        "sizes": {"train": 50, "val": 5, "test": 100},
        "models": {"cnn": model("resnet1d", cnn), "mlp": model("mlp1d", mlp)},
        "shift": {"shares": [0.05, 0.1, 0.2], "steps": [5, 10, 20], "cnn": [cnn] * 3, "mlp": [mlp_shifted] * 3},
        "data_facts": {"template_accuracy": template, "median_lag": lag_share * 100, "lag_share": lag_share},
    }


def test_signal_verdict_says_which_model_wins_and_why():
    moving = signal_verdict(_results(0.98, 0.60, 0.55, 0.2, 0.40))
    assert moving[0].startswith("Use the CNN") and "the pattern shifts in time" in moving[1]
    assert "Time-shift robustness (a CNN tolerates a pattern moved in time better): held" in moving[2]
    shape = signal_verdict(_results(0.98, 0.95, 0.76, 0.0, 0.60))  # GunPoint's numbers: aligned, yet no template
    assert shape[0].startswith("Use the CNN") and "not where the pattern sits but its shape" in shape[1]
    fixed = signal_verdict(_results(0.90, 0.905, 0.88, 0.0, 0.50))
    assert fixed[0].startswith("The MLP matches") and "differ in level or shape at fixed positions" in fixed[1]
    mlp = signal_verdict(_results(0.80, 0.90, 0.86, 0.0, 0.50))
    assert mlp[0].startswith("Use the MLP") and mlp[1].startswith("Why the MLP wins")


def test_signal_budget_is_cnnkit_trains_for_the_kind_of_data():
    series = signal_budget("series", 50, {})  # batch a tenth of 50; batch 16's 4 steps an epoch: 150 epochs
    assert (series.epochs, series.batch_size, series.lr) == (150, 5, 1e-3)
    assert signal_budget("series", 50, {"epochs": 3, "seeds": 2}).epochs == 3
    audio = signal_budget("audio", 500, {"lr": 0.01})
    assert (audio.epochs, audio.batch_size, audio.lr, audio.seeds) == (20, 32, 0.01, 3)


@pytest.mark.slow
def test_compare_cli_on_series_trains_both_models_per_seed_and_writes_a_verdict(tmp_path, capsys):
    folder = tmp_path / "waves"
    folder.mkdir()
    write_tsv(folder / "Waves_TRAIN.tsv", sines_and_squares(24, 0))
    write_tsv(folder / "Waves_TEST.tsv", sines_and_squares(10, 1))
    flags = ["--epochs", "1", "--seeds", "2", "--batch-size", "12", "--out", str(tmp_path / "runs"), "--name", "c"]
    assert main(["compare", "--data", str(folder), *flags]) == 0
    assert "report written to" in capsys.readouterr().out
    results = json.loads((tmp_path / "runs" / "c" / "results.json").read_text())
    assert results["kind"] == "signals" and results["budget"]["epochs"] == 1 and results["budget"]["lr"] == 1e-3
    models = results["models"]
    assert (models["cnn"]["name"], models["mlp"]["name"]) == ("resnet1d", "mlp1d")
    assert [run["seed"] for run in models["mlp"]["runs"]] == [0, 1] and len(results["shift"]["cnn"]) == 3
    assert results["verdict"][0].split()[0] in ("Use", "The") and results["verdict"][1].startswith("Why")
    report = (tmp_path / "runs" / "c" / "report.md").read_text()
    assert "Where the pattern sits" in report and (tmp_path / "runs" / "c" / "summary.png").is_file()


def test_compare_refuses_seeds_for_images_in_one_line(tmp_path, capsys):
    assert main(["compare", "--seeds", "2", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "--seeds is for time series and audio" in error and error.count("\n") == 1 and not any(tmp_path.iterdir())

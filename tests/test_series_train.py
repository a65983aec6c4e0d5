"""Time series through ``cnnkit train`` and ``evaluate``: sines against squares written here as a UCR pair."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import run_cli
from test_resume import Killed, same_run

import cnnkit
from cnnkit.cli.main import main
from cnnkit.config import TrainConfig
from cnnkit.data.labelled import labelled_images
from cnnkit.data.series import load_series
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, Preprocessing, SeriesPreprocessing, read_preprocessing
from cnnkit.training.prepare import (
    Prepared,
    data_modality,
    given_keys,
    series_batch_size,
    series_training,
    series_validation,
)
from cnnkit.training.resume import STATE, read_state
from cnnkit.understand.summary import summarize_model

LENGTH = 64


def sines_and_squares(count: int, seed: int) -> list[list[float]]:
    """Rows ``label, x_1..x_64``: class 1 a noisy sine, class 2 a noisy square wave, each at a random phase."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(count):
        label = 1 + index % 2
        phase = np.linspace(0, 4 * np.pi, LENGTH) + rng.uniform(0, 2 * np.pi)
        wave = np.sin(phase) if label == 1 else np.sign(np.sin(phase))
        rows.append([label, *(3.0 * wave + 5.0 + 0.2 * rng.standard_normal(LENGTH))])  # offset and scale: z-norm undoes
    return rows


def write_tsv(path: Path, rows: list[list[float]]) -> None:
    path.write_text("".join("\t".join(f"{cell:g}" for cell in row) + "\n" for row in rows))


@pytest.fixture(scope="module")
def waves(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A UCR pair, ``Waves_TRAIN.tsv`` (40 series) and ``Waves_TEST.tsv`` (20), of length 64."""
    folder = tmp_path_factory.mktemp("waves")
    write_tsv(folder / "Waves_TRAIN.tsv", sines_and_squares(40, 0))
    write_tsv(folder / "Waves_TEST.tsv", sines_and_squares(20, 1))
    return folder


@pytest.fixture(scope="module")
def waves_run(waves: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The real ``cnnkit train`` on the waves, z-normalised: (run directory, what it printed)."""
    out = tmp_path_factory.mktemp("runs")
    args = ("--data", str(waves), "--epochs", "3", "--batch-size", "8", "--series-normalize", "--out", str(out))
    result = run_cli("train", *args, "--name", "waves")
    assert result.returncode == 0, result.stderr
    return out / "waves", result.stdout


@pytest.mark.slow
def test_train_series_writes_the_run_directory_and_beats_chance(waves_run):
    run_dir, printed = waves_run
    for name in ("config.yaml", "split.json", "metrics.csv", "best.safetensors", "last.safetensors", STATE):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "curves.png").is_file() and (run_dir / "confusion_matrix.png").is_file()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["count"] == 20 and results["test"]["accuracy"] >= 0.8  # chance is 0.5
    assert "40 train / 0 val / 20 test series" in printed and "1x64 (z-normalised)" in printed
    assert "augment: none (series; image augmentation is off)" in printed
    assert "3 epochs of batch 8 at lr 0.001;" in printed  # the budget a run trains with, chosen or given
    assert "note: 10% of TRAIN would be 4 validation series, too few to tell epochs apart" in printed


@pytest.mark.slow
def test_train_series_records_the_default_model_and_z_normalisation(waves_run):
    run_dir, _ = waves_run
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] == "resnet1d" and config["series_normalize"] is True
    split = json.loads((run_dir / "split.json").read_text())
    assert split["series"]["normalize"] is True and split["series"]["length"] == LENGTH
    info = cnnkit.load(run_dir).info
    assert info.preprocessing == SeriesPreprocessing(channels=1, length=LENGTH, series_normalize=True)
    assert info.model.name == "resnet1d" and info.model.in_channels == 1
    assert info.extra["data"]["format"] == "ucr-tsv" and info.extra["data"]["normalize"] is True


@pytest.mark.slow
def test_evaluate_series_checkpoint_reloads_to_the_accuracy_training_measured(waves_run, waves):
    run_dir, _ = waves_run
    trained = json.loads((run_dir / "results.json").read_text())["test"]
    result, skipped = cnnkit.load(run_dir).evaluate()  # the recorded data, read z-normalised as in training
    assert not skipped and result.count == 20 and result.accuracy == trained["accuracy"]
    printed = run_cli("evaluate", str(run_dir), "--data", str(waves / "Waves_TEST.tsv"), "--json")
    assert printed.returncode == 0, printed.stderr
    record = json.loads(printed.stdout)
    assert record["accuracy"] == trained["accuracy"] and record["split"] is None  # a lone file: evaluated whole
    assert [row["support"] for row in record["per_class"]] == [10, 10]


@pytest.mark.slow
def test_evaluate_series_refuses_other_channels(waves_run, tmp_path):
    run_dir, _ = waves_run
    np.save(tmp_path / "X.npy", np.zeros((4, 3, LENGTH), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.array([1, 2, 1, 2]))
    with pytest.raises(CnnkitError, match=r"3 channel.*the model reads 1"):
        cnnkit.load(run_dir).evaluate(str(tmp_path), "test")


@pytest.mark.slow
def test_image_predict_and_explain_refuse_series_runs_in_one_line(waves_run, waves, tmp_path, capsys):
    run_dir, _ = waves_run  # cnnkit predict and export take series runs (tests/test_series_deploy.py)
    with pytest.raises(CnnkitError, match="reads time series, not images"):
        cnnkit.load(run_dir).predict([str(waves / "Waves_TEST.tsv")])
    assert main(["explain", str(run_dir), str(waves / "Waves_TEST.tsv"), "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "give them with --data" in error and error.count("\n") == 1  # explain of series: test_understand_signals
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_summary_and_models_show_series_input(waves_run, capsys):
    run_dir, _ = waves_run
    summary = summarize_model(str(run_dir))
    assert list(summary.input_shape) == [1, LENGTH] and summary.layers[0].type == "Conv1d"
    assert main(["models", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["resnet1d"]["input"] == "3x32" and rows["convnet"]["input"] == "3x32x32"


@pytest.mark.slow
def test_train_series_killed_mid_epoch_resumes_bit_for_bit(waves, tmp_path):
    common = dict(data=str(waves), model="fcn", epochs=2, batch_size=8, save_every=2, seed=3)
    common.update(out=str(tmp_path), verbose=False)
    reference = cnnkit.train(name="reference", **common)

    class KillAtStepFour:
        def on_checkpoint(self, run_dir, path, epoch, step):
            if path.name == STATE and step == 4:  # mid-epoch 1: 36 training series make 5 steps
                raise Killed

    with pytest.raises(Killed):
        cnnkit.train(name="killed", callbacks=[KillAtStepFour()], **common)
    assert read_state(tmp_path / "killed").progress.tally.batches == 4
    resumed = cnnkit.train(resume=tmp_path / "killed", verbose=False)
    same_run(resumed.dir, reference.dir)


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"model": "convnet"}, r"--model convnet takes image input, and --data .* holds time series; choose fcn"),
        ({"model": "bcresnet"}, "takes audio input"),
        ({"augment": "hflip"}, "cannot read series augmentation 'hflip' in --augment"),
        ({"img_size": 32, "tta": "flip"}, "--img-size, --tta: not for time series"),
        ({"task": "embed"}, "--task: not for time series"),
    ],
)
def test_train_series_refuses_image_settings_before_any_run(waves, tmp_path, settings, says):
    with pytest.raises(CnnkitError, match=says):
        cnnkit.train(data=str(waves), epochs=1, out=str(tmp_path), verbose=False, **settings)
    assert not any(tmp_path.iterdir())


def test_train_images_refuse_series_models_and_series_normalize(tmp_path):
    with pytest.raises(CnnkitError, match="--model resnet1d takes series input, and --data digits holds images"):
        cnnkit.train(data="digits", model="resnet1d", epochs=1, out=str(tmp_path), verbose=False)
    with pytest.raises(CnnkitError, match="--series-normalize is for time series"):
        cnnkit.train(data="digits", series_normalize=True, epochs=1, out=str(tmp_path), verbose=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_train_series_bad_input_is_one_line_and_exit_2(waves, tmp_path):
    rows = sines_and_squares(6, 2)
    rows[3][10] = float("nan")  # inside the series, not trailing padding
    write_tsv(tmp_path / "Bad_TRAIN.tsv", rows)
    write_tsv(tmp_path / "Bad_TEST.tsv", sines_and_squares(2, 3))
    for args, says in (
        (("--data", str(tmp_path / "Bad_TRAIN.tsv")), "Bad_TRAIN.tsv: line 4"),
        (("--data", str(waves), "--model", "convnet"), "takes image input"),
    ):
        result = run_cli("train", *args, "--epochs", "1", "--out", str(tmp_path / "runs"))
        assert result.returncode == 2 and says in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def write_npy_and_csv(folder: Path) -> tuple[Path, Path]:
    """The waves as ``X.npy`` (N, 2, L): the wave and its negative, with ``y.npy``; and as a plain CSV file."""
    rows = np.array(sines_and_squares(40, 4))
    folder.mkdir()
    np.save(folder / "X.npy", np.stack([rows[:, 1:], -rows[:, 1:]], axis=1).astype(np.float32))
    np.save(folder / "y.npy", rows[:, 0].astype(np.int64))
    csv = folder.parent / "waves.csv"
    csv.write_text("".join(",".join(f"{cell:g}" for cell in row) + "\n" for row in rows))
    return folder, csv


def test_data_modality_recognises_every_series_format_and_leaves_images_alone(waves, shapes_folder, tmp_path):
    npy, csv = write_npy_and_csv(tmp_path / "npy")
    for data in (waves, waves / "Waves_TRAIN.tsv", npy, csv):
        assert data_modality(str(data)) == "series", data
    assert data_modality("digits") == "image" and data_modality(str(shapes_folder)) == "image"


@pytest.mark.slow
def test_train_series_reads_multivariate_npy_and_csv(tmp_path):
    npy, csv = write_npy_and_csv(tmp_path / "npy")
    common = dict(model="fcn", epochs=1, batch_size=8, out=str(tmp_path / "runs"), verbose=False)
    run = cnnkit.train(data=str(npy), name="npy", **common)
    info = cnnkit.load(run.dir).info
    assert info.preprocessing.input_shape == (2, LENGTH) and info.extra["data"]["format"] == "npy"
    assert run.test is not None and run.test.count == 8  # no TEST file: --test-split 0.2 of 40, stratified
    run = cnnkit.train(data=str(csv), name="csv", series_normalize=True, **common)
    assert cnnkit.load(run.dir).info.preprocessing == SeriesPreprocessing(1, LENGTH, True)


def test_series_training_fills_only_what_the_run_left_to_cnnkit(waves):
    splits = load_series(waves)  # 36 training series: 3 steps an epoch in batches of 16
    series = Prepared(splits, SeriesPreprocessing(1, LENGTH), ModelSpec("fcn", 2, 1, LENGTH), False, None, "none")
    config = TrainConfig(data=str(waves))
    chosen = series_training(config, series, None, set())
    assert (chosen.batch_size, chosen.lr, chosen.epochs) == (4, 1e-3, 200)  # a tenth of 36; batch 16's 600 steps
    chosen = series_training(replace(config, batch_size=8, lr=0.01), series, None, {"batch_size", "lr"})
    assert (chosen.batch_size, chosen.lr, chosen.epochs) == (8, 0.01, 200)  # the epochs do not follow the batch
    assert [series_batch_size(count) for count in (5, 36, 200)] == [2, 4, 16]  # batch norm needs 2; at most 16
    assert series_training(config, series, object(), set()) is config  # a resumed run keeps its own
    image = replace(series, preprocessing=Preprocessing(8, 1, (0.5,), (0.25,)))
    assert series_training(config, image, None, set()) is config
    assert given_keys(TrainConfig(epochs=5, lr=3e-3), {"batch_size": 8}) == {"epochs", "batch_size"}


def test_labelled_images_refuses_series_for_an_image_model(waves):
    with pytest.raises(CnnkitError, match="holds time series, and this model reads images"):
        labelled_images(str(waves), "test", ["1", "2"], (8, 1, "crop"), {"data": "digits"})


def test_preprocessing_records_round_trip_and_image_records_keep_their_keys():
    series = SeriesPreprocessing(2, 100, True)
    assert read_preprocessing(json.loads(json.dumps(series.to_dict()))) == series
    assert series.input_shape == (2, 100) and series.normalize(torch.ones(1, 2, 3, dtype=torch.float64)).dtype == (
        torch.float32
    )
    image = Preprocessing(28, 1, (0.5,), (0.25,))
    assert set(image.to_dict()) == {"img_size", "channels", "mean", "std", "resize"}  # as every earlier checkpoint
    info = CheckpointInfo(ModelSpec("fcn", 2, 2, 100), ["a", "b"], series, {})
    assert CheckpointInfo.from_dict(info.to_dict()).preprocessing == series
    assert read_preprocessing(image.to_dict()) == image


def test_a_validation_carve_too_small_to_pick_an_epoch_is_trained_on_unless_the_run_chose_it(waves):
    config, said = TrainConfig(data=str(waves)), []
    carved = load_series(waves)  # 10% of 40 series: 4, too few to tell epochs apart
    whole = series_validation(carved, config, False, said.append)
    assert (len(whole.train), len(whole.val)) == (40, 0) and whole.test.sources == carved.test.sources
    assert said == [
        "note: 10% of TRAIN would be 4 validation series, too few to tell epochs apart: training on all 40 "
        "and keeping the epoch of lowest training loss (--val-split sets a share)"
    ]
    assert series_validation(carved, config, True, said.append) is carved  # a chosen --val-split is kept...
    assert said[-1].startswith("warning: validation holds only 4 series")  # ...and said to be small
    spec = ModelSpec("resnet1d", 2, 1, LENGTH)
    prepared = Prepared(whole, SeriesPreprocessing(1, LENGTH), spec, False, None, "none")
    assert series_training(config, prepared, None, set()).val_split == 0.0  # recorded: a resume reads the same split


@pytest.mark.slow
def test_a_resumed_run_keeps_the_small_validation_carve_it_recorded(waves, tmp_path):
    common = dict(data=str(waves), model="fcn", batch_size=8, out=str(tmp_path), verbose=False)
    run = cnnkit.train(**common, epochs=1, val_split=0.1)  # chosen: 4 validation series kept
    resumed = cnnkit.train(resume=run.dir, epochs=2, verbose=False)  # the rule must not re-carve a recorded split
    assert len(json.loads((run.dir / "split.json").read_text())["val"]) == 4
    assert len(resumed.history) == 2 and not any(math.isnan(row["val_acc"]) for row in resumed.history)

import csv
import json

import pytest
import torch
import yaml

import cnnkit
from cnnkit.checkpoint import read_checkpoint


def test_fit_writes_a_complete_run_directory(shapes_folder, tmp_path):
    run = cnnkit.train(data=str(shapes_folder), img_size=16, epochs=2, out=str(tmp_path / "runs"), verbose=False)
    expected = {
        "config.yaml",
        "split.json",
        "metrics.csv",
        "best.safetensors",
        "last.safetensors",
        "curves.png",
        "confusion_matrix.png",
        "results.json",
    }
    assert expected <= {p.name for p in run.dir.iterdir()}
    assert run.dir == tmp_path / "runs" / "train"
    with open(run.dir / "metrics.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert set(rows[0]) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"}
    config = yaml.safe_load((run.dir / "config.yaml").read_text())
    assert config["img_size"] == 16 and config["data"] == str(shapes_folder)
    split = json.loads((run.dir / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) + len(split["test"]) == 36
    _, info = read_checkpoint(run.dir / "best.safetensors")
    assert info.classes == ["circle", "square", "triangle"]
    assert info.preprocessing.img_size == 16 and info.preprocessing.channels == 3
    assert info.model.kwargs == {"hidden": 0}  # 36 images: too few for the head's hidden layer
    assert info.extra["versions"]["torch"] == torch.__version__
    assert run.test is not None and run.test.count == len(split["test"])


def test_fit_is_deterministic_for_a_seed(tmp_path):
    weights = []
    for name in ("a", "b"):
        run = cnnkit.train(data="digits", epochs=1, out=str(tmp_path), name=name, seed=3, verbose=False)
        weights.append(read_checkpoint(run.last_checkpoint)[0])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_fit_unnamed_runs_get_fresh_directories(tmp_path):
    names = [cnnkit.train(data="digits", epochs=1, out=str(tmp_path), verbose=False).dir.name for _ in range(2)]
    assert names == ["train", "train2"]


def test_ctrl_c_stops_cleanly_and_keeps_last(tmp_path):
    class InterruptAfterFirstEpoch:
        def on_epoch_end(self, run_dir, row):
            raise KeyboardInterrupt

    run = cnnkit.train(
        data="digits", epochs=5, out=str(tmp_path), callbacks=[InterruptAfterFirstEpoch()], verbose=False
    )
    assert run.interrupted and len(run.history) == 1
    _, info = read_checkpoint(run.last_checkpoint)
    assert info.extra["epoch"] == 1


def test_callbacks_receive_each_epoch(tmp_path):
    seen = []

    class Recorder:
        def on_epoch_end(self, run_dir, row):
            seen.append(row["epoch"])

    cnnkit.train(data="digits", epochs=2, out=str(tmp_path), callbacks=[Recorder(), object()], verbose=False)
    assert seen == [1, 2]


def test_unknown_config_key_is_refused(tmp_path):
    with pytest.raises(cnnkit.CnnkitError, match=r"unknown key.*epochz"):
        cnnkit.train(data="digits", epochz=3, out=str(tmp_path))


def test_config_file_round_trips(tmp_path):
    config = cnnkit.TrainConfig(epochs=7, lr=0.01)
    config.save(tmp_path / "c.yaml")
    assert cnnkit.TrainConfig.load(tmp_path / "c.yaml") == config


def test_compute_and_augmentation_choices_are_recorded_with_the_run(tmp_path):
    run = cnnkit.train(data="digits", epochs=1, augment="crop=1,hflip", out=str(tmp_path), name="r", verbose=False)
    compute = json.loads((run.dir / "environment.json").read_text())["compute"]
    from cnnkit.compute import resolve

    expected = resolve(torch.device("cpu"))  # bf16 on CPUs that have it natively, else fp32
    assert (compute["precision"], compute["memory_format"]) == (expected.precision, "channels_last")
    assert compute["augment"]["crop_padding"] == 1 and compute["augment"]["hflip"] is True
    assert compute["threads"] == torch.get_num_threads()


def test_a_bad_augmentation_is_one_clear_error(tmp_path):
    from conftest import run_cli

    result = run_cli("train", "--augment", "spin=3", "--epochs", "1", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot read augmentation 'spin=3'" in result.stderr and "crop=4,hflip" in result.stderr

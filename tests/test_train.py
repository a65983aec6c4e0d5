import csv
import json

import pytest
import torch
import yaml

import cnnkit
from cnnkit.checkpoint import read_checkpoint


@pytest.mark.slow
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


@pytest.mark.slow
def test_fit_is_deterministic_for_a_seed(tmp_path):
    weights = []
    for name in ("a", "b"):
        run = cnnkit.train(data="digits", epochs=1, out=str(tmp_path), name=name, seed=3, verbose=False)
        weights.append(read_checkpoint(run.last_checkpoint)[0])
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


@pytest.mark.slow
def test_fit_unnamed_runs_get_fresh_directories(tmp_path):
    names = [cnnkit.train(data="digits", epochs=1, out=str(tmp_path), verbose=False).dir.name for _ in range(2)]
    assert names == ["train", "train2"]


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_compute_and_augmentation_choices_are_recorded_with_the_run(tmp_path):
    run = cnnkit.train(data="digits", epochs=1, augment="crop=1,hflip", out=str(tmp_path), name="r", verbose=False)
    compute = json.loads((run.dir / "environment.json").read_text())["compute"]
    from cnnkit.compute import resolve

    expected = resolve(torch.device("cpu"))  # bf16 on CPUs that have it natively, else fp32
    assert (compute["precision"], compute["memory_format"]) == (expected.precision, "channels_last")
    assert compute["augment"]["crop_padding"] == 1 and compute["augment"]["hflip"] is True
    assert compute["threads"] == torch.get_num_threads()


@pytest.mark.slow
def test_a_bad_augmentation_is_one_clear_error(tmp_path):
    from conftest import run_cli

    result = run_cli("train", "--augment", "spin=3", "--epochs", "1", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "cannot read augmentation 'spin=3'" in result.stderr and "crop=4,hflip" in result.stderr


@pytest.mark.slow
def test_callbacks_get_every_event_with_its_keyword_arguments(shapes_folder, tmp_path):
    events = []

    class Recorder:
        def on_fit_start(self, run_dir, config):
            events.append(("start", run_dir.name, config.epochs))

        def on_epoch_end(self, run_dir, row):
            events.append(("epoch", row["epoch"]))

        def on_checkpoint(self, run_dir, path, epoch, step):
            assert path.is_file() and path.parent == run_dir
            events.append(("checkpoint", path.name, epoch))

        def on_fit_end(self, run):
            events.append(("end", run.dir.name, run.test is not None))

    settings = dict(data=str(shapes_folder), img_size=16, epochs=2, batch_size=8, out=str(tmp_path), name="events")
    cnnkit.train(callbacks=(Recorder(),), save_every=2, verbose=False, **settings)
    assert events[0] == ("start", "events", 2) and events[-1] == ("end", "events", True)
    assert [event for event in events if event[0] == "epoch"] == [("epoch", 1), ("epoch", 2)]
    saved = [event[1:] for event in events if event[0] == "checkpoint"]
    assert ("state.safetensors", 1) in saved and ("last.safetensors", 2) in saved and ("state.safetensors", 2) in saved
    first_epoch_end = events.index(("epoch", 1))
    assert ("checkpoint", "last.safetensors", 1) in events[:first_epoch_end]  # saved before the epoch's event


@pytest.mark.slow
def test_batch_size_one_is_refused_for_batch_norm_with_one_line_and_no_run(tmp_path):
    from conftest import run_cli

    result = run_cli("train", "--data", "digits", "--batch-size", "1", "--epochs", "1", "--out", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--batch-size 1: convnet has batch norm" in result.stderr and "--batch-size 2 or more" in result.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_batch_size_one_trains_on_every_image_without_batch_norm(shapes_folder, tmp_path):
    run = cnnkit.train(data=str(shapes_folder), model="mlp", img_size=8, batch_size=1, epochs=1, out=str(tmp_path))
    split = json.loads((run.dir / "split.json").read_text())
    with open(run.dir / "steps.csv") as stream:
        assert len(list(csv.DictReader(stream))) == len(split["train"])


def test_bad_share_refusal_leaves_only_the_list_of_bad_files(shapes_folder, tmp_path):
    for index in range(3):
        (shapes_folder / "circle" / f"broken{index}.png").write_bytes(b"not an image")
    with pytest.raises(cnnkit.CnnkitError, match=r"over the --max-bad-share limit"):
        cnnkit.train(data=str(shapes_folder), img_size=16, epochs=1, out=str(tmp_path / "runs"), verbose=False)
    assert [p.name for p in (tmp_path / "runs" / "train").iterdir()] == ["skipped.csv"]


@pytest.mark.parametrize(
    ("model", "says"),
    [("fcn", "takes series input"), ("bcresnet", "takes audio input"), ("embedding", "--task embed builds")],
)
def test_models_train_cannot_feed_images_are_refused_before_any_run(tmp_path, model, says):
    with pytest.raises(cnnkit.CnnkitError, match=says):
        cnnkit.train(data="digits", model=model, epochs=1, out=str(tmp_path), verbose=False)
    assert not any(tmp_path.iterdir())

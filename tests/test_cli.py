"""The real ``cnnkit`` command in a subprocess, as a user runs it."""

import csv
import json

import pytest
from conftest import run_cli


def assert_clean_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cnnkit: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.slow
def test_train_evaluate_predict_on_an_image_folder(shapes_folder, tmp_path):
    out = tmp_path / "runs"
    train = run_cli(
        "train",
        "--data",
        str(shapes_folder),
        "--epochs",
        "2",
        "--img-size",
        "16",
        "--out",
        str(out),
        "--name",
        "shapes",
    )
    assert train.returncode == 0, train.stderr
    assert "test accuracy" in train.stdout
    run = out / "shapes"

    evaluate = run_cli("evaluate", str(run), "--json")
    assert evaluate.returncode == 0, evaluate.stderr
    report = json.loads(evaluate.stdout)
    assert report["split"] == "test" and report["classes"] == ["circle", "square", "triangle"]
    assert len(report["confusion"]) == 3 and 0 <= report["accuracy"] <= 1

    text = run_cli("evaluate", str(run), "--data", str(shapes_folder), "--split", "val")
    assert text.returncode == 0 and "precision" in text.stdout and "confusion matrix" in text.stdout

    image = next((shapes_folder / "square").glob("*.png"))
    single = run_cli("predict", str(run), str(image), "--top-k", "2", "--json")
    records = [json.loads(line) for line in single.stdout.splitlines()]
    assert len(records) == 1 and records[0]["path"] == str(image) and len(records[0]["labels"]) == 2

    folder = run_cli("predict", str(run / "best.safetensors"), str(shapes_folder), "--out", str(out))
    assert folder.returncode == 0, folder.stderr
    with open(out / "predictions.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == 36 and {"path", "label_1", "probability_1"} <= set(rows[0])


@pytest.mark.slow
def test_predict_skips_bad_files_among_many(digits_run, tmp_path):
    from PIL import Image

    Image.new("L", (8, 8), 200).save(tmp_path / "ok.png")
    (tmp_path / "bad.jpg").write_text("<html>")
    result = run_cli("predict", str(digits_run), str(tmp_path / "ok.png"), str(tmp_path / "bad.jpg"))
    assert result.returncode == 0
    assert "ok.png" in result.stdout and "skipped" in result.stderr and "bad.jpg" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["train", "--data", "{tmp}/missing"], ["data not found", "missing"]),
        (["train", "--epochs", "0"], ["--epochs must be an integer >= 1 (got 0)"]),
        (["train", "--model", "nonsense"], ["unknown model 'nonsense'"]),
        (["evaluate", "{tmp}/missing"], ["checkpoint not found"]),
        (["evaluate", "{tmp}/fake.safetensors"], ["not a cnnkit checkpoint", "fake.safetensors"]),
        (["predict", "{run}", "{tmp}/fake.safetensors"], ["fake.safetensors"]),
        (["predict", "{run}", "{tmp}/nothing.png"], ["image not found"]),
    ],
)
def test_user_mistakes_give_one_line_and_exit_2(args, fragments, tmp_path, digits_run):
    (tmp_path / "fake.safetensors").write_text("not weights")
    result = run_cli(*[arg.format(tmp=tmp_path, run=digits_run) for arg in args])
    assert_clean_error(result, *fragments)


@pytest.mark.slow
def test_help_and_models():
    assert run_cli("--help").returncode == 0
    models = run_cli("models")
    assert models.returncode == 0 and "convnet" in models.stdout


@pytest.mark.slow
def test_default_train_reaches_97_percent_on_digits(tmp_path):
    """The README's main job: `cnnkit train` with no arguments."""
    result = run_cli("train", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("test accuracy"))
    accuracy = float(line.split()[2].rstrip("%"))
    assert accuracy >= 97.0, line
    assert (tmp_path / "runs" / "train" / "best.safetensors").is_file()


@pytest.mark.slow
def test_ctrl_c_exits_130_and_keeps_last(tmp_path):
    """A real SIGINT in the middle of training, as a user pressing Ctrl-C."""
    import signal
    import subprocess
    import sys
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "train", "--epochs", "200", "--out", str(tmp_path), "--name", "stop"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # As in a terminal: a shell's background job (`pytest &`) ignores SIGINT, and its children would too.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = tmp_path / "stop" / "last.safetensors"
    deadline = time.monotonic() + 120
    while not last.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stdout
    assert last.is_file()


@pytest.mark.slow
def test_cli_bad_spec_and_config_files_give_one_line_not_a_traceback(shapes_folder, tmp_path):
    """A YAML layer spec with a syntax error, a config value of the wrong type, a spec input unlike the data."""
    broken = tmp_path / "broken.yaml"
    broken.write_text("layers: [conv8k3, {type: relu\n")
    assert_clean_error(run_cli("train", "--model", str(broken), "--out", str(tmp_path)), str(broken), "line 2")
    config = tmp_path / "config.yaml"
    config.write_text("epochs: 1\nlr: fast\n")
    assert_clean_error(run_cli("train", "--config", str(config)), f"{config}: lr must be a finite number > 0")
    mismatched = tmp_path / "mismatched.yaml"
    mismatched.write_text("input: [1, 28, 28]\nlayers: [conv8k3, relu, gap, fc]\n")
    out = tmp_path / "runs"
    args = ("--data", str(shapes_folder), "--img-size", "16", "--epochs", "1", "--out", str(out))
    result = run_cli("train", "--model", str(mismatched), *args)
    assert_clean_error(result, "the spec's input [1, 28, 28] does not match the data (3, 16, 16)")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.slow
def test_cli_closed_pipe_ends_quietly_with_141(tmp_path):
    """`cnnkit summary ... | head`: the reader leaves before the output is written."""
    import subprocess
    import sys

    process = subprocess.Popen(
        [sys.executable, "-m", "cnnkit", "summary", "resnet18", "--img-size", "32"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()  # as `head` does once it has its lines; cnnkit is still importing
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141
    assert stderr == ""


@pytest.mark.slow
def test_cli_config_of_a_named_run_repeats_it_under_the_next_free_name(shapes_folder, tmp_path):
    out = tmp_path / "runs"
    args = ("--data", str(shapes_folder), "--epochs", "1", "--img-size", "8", "--out", str(out), "--name", "shapes")
    assert run_cli("train", *args).returncode == 0
    for expected in ("shapes2", "shapes3"):
        again = run_cli("train", "--config", str(out / "shapes" / "config.yaml"))
        assert again.returncode == 0, again.stderr
        assert (out / expected / "best.safetensors").is_file()
    repeated = (out / "shapes3" / "config.yaml").read_text().replace("name: shapes3", "name: shapes")
    assert repeated == (out / "shapes" / "config.yaml").read_text()  # the same run, under a new name
    again = run_cli("train", "--config", str(out / "shapes2" / "config.yaml"))  # a repeat of a repeat: shapes4
    assert again.returncode == 0 and (out / "shapes4").is_dir()

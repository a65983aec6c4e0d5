"""Deploying a time-series run: predict series files from the run or its ONNX export, and export with parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_export import WITHOUT_TORCH
from test_series_train import LENGTH, sines_and_squares, write_tsv

import cnnkit
from cnnkit.cli.main import main
from cnnkit.data.series_formats import read_series_inputs
from cnnkit.deploy.export import export_onnx, metadata
from cnnkit.deploy.onnx_runtime import SERIES_INPUT, OnnxClassifier, open_model
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CheckpointInfo, ModelSpec, SeriesPreprocessing

pytest.importorskip("onnxruntime", reason="the deploy extra (pip install -e '.[test]') provides onnxruntime")


@pytest.fixture(scope="module")
def series_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The waves of test_series_train (40 TRAIN, 10 TEST, length 64), a longer .npy and a 2-channel .npy."""
    folder = tmp_path_factory.mktemp("series")
    write_tsv(folder / "Waves_TRAIN.tsv", sines_and_squares(40, 0))
    write_tsv(folder / "Waves_TEST.tsv", sines_and_squares(10, 1))
    waves = np.array(sines_and_squares(4, 2), np.float32)[:, 1:]  # (4, 64) without the labels
    np.save(folder / "long.npy", np.concatenate([waves, waves[:, :32]], axis=1))  # (4, 96): longer than trained
    np.save(folder / "two_channels.npy", np.stack([waves, waves], axis=1))  # (4, 2, 64)
    return folder


@pytest.fixture(scope="module")
def series_run(series_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An fcn trained for two epochs through the real CLI, z-normalised (the smallest 1-D model: seconds)."""
    out = tmp_path_factory.mktemp("runs")
    args = ("--data", str(series_files), "--model", "fcn", "--epochs", "2", "--batch-size", "8", "--series-normalize")
    result = run_cli("train", *args, "--out", str(out), "--name", "waves")
    assert result.returncode == 0, result.stderr
    return out / "waves"


@pytest.fixture(scope="module")
def series_export(series_run: Path) -> tuple[Path, subprocess.CompletedProcess]:
    """``cnnkit export`` of the run to a named .onnx file, and what the command printed."""
    path = series_run.parent / "exports" / "waves.onnx"
    result = run_cli("export", str(series_run), "--out", str(path))
    assert result.returncode == 0, result.stderr
    return path, result


def predicted(capsys: pytest.CaptureFixture, *args: str) -> list[dict]:
    assert main(["predict", *args, "--json"]) == 0
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.mark.slow
def test_predict_series_run_prints_classification_records_one_per_series(series_run, series_files, capsys):
    test_file = series_files / "Waves_TEST.tsv"
    records = predicted(capsys, str(series_run), str(test_file), str(series_files / "long.npy"))
    assert [record["path"] for record in records] == [f"{test_file}:{line}" for line in range(1, 11)] + [
        f"{series_files / 'long.npy'}:{index}" for index in range(4)
    ]
    for record in records:
        assert set(record) == {"path", "labels", "probabilities"}  # the image classifier's record, not a copy
        assert sorted(record["labels"]) == ["1", "2"]
        assert record["probabilities"] == sorted(record["probabilities"], reverse=True)
        assert sum(record["probabilities"]) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_export_series_prints_parity_and_carries_series_preprocessing(series_export):
    path, result = series_export
    # 40 TRAIN series keep no validation carve (training.prepare.series_validation): parity runs on TEST
    assert "parity on 10 test series" in result.stdout and "top-1 agreement 100.00%" in result.stdout
    session, info = open_model(path)
    assert info.preprocessing == SeriesPreprocessing(channels=1, length=LENGTH, series_normalize=True)
    graph_input = session.get_inputs()[0]
    assert graph_input.name == SERIES_INPUT and graph_input.type == "tensor(float)"
    assert graph_input.shape[1] == 1 and not isinstance(graph_input.shape[2], int)  # fcn's length stays free
    report = json.loads(path.with_name("waves.export.json").read_text())
    assert report["parity"]["passed"] and report["parity"]["max_abs_diff"] <= 1e-3


@pytest.mark.slow
def test_predict_series_export_agrees_with_the_run_without_torch(series_run, series_export, series_files):
    files = [str(series_files / "Waves_TEST.tsv"), str(series_files / "long.npy")]  # the run's length, and longer
    command = [sys.executable, "-c", WITHOUT_TORCH, "predict", str(series_export[0]), *files, "--json"]
    blocked = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert blocked.returncode == 0, blocked.stderr
    exported = [json.loads(line) for line in blocked.stdout.splitlines()]
    reference = [prediction.to_dict() for prediction in cnnkit.load(series_run, device="cpu").predict_series(files)]
    assert len(exported) == 14 and [r["path"] for r in exported] == [r["path"] for r in reference]
    assert [r["labels"] for r in exported] == [r["labels"] for r in reference]
    difference = np.abs(np.array([r["probabilities"] for r in exported]) - [r["probabilities"] for r in reference])
    assert difference.max() <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("two_channels.npy", "two_channels.npy: series 0: 2 channel(s), and the model reads 1"),
        ("missing.tsv", "series file not found"),
        (".", "not folders"),
    ],
)
def test_predict_series_bad_input_is_one_line_and_exit_2(series_run, series_export, series_files, capsys, name, says):
    for model in (series_run, series_export[0]):
        assert main(["predict", str(model), str(series_files / name), "--json"]) == 2
        captured = capsys.readouterr()
        assert says in captured.err and captured.err.count("\n") == 1 and not captured.out


@pytest.mark.slow
def test_export_series_refuses_int8_before_writing_anything(series_run, tmp_path):
    with pytest.raises(CnnkitError, match=r"--int8 quantizes image and audio models so far; .* reads time series"):
        export_onnx(series_run, out=tmp_path, int8=True, verbose=False)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "says"), [("benchmark", "times image models so far"), ("serve", "takes image and audio models so far")]
)
def test_benchmark_and_serve_refuse_series_in_one_line(series_run, series_export, capsys, monkeypatch, command, says):
    uvicorn = pytest.importorskip("uvicorn")
    monkeypatch.setattr(uvicorn, "run", lambda *args, **kwargs: pytest.fail("a series model was served"))
    for model in (series_run, series_export[0]):
        assert main([command, str(model)]) == 2
        error = capsys.readouterr().err
        assert f"reads series, and cnnkit {command} {says}" in error
        assert error.count("\n") == 1


def test_read_series_inputs_pads_to_the_run_length_and_normalises_as_training(tmp_path):
    rows = [[1, *np.linspace(0.0, 6.0, 40)], [2, *np.linspace(5.0, 3.0, 40)]]
    write_tsv(tmp_path / "short.tsv", rows)
    values, names = read_series_inputs(tmp_path / "short.tsv", channels=1, length=LENGTH, normalize=True)
    assert values.shape == (2, 1, LENGTH) and values.dtype == np.float32
    assert names == [f"{tmp_path / 'short.tsv'}:1", f"{tmp_path / 'short.tsv'}:2"]
    assert not values[:, :, 40:].any()  # zeros after each series' length, as training pads
    assert np.allclose(values[:, :, :40].mean(-1), 0, atol=1e-6) and np.allclose(values[:, :, :40].std(-1), 1)
    np.save(tmp_path / "values.npy", np.ones((3, 2, 70)))  # values alone: no y.npy needed to predict
    values, names = read_series_inputs(tmp_path / "values.npy", channels=2, length=LENGTH, normalize=False)
    assert values.shape == (3, 2, 70) and names[-1].endswith("values.npy:2")


def test_onnx_series_export_with_a_fixed_length_refuses_other_lengths_in_one_line(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    # What the exporter leaves when it fixes a model's length: input (batch, 1, 64), a mean over time as logits.
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", [SERIES_INPUT], ["logits"], axes=[2], keepdims=0)],
        "fixed",
        [helper.make_tensor_value_info(SERIES_INPUT, TensorProto.FLOAT, ["batch", 1, LENGTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    info = CheckpointInfo(ModelSpec("fcn", 1, 1, LENGTH), ["a"], SeriesPreprocessing(1, LENGTH), {})
    for key, value in metadata(info).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, tmp_path / "fixed.onnx")
    classifier = OnnxClassifier(tmp_path / "fixed.onnx")
    assert classifier.run(np.ones((2, 1, LENGTH), np.float32)).shape == (2, 1)
    with pytest.raises(CnnkitError, match=rf"takes series of length {LENGTH} .*, not 96; predict longer series"):
        classifier.run(np.ones((2, 1, 96), np.float32))

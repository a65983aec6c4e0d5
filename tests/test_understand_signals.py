"""Grad-CAM over time for series and over the log-mel spectrogram for audio; explain and the report on signal runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from test_series_train import sines_and_squares, write_tsv
from torch import nn

import cnnkit
from cnnkit.cli.main import main
from cnnkit.data.series import SeriesSet
from cnnkit.modelinfo import AudioPreprocessing
from cnnkit.models import create_model
from cnnkit.understand.explain import class_activation_map, find_target_layer
from cnnkit.understand.report import write_report
from cnnkit.understand.signals import choose_examples, signal_maps
from cnnkit.understand.summary import summarize_model

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: two threads only spin on a loaded machine


@pytest.fixture(scope="module")
def waves_fcn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An FCN trained in-process for two epochs on 40 sines and squares (20 test): its run directory."""
    from cnnkit.training.fit import fit

    folder = tmp_path_factory.mktemp("waves")
    write_tsv(folder / "Waves_TRAIN.tsv", sines_and_squares(40, 0))
    write_tsv(folder / "Waves_TEST.tsv", sines_and_squares(20, 1))
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fit(data=str(folder), model="fcn", epochs=2, batch_size=8, out=str(out), name="fcn", verbose=False)
    finally:
        torch.set_num_threads(threads)
    return out / "fcn"


def test_class_activation_map_over_time_is_the_evidence_where_it_lies():
    # conv (weight 1) -> ReLU -> average -> logits (+1, -1): class 0's Grad-CAM is the input itself, scaled
    model = nn.Sequential(nn.Conv1d(1, 1, 1, bias=False), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten())
    model.append(nn.Linear(1, 2, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[4].weight.copy_(torch.tensor([[1.0], [-1.0]]))
    series = torch.zeros(2, 1, 50)
    series[:, 0, 20:25] = torch.tensor([1.0, 2.0, 3.0, 2.0, 1.0])
    heat = class_activation_map(model, series, torch.tensor([0, 1]), "0")
    assert heat.shape == (2, 50)
    assert torch.allclose(heat[0], series[0, 0] / 3, atol=1e-6)  # peak 1 at step 22, zero away from the bump
    assert torch.count_nonzero(heat[1]) == 0  # class 1 is lowered by the bump: no positive evidence anywhere


def test_keyword_spotter_map_spans_the_frequencies_and_frames_of_its_spectrogram():
    torch.manual_seed(0)
    model = create_model("bcresnet", num_classes=3, in_channels=1, img_size=4000).eval()
    waves = 0.1 * torch.randn(2, 1, 4000)
    layer = find_target_layer(model, waves, rank=2)
    assert layer != find_target_layer(model, waves)  # the very last convolutions have pooled the frequencies away
    maps = signal_maps(model, waves, torch.tensor([0, 2]))
    frames = model.frontend.frames(4000)
    assert maps.layer == layer and maps.views.shape == maps.heat.shape == (2, 40, frames)
    assert torch.allclose(maps.views, model.frontend(waves).mean(1))  # drawn over the spectrogram the model saw
    assert maps.heat.min() >= 0 and torch.allclose(maps.heat.amax((1, 2)), torch.ones(2))
    over_time = class_activation_map(
        model, waves, torch.tensor([0, 2]), find_target_layer(model, waves), size=(40, frames)
    )
    assert over_time.shape == (2, 40, frames) and torch.equal(over_time[:, 0], over_time[:, -1])  # spread over bands


def test_signal_maps_of_a_model_without_convolutions_are_saliency_over_time():
    maps = signal_maps(create_model("mlp1d", 2, 1, 30), torch.randn(3, 1, 30), torch.tensor([0, 1, 0]))
    assert maps.layer is None and maps.heat.shape == (3, 30) and maps.views.shape == (3, 1, 30)


def test_choose_examples_takes_the_most_confident_right_then_wrong_of_each_class():
    labels = torch.tensor([0, 0, 0, 1, 1])
    probabilities = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.45, 0.55]])
    assert choose_examples(labels, probabilities, per_class=1) == [[0, 2], [3]]  # class 1 has no wrong series
    assert choose_examples(labels, probabilities) == [[0, 1, 2], [3, 4]]


@pytest.mark.slow
def test_explain_of_a_series_run_draws_right_and_wrong_test_series_per_class(waves_fcn, tmp_path, capsys):
    assert main(["explain", str(waves_fcn), "--out", str(tmp_path), "--name", "cam"]) == 0
    assert "series explained (layer body.2.0)" in capsys.readouterr().out
    record = json.loads((tmp_path / "cam" / "explain.json").read_text())
    test_sources = cnnkit.load(waves_fcn).labelled_images(None, "test")[0].sources
    assert record["layer"] == "body.2.0" and record["series"]
    assert all(row["source"] in test_sources for row in record["series"])
    for index, name in enumerate(["1", "2"]):
        assert (tmp_path / "cam" / f"class{index}.png").stat().st_size > 0
        assert 1 <= sum(row["true"] == name for row in record["series"]) <= 6  # 3 right and 3 wrong at most
    assert "class 1" in (tmp_path / "cam" / "index.html").read_text()
    assert main(["explain", str(waves_fcn), "x.tsv", "--out", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "give them with --data" in error and error.count("\n") == 1


@pytest.mark.slow
def test_report_of_a_series_run_shows_its_most_confidently_wrong_series(waves_fcn, tmp_path):
    assert (waves_fcn / "report" / "report.html").is_file()  # every training run writes one, series too
    classifier = cnnkit.load(waves_fcn)
    data = classifier.labelled_images(None, "test")[0]
    swapped = replace(data, labels=1 - data.labels)  # every right answer becomes a mistake to show
    results = write_report(
        classifier.model, swapped, classifier.preprocessing, torch.device("cpu"), tmp_path, tta=False
    )
    losses = results["top_losses"]
    assert 1 <= len(losses) <= 8 and all(row["true"] != row["predicted"] for row in losses)
    assert [row["confidence"] for row in losses] == sorted((row["confidence"] for row in losses), reverse=True)
    assert results["tta_flip_accuracy"] is None and results["no_flip_accuracy"] == results["accuracy"]
    assert (tmp_path / "top_losses.png").stat().st_size > 0 and "band underneath" in (
        tmp_path / "report.html"
    ).read_text()


@pytest.mark.slow
def test_report_of_an_audio_model_draws_spectrograms_of_its_mistakes(tmp_path):
    torch.manual_seed(0)
    model = create_model("bcresnet", num_classes=3, in_channels=1, img_size=4000).eval()
    waves = 0.1 * torch.randn(6, 1, 4000)
    with torch.no_grad():
        wrong = (model(waves).argmax(1) + 1) % 3  # labels the model never gives
    clips = SeriesSet(waves, torch.full((6,), 4000), wrong, ["a", "b", "c"], [f"clip{i}.wav" for i in range(6)])
    results = write_report(model, clips, AudioPreprocessing(16000, 4000), torch.device("cpu"), tmp_path, tta=False)
    assert results["accuracy"] == 0 and len(results["top_losses"]) == 6
    assert (tmp_path / "top_losses.png").is_file() and "<th>clips</th>" in (tmp_path / "report.html").read_text()


def test_summary_gives_series_and_audio_models_their_input_shapes():
    assert summarize_model("mlp1d", img_size=150, channels=1).input_shape == [1, 150]
    assert summarize_model("inception_time").input_shape == [1, 128]  # one channel, the builders' default length
    logmel = summarize_model("mlp_logmel")
    assert logmel.input_shape == [1, 16000] and logmel.layers[-1].output_shape == [10]  # one second at 16 kHz
    assert summarize_model("resnet1d", img_size=64, channels=2).layers[0].output_shape == [64, 64]

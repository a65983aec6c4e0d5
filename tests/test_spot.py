"""Keyword spotting: the background class of audio runs, sliding windows, events, scoring and ``cnnkit spot``."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_audio_train import make_tone_folder

from cnnkit.checkpoint import save_checkpoint
from cnnkit.cli.main import main
from cnnkit.config import TrainConfig
from cnnkit.data.audio import AudioSplits
from cnnkit.data.background import BACKGROUND_CLASS, add_background, background_clips
from cnnkit.data.series import SeriesSet
from cnnkit.data.speech import SILENCE, UNKNOWN
from cnnkit.data.wav import AudioFormat, write_wav
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, CheckpointInfo, ModelSpec, Preprocessing
from cnnkit.models.registry import build
from cnnkit.tasks.spot import Detection, EventPicker, SpotSettings, Word, load_run, score_detections
from cnnkit.tasks.spot.scores import POOLED_SPANS, WindowScorer
from cnnkit.training.prepare import prepare_audio

RATE, WINDOW = 8000, 2000  # 0.25 s windows keep the model's work small
CLASSES = ["yes", "no", BACKGROUND_CLASS]


def _clips(count: int, length: int = WINDOW, seed: int = 0) -> SeriesSet:
    """Speech-like clips: a loud burst in the middle of a quiet floor."""
    rng = np.random.default_rng(seed)
    values = 0.001 * rng.standard_normal((count, 1, length)).astype(np.float32)
    values[:, :, length // 3 : 2 * length // 3] *= 300
    labels = torch.arange(count) % 2
    return SeriesSet(torch.from_numpy(values), torch.full((count,), length), labels, ["yes", "no"], [""] * count)


@pytest.fixture(scope="module")
def spot_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained bcresnet audio run of 0.25 s windows at 8 kHz with a background class (spotting's mechanics)."""
    torch.manual_seed(0)
    spec = ModelSpec("bcresnet", len(CLASSES), 1, WINDOW, {"sample_rate": RATE})
    run = tmp_path_factory.mktemp("spot") / "run"
    run.mkdir()
    info = CheckpointInfo(spec, CLASSES, AudioPreprocessing(RATE, WINDOW), {"config": {}})
    save_checkpoint(run / "best.safetensors", build(spec).eval(), info)
    return run


def test_background_clips_repeat_for_a_seed_and_take_every_kind_in_turn():
    recordings = [torch.from_numpy(0.1 * np.random.default_rng(1).standard_normal(3 * WINDOW).astype(np.float32))]
    first, sources = background_clips(10, WINDOW, RATE, _clips(6), recordings, seed=5)
    again, _ = background_clips(10, WINDOW, RATE, _clips(6), recordings, seed=5)
    assert np.array_equal(first, again) and first.shape == (10, WINDOW) and first.dtype == np.float32
    kinds = [source.split("/")[1].split("@")[0].split("#")[0] for source in sources]
    assert kinds[:5] == ["silence", "white", "pink", "gaps", "recording"] and kinds[5] == "silence"
    assert not first[0].any() and 0 < np.abs(first[5]).max() < 1e-3  # digital silence, then dither
    quiet = np.sqrt(np.mean(first[3] ** 2))
    assert quiet < 0.01  # gaps come from the quiet floor, never the burst (rms about 0.3)
    assert not np.array_equal(first, background_clips(10, WINDOW, RATE, _clips(6), recordings, seed=6)[0])


def test_add_background_appends_the_class_to_every_split_and_says_how_many():
    fmt = AudioFormat(RATE, WINDOW)
    splits = AudioSplits("toy", _clips(20), _clips(10, seed=1), _clips(10, seed=2), "by hand", fmt)
    grown = add_background(splits, 0.1)
    assert grown.classes == ["yes", "no", BACKGROUND_CLASS]
    assert [int((s.labels == 2).sum()) for s in (grown.train, grown.val, grown.test)] == [2, 1, 1]
    assert len(grown.train) == 22 and grown.train.values.shape[1:] == (1, WINDOW)
    assert "_background_: 0.1 x each split's clips (2 train, 1 val, 1 test)" in grown.split_rule
    with pytest.raises(CnnkitError, match="has a class named _background_"):
        add_background(grown, 0.1)


@pytest.mark.slow
def test_prepare_audio_adds_background_by_default_not_when_off_nor_for_an_old_resumed_run(tmp_path):
    folder = make_tone_folder(tmp_path / "tones", per_class=5)
    config = TrainConfig(data=str(folder), clip_seconds=0.25, workers=1, max_bad_share=0.2)
    prepared = prepare_audio(config, None, lambda *_: None, "bcresnet", {})
    assert prepared.splits.classes == ["noise", "tone", BACKGROUND_CLASS] and prepared.spec.num_classes == 3
    again = prepare_audio(config, None, lambda *_: None, "bcresnet", {})
    assert torch.equal(again.splits.train.values, prepared.splits.train.values)  # seeded: bit for bit
    off = TrainConfig(data=str(folder), clip_seconds=0.25, workers=1, max_bad_share=0.2, background=0.0)
    assert prepare_audio(off, None, lambda *_: None, "bcresnet", {}).splits.classes == ["noise", "tone"]
    old_state = SimpleNamespace(spec=SimpleNamespace(kwargs={"sample_rate": 16000}))  # config.yaml without the key
    assert prepare_audio(config, old_state, lambda *_: None, "bcresnet", {}).splits.classes == ["noise", "tone"]


def test_pooled_scores_equal_the_model_on_a_window_alone(spot_run):
    run = load_run(spot_run)
    scorer = WindowScorer(run.model, WINDOW, 800)
    assert scorer.way == "pooled"
    samples = torch.from_numpy(0.1 * np.random.default_rng(0).standard_normal(WINDOW + 4 * 800).astype(np.float32))
    with torch.inference_mode():
        alone = run.model(samples[None, None, :WINDOW]).softmax(1)
        windows = torch.stack([samples[i * 800 : i * 800 + WINDOW] for i in range(5)])[:, None]
        each = run.model(windows).softmax(1)
    pooled = scorer.score(samples, 5)
    assert pooled.shape == (5, 3) and torch.allclose(pooled[0], alone[0], atol=1e-5)
    assert torch.allclose(WindowScorer(torch.nn.Sequential(run.model), WINDOW, 800).score(samples, 5), each, atol=1e-5)


def test_window_scorer_scores_chunks_together_to_the_bit_as_each_alone(spot_run):
    scorer = WindowScorer(load_run(spot_run).model, WINDOW, 800)
    chunks, count = POOLED_SPANS + 1, 2  # two forward passes, the second mostly zero rows
    stride = count * 800
    noise = np.random.default_rng(5).standard_normal(chunks * stride + WINDOW)
    samples = torch.from_numpy((0.1 * noise).astype(np.float32))
    together = scorer.score_chunks(samples, count, chunks)
    assert len(together) == chunks and not torch.equal(together[0], together[1])  # other audio, other posteriors
    for index in (0, POOLED_SPANS - 1, POOLED_SPANS):  # first and last row of a pass, and one past it
        assert torch.equal(together[index], scorer.score(samples[index * stride :], count))


def _posteriors(rows: list[tuple[float, float]]) -> np.ndarray:
    """(N, 3) posteriors from (yes, no) per window; the background takes the rest."""
    return np.array([[yes, no, 1 - yes - no] for yes, no in rows])


def test_event_picker_reports_each_keyword_once_where_its_windows_overlap():
    settings = SpotSettings(threshold=0.5, hop_seconds=0.1, smooth=1, refractory_seconds=0.3)
    picker = EventPicker(CLASSES, settings, window_seconds=1.0)
    rows = [(0.1, 0)] * 3 + [(0.9, 0), (0.95, 0), (0.4, 0), (0.8, 0)] + [(0.1, 0)] * 5 + [(0, 0.7)] * 2
    found = picker.push(_posteriors(rows), 0) + picker.finish()
    # yes at windows 3-4 (the flicker at 6 falls in the refractory window), then no at 12-13, closed by the end
    assert [(d.label, round(d.start, 2), round(d.end, 2), d.score) for d in found] == [
        ("yes", 0.4, 1.3, 0.95),
        ("no", 1.3, 2.2, 0.7),
    ]


def test_event_picker_never_reports_silence_unknown_or_background_of_a_keyword_run():
    classes = ["yes", SILENCE, UNKNOWN, BACKGROUND_CLASS]  # the --keywords task's classes, background too
    picker = EventPicker(classes, SpotSettings(threshold=0.5, hop_seconds=0.1, smooth=1), window_seconds=1.0)
    silence, unknown, yes = [0.05, 0.9, 0.05, 0.0], [0.05, 0.05, 0.9, 0.0], [0.9, 0.05, 0.05, 0.0]
    found = picker.push(np.array([silence] * 3 + [unknown] * 3 + [yes] * 2), 0) + picker.finish()
    assert [d.label for d in found] == ["yes"]


def test_score_detections_counts_hits_misses_and_false_alarms_once_each():
    words = [Word("yes", 1.0, 1.5), Word("no", 5.0, 5.4)]
    found = [
        Detection("yes", 0.9, 1.6, 0.9),  # hit
        Detection("yes", 1.0, 1.4, 0.8),  # the same word again: a false alarm
        Detection("yes", 5.0, 5.3, 0.9),  # the wrong label: a false alarm, and "no" is missed
    ]
    metrics = score_detections(found, words, seconds=1800)
    assert (metrics.hits, metrics.misses, metrics.false_alarms) == (1, 1, 2)
    assert metrics.f1 == pytest.approx(2 / 5) and metrics.false_alarms_per_hour == pytest.approx(4.0)


def test_spotter_stream_gives_the_files_detections_in_any_block_size(spot_run):
    run = load_run(spot_run)
    samples = (0.2 * np.random.default_rng(3).standard_normal(RATE * 5 + 123)).astype(np.float32)
    settings = SpotSettings(threshold=0.34, smooth=2)
    whole = run.spotter(settings, keep=True)
    at_once = whole.feed(samples) + whole.finish()
    streamed = run.spotter(settings, keep=True)
    blocks = [d for start in range(0, len(samples), 777) for d in streamed.feed(samples[start : start + 777])]
    blocks += streamed.finish()
    assert at_once and blocks == at_once
    assert np.array_equal(np.concatenate(whole.posteriors), np.concatenate(streamed.posteriors))
    assert len(np.concatenate(whole.posteriors)) == 1 + -(-(len(samples) - WINDOW) // 800)  # to the last sample


@pytest.mark.slow
def test_spot_cli_prints_json_lines_and_scores_a_labelled_recording(spot_run, tmp_path, capsys):
    stereo = np.repeat(0.2 * np.random.default_rng(4).standard_normal((3 * 16000, 1)), 2, axis=1)
    write_wav(tmp_path / "long.wav", stereo.astype(np.float32), 16000)  # another rate, two channels
    (tmp_path / "long.csv").write_text("label,start,end\nyes,1.0,1.3\n")
    flags = ["--json", "--threshold", "0.34", "--labels", str(tmp_path / "long.csv"), "--out", str(tmp_path / "out")]
    assert main(["spot", str(spot_run), str(tmp_path / "long.wav"), *flags]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[-1]["metrics"]["words"] == 1 and "false_alarms_per_hour" in lines[-1]["metrics"]
    assert lines[:-1] and all(set(line) == {"label", "start", "end", "score"} for line in lines[:-1])
    assert all(line["label"] in ("yes", "no") and 0 <= line["start"] < line["end"] for line in lines[:-1])
    assert (tmp_path / "out" / "det.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "out" / "spot.json").read_text())["det"]) > 10


def test_spot_pads_a_recording_shorter_than_the_window_and_says_so(spot_run, tmp_path, capsys):
    write_wav(tmp_path / "short.wav", np.zeros(500, np.float32), RATE)
    assert main(["spot", str(spot_run), str(tmp_path / "short.wav")]) == 0
    assert "less than the run's 0.25 s window: padded with silence to one window" in capsys.readouterr().err


def _image_run(root: Path) -> Path:
    spec = ModelSpec("mlp", 2, 1, 8, {})
    root.mkdir()
    info = CheckpointInfo(spec, ["a", "b"], Preprocessing(8, 1, (0.5,), (0.25,)), {"config": {}})
    save_checkpoint(root / "best.safetensors", build(spec), info)
    return root


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("not_wav", "is not a WAV file (no RIFF/WAVE header)"),
        ("empty", "is not a WAV file (it is empty)"),
        ("image_run", "was trained on image data; cnnkit spot needs an audio run"),
        ("bad_labels", "row 2 has 2 field(s), not 3"),
        ("unknown_label", "'maybe' is not a keyword of the run (yes, no)"),
        ("both", "give either AUDIO.wav or --stream"),
    ],
)
def test_spot_refuses_bad_input_in_one_line(spot_run, tmp_path, capsys, case, says):
    wav = tmp_path / "a.wav"
    write_wav(wav, np.zeros(RATE, np.float32), RATE)
    run, extra = spot_run, []
    if case == "not_wav":
        wav.write_text("hello")
    elif case == "empty":
        wav.write_bytes(b"")
    elif case == "image_run":
        run = _image_run(tmp_path / "images")
    elif case in ("bad_labels", "unknown_label"):
        row = "yes,1.0" if case == "bad_labels" else "maybe,1,2"
        (tmp_path / "l.csv").write_text(f"label,start,end\n{row}\n")
        extra = ["--labels", str(tmp_path / "l.csv")]
    else:
        extra = ["--stream"]
    assert main(["spot", str(run), str(wav), *extra]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err

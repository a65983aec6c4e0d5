"""Speech Commands' keyword task through training and evaluation, and a WAV folder's ``_background_noise_/``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_cli_flags import assert_one_line_error, run_main

import cnnkit
from cnnkit.compare.signals import load_signal_study
from cnnkit.config import TrainConfig
from cnnkit.data.audio import load_audio_folder
from cnnkit.data.background import BACKGROUND_CLASS
from cnnkit.data.labelled import labelled_audio
from cnnkit.data.speech import SILENCE, STANDARD_KEYWORDS, UNKNOWN, load_audio, parse_keywords
from cnnkit.data.wav import AudioFormat, write_wav
from cnnkit.errors import CnnkitError
from cnnkit.training.prepare import prepare_audio

FORMAT = AudioFormat(8000, 800)  # 0.1 s clips keep every test fast
STANDARD_TASK = [*STANDARD_KEYWORDS, SILENCE, UNKNOWN]


def noise(frames: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (frames, 1)).astype(np.float32)


def make_standard_speech_commands(root: Path, per_word: int = 3) -> Path:
    """Speech Commands v2's layout with the ten standard words and two others, 3 clips each, one listed per split."""
    words = [*STANDARD_KEYWORDS, "cat", "dog"]
    val, test = [], []
    for w, word in enumerate(words):
        (root / word).mkdir(parents=True)
        for index in range(per_word):
            write_wav(root / word / f"{w:02d}{index:06d}_nohash_0.wav", noise(800, 10 * w + index), 8000)
        val.append(f"{word}/{w:02d}{0:06d}_nohash_0.wav")
        test.append(f"{word}/{w:02d}{1:06d}_nohash_0.wav")
    (root / "validation_list.txt").write_text("\n".join(val) + "\n")
    (root / "testing_list.txt").write_text("\n".join(test) + "\n")
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "running_tap.wav", noise(16000, 7), 8000)
    (root / "_background_noise_" / "README.md").write_text("not a recording")
    return root


@pytest.fixture(scope="module")
def speech_commands(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_standard_speech_commands(tmp_path_factory.mktemp("sc") / "speech_commands")


@pytest.fixture(scope="module")
def quick_training() -> Iterator[None]:
    """One thread (a loaded machine's thread pool spins) and no report figures: they are not what is tested here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("cnnkit.understand.report.write_report", lambda *args, **kwargs: None)
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def keyword_run(speech_commands: Path, quick_training: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of the standard 12-class task on the tiny set, in process (shared by the tests after it)."""
    out = tmp_path_factory.mktemp("keyword_runs")
    settings = dict(data_dir=str(speech_commands), epochs=1, batch_size=16, clip_seconds=0.1, sample_rate=8000)
    run = cnnkit.train(data="speech-commands", keywords="standard", workers=1, out=str(out), verbose=False, **settings)
    return run.dir


def test_parse_keywords_reads_standard_and_word_lists_and_refuses_bad_ones():
    assert parse_keywords("standard") == STANDARD_KEYWORDS and parse_keywords(None) is None
    assert parse_keywords(" yes, no ") == ("yes", "no") and parse_keywords(["up"]) == ("up",)
    for bad, says in (("", "give standard or comma-separated"), ("yes,,no", "give standard"), ("yes,yes", "repeat")):
        with pytest.raises(CnnkitError, match=says):
            parse_keywords(bad)


def test_load_audio_keywords_make_the_12_class_task_with_silence_as_its_one_non_speech_class(speech_commands: Path):
    splits = load_audio("speech-commands", FORMAT, data_dir=str(speech_commands), workers=1, keywords="standard")
    assert splits.classes == STANDARD_TASK and BACKGROUND_CLASS not in splits.classes
    assert f"{SILENCE} is the non-speech class (no _background_)" in splits.split_rule
    test_words = {source.split("/")[0] for source in splits.test.sources}
    assert set(STANDARD_KEYWORDS) <= test_words and "_background_noise_" in test_words  # its silence windows
    assert not any("README" in item.path for item in splits.skipped)  # only the WAVs of _background_noise_/ are read
    with pytest.raises(CnnkitError, match=rf"--background 0.1 with --keywords: {SILENCE} is their non-speech class"):
        load_audio("speech-commands", FORMAT, data_dir=str(speech_commands), background=0.1, keywords="standard")
    with pytest.raises(CnnkitError, match="--keywords: for speech-commands only; spoken-digits has its own classes"):
        load_audio("spoken-digits", FORMAT, keywords="standard")


@pytest.mark.slow
def test_train_keywords_records_the_task_and_evaluation_rebuilds_the_same_classes(keyword_run: Path):
    config = yaml.safe_load((keyword_run / "config.yaml").read_text())
    assert config["keywords"] == "standard" and config["background"] == 0.0  # no _background_ beside _silence_
    split = json.loads((keyword_run / "split.json").read_text())
    assert split["classes"] == STANDARD_TASK and "non-speech class" in split["rule"]
    classifier = cnnkit.load(keyword_run / "best.safetensors", device="cpu")
    assert classifier.classes == STANDARD_TASK
    clips, _ = labelled_audio(None, "test", classifier.classes, classifier.preprocessing.to_dict(), config)
    assert clips.sources == split["test"] and clips.classes == STANDARD_TASK  # the run's own test clips, in order
    result, _ = classifier.evaluate(split="test")
    assert result.count == len(split["test"]) and result.classes == STANDARD_TASK


@pytest.mark.slow
def test_train_keywords_resumes_on_the_same_classes_and_refuses_a_change(keyword_run: Path):
    with pytest.raises(CnnkitError, match=r"cannot change keywords \('standard' -> 'yes,no'\) when resuming"):
        cnnkit.train(resume=keyword_run, keywords="yes,no", verbose=False)
    resumed = cnnkit.train(resume=keyword_run, epochs=2, verbose=False)  # the data is read again: the same classes
    assert resumed.classes == STANDARD_TASK
    assert yaml.safe_load((resumed.dir / "config.yaml").read_text())["keywords"] == "standard"


def test_train_keywords_on_other_data_is_one_line_before_any_run(capsys, tmp_path: Path):
    code, _, err = run_main(capsys, "train", "--data", "digits", "--keywords", "standard", "--out", str(tmp_path))
    assert_one_line_error(code, err, "keywords is used only with data speech-commands")
    with pytest.raises(CnnkitError, match="keywords is used only with data speech-commands"):
        TrainConfig(data="spoken-digits", keywords="yes").check()
    assert not any(tmp_path.iterdir())


def test_compare_keywords_study_the_12_class_task_and_are_one_line_on_images(capsys, tmp_path: Path, speech_commands):
    study = load_signal_study("speech-commands", "audio", {}, str(speech_commands), "cpu", "standard")
    assert study.train.classes == STANDARD_TASK and study.test.classes == STANDARD_TASK
    code, _, err = run_main(capsys, "compare", "--data", "digits", "--keywords", "standard", "--out", str(tmp_path))
    assert_one_line_error(code, err, "--keywords: for speech-commands only; --data digits holds images, leave it out")


def make_folder_with_background_noise(root: Path, split_folders: bool = False) -> Path:
    """Two word classes and ``_background_noise_/`` (one recording, one file that is no WAV) beside them."""
    train = root / "train" if split_folders else root
    for w, word in enumerate(("no", "yes")):
        (train / word).mkdir(parents=True)
        for index in range(6):
            write_wav(train / word / f"{index}.wav", noise(400, 10 * w + index), 8000)
        if split_folders:
            (root / "val" / word).mkdir(parents=True)
            write_wav(root / "val" / word / "0.wav", noise(400, 50 + w), 8000)
    noise_dir = root / "_background_noise_"
    noise_dir.mkdir()
    write_wav(noise_dir / "fan.wav", noise(4000, 3), 16000)
    (noise_dir / "broken.wav").write_bytes(b"not audio")
    if split_folders:
        (root / "val" / "_background_noise_").mkdir()  # no class of val either
    return root


def test_wav_folder_reads_background_noise_as_recordings_not_a_class(tmp_path: Path):
    root = make_folder_with_background_noise(tmp_path / "words")
    before = sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*"))
    splits = load_audio_folder(root, FORMAT, workers=1)
    assert splits.classes == ["no", "yes"] and len(splits.train) + len(splits.val) + len(splits.test) == 12
    assert len(splits.noise) == 1 and len(splits.noise[0]) == 2000  # 0.25 s at 16 kHz, resampled to 8 kHz
    assert [item.path for item in splits.skipped] == ["_background_noise_/broken.wav"]
    assert "_background_noise_/ (1 recordings): background noise, not a class" in splits.split_rule
    assert any("_background_noise_/ holds background recordings, not a class" in w for w in splits.warnings)
    grown = load_audio(str(root), FORMAT, workers=1, background=0.5)
    assert grown.classes == ["no", "yes", BACKGROUND_CLASS]
    assert any("recording@" in source for source in grown.train.sources)  # its windows join the _background_ class
    assert sorted((p.relative_to(root), p.stat().st_mtime_ns) for p in root.rglob("*")) == before  # data untouched


def test_wav_split_folders_take_background_noise_from_the_top_and_augment_with_it(tmp_path: Path):
    root = make_folder_with_background_noise(tmp_path / "words", split_folders=True)
    splits = load_audio_folder(root, FORMAT, workers=1)
    assert splits.classes == ["no", "yes"] and len(splits.val) == 2 and len(splits.noise) == 1
    config = TrainConfig(data=str(root), sample_rate=8000, clip_seconds=0.1, workers=1, max_bad_share=0.2)
    prepared = prepare_audio(config, None, lambda *_: None, "bcresnet", {})
    assert prepared.augment.noise_bank is not None  # auto mixes the folder's own background recordings in

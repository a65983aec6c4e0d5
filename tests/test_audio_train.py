"""Audio through ``cnnkit train`` and ``cnnkit evaluate``: WAV class folders and spoken-digits, one clip rule."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli
from test_audio_data import make_fsdd
from test_resume import Killed, same_run

import cnnkit
from cnnkit.checkpoint import read_checkpoint
from cnnkit.config import TrainConfig
from cnnkit.data.audio_augment import AUTO_AUDIO_WITHOUT_BACKGROUND, AudioBatchAugmentation, parse_audio_augmentation
from cnnkit.data.labelled import labelled_images
from cnnkit.data.speech import clip_format, load_audio
from cnnkit.data.wav import write_wav
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing, read_preprocessing
from cnnkit.models import create_model
from cnnkit.training.prepare import data_modality, prepare_audio
from cnnkit.training.resume import STATE, read_state

RATE = 16000
CLIP = RATE // 4  # 0.25 s


def make_tone_folder(root: Path, per_class: int = 20, seed: int = 0) -> Path:
    """``tone/`` (440 Hz, random phase and level) and ``noise/`` (white bursts): 0.25 s at 16 kHz, and one bad file."""
    rng = np.random.default_rng(seed)
    time = np.arange(CLIP) / RATE
    for name in ("tone", "noise"):
        (root / name).mkdir(parents=True)
    for index in range(per_class):
        level = rng.uniform(0.2, 0.8)
        tone = level * np.sin(2 * np.pi * 440 * time + rng.uniform(0, 2 * np.pi))
        write_wav(root / "tone" / f"tone_{index}.wav", tone[:, None].astype(np.float32), RATE)
        write_wav(
            root / "noise" / f"noise_{index}.wav", (level * rng.standard_normal((CLIP, 1))).astype(np.float32), RATE
        )
    (root / "tone" / "broken.wav").write_text("not a wav file")  # a non-WAV named .wav: skipped and reported
    return root


@pytest.fixture(scope="module")
def tone_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tone_folder(tmp_path_factory.mktemp("tones") / "tones")


@pytest.fixture(scope="module")
def tone_run(tone_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The module's one training run, through the real command: (run directory, its console output)."""
    out = tmp_path_factory.mktemp("audio_runs")
    flags = ["--epochs", "6", "--batch-size", "4", "--clip-seconds", "0.25", "--max-bad-share", "0.1"]
    result = run_cli("train", "--data", str(tone_folder), *flags, "--out", str(out), "--name", "tones")
    assert result.returncode == 0, result.stderr
    return out / "tones", result.stdout + result.stderr


@pytest.mark.slow
def test_train_audio_folder_writes_a_run_that_records_its_clip_rule(tone_run):
    run_dir, console = tone_run
    for name in ("config.yaml", "best.safetensors", "last.safetensors", STATE, "results.json", "split.json"):
        assert (run_dir / name).is_file(), name
    assert "model: bcresnet" in (run_dir / "config.yaml").read_text()
    _, info = read_checkpoint(run_dir / "best.safetensors")
    assert info.preprocessing == AudioPreprocessing(RATE, CLIP, "end", "centre")
    assert info.extra["data"]["sample_rate"] == RATE and info.extra["data"]["clip_samples"] == CLIP
    assert json.loads((run_dir / "split.json").read_text())["audio"]["clip_seconds"] == 0.25
    augment = AudioBatchAugmentation(parse_audio_augmentation(AUTO_AUDIO_WITHOUT_BACKGROUND)).describe()
    assert f"augment: {augment} (audio; image augmentation is off); clips of 0.25 s at 16000 Hz" in console
    assert "tone/broken.wav" in (run_dir / "skipped.csv").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["test"]["accuracy"] >= 0.75  # chance is 0.5; 8 test clips, so two may still be wrong


@pytest.mark.slow
def test_evaluate_audio_run_reads_new_wavs_by_the_recorded_rule(tone_run, tmp_path):
    run_dir, _ = tone_run
    result = run_cli("evaluate", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    evaluated = json.loads(result.stdout)
    trained = json.loads((run_dir / "results.json").read_text())["test"]
    assert evaluated["split"] == "test" and evaluated["accuracy"] == pytest.approx(trained["accuracy"])
    assert [row["name"] for row in evaluated["per_class"]] == ["noise", "tone", "_background_"]  # on by default
    # new recordings at another rate, in stereo and longer than a clip: decoded by the run's rule, the folder whole
    fresh = make_tone_folder(tmp_path / "fresh", per_class=3, seed=1)
    (fresh / "tone" / "broken.wav").unlink()
    stereo = np.repeat(0.5 * np.sin(2 * np.pi * 440 * np.arange(8000) / 8000)[:, None], 2, axis=1)
    write_wav(fresh / "tone" / "stereo_8k.wav", stereo.astype(np.float32), 8000)
    result = run_cli("evaluate", str(run_dir), "--data", str(fresh))
    assert result.returncode == 0, result.stderr
    assert "all 7 clips were evaluated" in result.stderr and "accuracy" in result.stdout


@pytest.mark.slow
def test_audio_checkpoint_reloads_and_scores_as_trained(tone_run):
    run_dir, _ = tone_run
    classifier = cnnkit.load(run_dir / "best.safetensors", device="cpu")
    result, skipped = classifier.evaluate(split="test")
    assert result.accuracy == pytest.approx(json.loads((run_dir / "results.json").read_text())["test"]["accuracy"])
    assert [item.path for item in skipped] == ["tone/broken.wav"]  # the training folder, read again
    waves = torch.zeros(2, 1, CLIP)
    assert classifier.model(waves).shape == (2, 3)  # waveforms in (log-mels inside); noise, tone, _background_


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--model", "convnet"], "--model convnet takes image input, and --data"),
        (["--augment", "hflip"], "cannot read audio augmentation 'hflip'"),
        (["--img-size", "32"], "--img-size: not for audio"),
        (["--split-by", "speaker"], "--split-by: for spoken-digits only"),
    ],
)
def test_train_audio_refuses_image_settings_in_one_line(tone_folder, tmp_path, flags, says):
    result = run_cli("train", "--data", str(tone_folder), *flags, "--out", str(tmp_path / "runs"))
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_train_images_refuses_an_audio_model_and_evaluate_refuses_images(shapes_folder, tone_run, tmp_path):
    result = run_cli("train", "--data", str(shapes_folder), "--model", "bcresnet", "--out", str(tmp_path))
    assert result.returncode == 2 and "--model bcresnet takes audio input" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("evaluate", str(tone_run[0]), "--data", str(shapes_folder))
    assert result.returncode == 2 and "holds images, and this model reads audio" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_audio_killed_mid_epoch_resumes_bit_for_bit(tmp_path):
    folder = make_tone_folder(tmp_path / "tones", per_class=6)
    common = dict(data=str(folder), epochs=2, batch_size=2, save_every=2, seed=3, clip_seconds=0.1)
    common.update(max_bad_share=0.1, out=str(tmp_path), verbose=False)
    reference = cnnkit.train(name="reference", **common)

    class KillAtStepFour:
        def on_checkpoint(self, run_dir, path, epoch, step):
            if path.name == STATE and step == 4:  # mid-epoch 1: 9 training clips make 5 steps
                raise Killed

    with pytest.raises(Killed):
        cnnkit.train(name="killed", callbacks=[KillAtStepFour()], **common)
    assert read_state(tmp_path / "killed").progress.tally.batches == 4
    same_run(cnnkit.train(resume=tmp_path / "killed", verbose=False).dir, reference.dir)


def test_prepare_audio_augments_by_default_by_what_the_data_brings(tone_folder):
    config = TrainConfig(data=str(tone_folder), clip_seconds=0.25, workers=1)
    prepared = prepare_audio(config, None, lambda *_: None, "bcresnet", {})
    assert prepared.augment.augmentation == parse_audio_augmentation(AUTO_AUDIO_WITHOUT_BACKGROUND)
    assert prepared.augment.augmentation != parse_audio_augmentation("auto")  # with background recordings
    assert prepared.augment.noise_bank is None and prepared.tta == "none"
    assert prepared.spec.kwargs == {"sample_rate": RATE} and prepared.spec.img_size == CLIP
    assert [item.path for item in prepared.splits.skipped] == ["tone/broken.wav"]


def test_audio_preprocessing_round_trips_and_old_records_stay_images():
    rule = AudioPreprocessing(8000, 8000, "end", "centre")
    assert read_preprocessing(rule.to_dict()) == rule and rule.input_shape == (1, 8000)
    old = {"img_size": 8, "channels": 1, "mean": [0.5], "std": [0.25]}
    assert read_preprocessing(old).modality == "image"


def test_data_modality_tells_audio_from_images(tone_folder, shapes_folder):
    assert data_modality(str(tone_folder)) == "audio" and data_modality("spoken-digits") == "audio"
    assert data_modality(str(shapes_folder)) == "image" and data_modality("digits") == "image"


def test_clip_format_takes_the_given_rate_and_length_else_the_datasets():
    assert (clip_format("spoken-digits").sample_rate, clip_format("spoken-digits").clip_samples) == (8000, 8000)
    assert clip_format("folder", 16000, 0.25).clip_samples == 4000
    assert clip_format("spoken-digits", clip_seconds=2).clip_samples == 16000


def test_bcresnet_front_end_keeps_32_ms_windows_and_10_ms_hops_at_any_rate():
    model = create_model("bcresnet", num_classes=10, in_channels=1, img_size=8000, sample_rate=8000)
    assert (model.frontend.n_fft, model.frontend.hop_length) == (256, 80)
    assert model.frontend.frames(8000) == 101  # as 1 s at 16 kHz gives


def test_load_audio_picks_a_speaker_fold_and_refuses_one_out_of_range(tmp_path):
    root = make_fsdd(tmp_path / "fsdd", speakers=("anna", "bob"), takes=6)
    rule = clip_format("spoken-digits", clip_seconds=0.05)
    splits = load_audio("spoken-digits", rule, "speaker", 1, data_dir=str(root), workers=1)
    assert {source.split("_")[1] for source in splits.test.sources} == {"bob"}
    assert all("_bob_" not in source for source in splits.train.sources + splits.val.sources)
    with pytest.raises(CnnkitError, match=r"--fold 2: spoken-digits has 2 speakers \(anna, bob\); use 0 to 1"):
        load_audio("spoken-digits", rule, "speaker", 2, data_dir=str(root), workers=1)


def test_image_evaluation_refuses_audio_data(tone_folder):
    with pytest.raises(CnnkitError, match="holds audio, and this model reads images"):
        labelled_images(str(tone_folder), "test", None, (8, 1, "crop"), {"data": "digits"})


def test_train_refuses_audio_settings_on_images_before_reading_them(shapes_folder, tmp_path):
    with pytest.raises(CnnkitError, match=r"--split-by, --clip-seconds: for audio, and --data .* holds images"):
        cnnkit.train(data=str(shapes_folder), split_by="speaker", clip_seconds=0.5, out=str(tmp_path / "runs"))
    assert not (tmp_path / "runs").exists()

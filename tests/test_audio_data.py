"""Audio datasets: WAV class folders, FSDD and Speech Commands split rules, and safe archive downloads."""

from __future__ import annotations

import dataclasses
import errno
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest

from cnnkit.data import audio, speech
from cnnkit.data.archive import DatasetArchive, content_digest, extract_archive, fetch_archive
from cnnkit.data.audio import is_audio_folder, load_audio_folder
from cnnkit.data.speech import SILENCE, UNKNOWN, load_speech_commands, load_spoken_digits, spoken_digit_folds
from cnnkit.data.wav import AudioFormat, write_wav
from cnnkit.errors import CnnkitError

FORMAT = AudioFormat(8000, 800)  # 0.1 s clips keep every test fast


def noise(frames: int, seed: int, channels: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (frames, channels))


def make_keyword_folder(root: Path, per_class: int = 6) -> Path:
    """Two classes of WAVs at mixed rates and channel counts, one of them longer than a clip."""
    for label, word in enumerate(("no", "yes")):
        (root / word).mkdir(parents=True)
        for index in range(per_class):
            rate, channels = ((8000, 1), (16000, 2), (11025, 1))[index % 3]
            write_wav(root / word / f"{word}_{index}.wav", noise(rate // 20, 10 * label + index, channels), rate)
    write_wav(root / "yes" / "long.wav", noise(4000, 99), 8000)  # 0.5 s: cropped to 0.1 s
    return root


def test_load_audio_folder_skips_a_bad_file_and_reports_it(tmp_path: Path):
    root = make_keyword_folder(tmp_path / "words")
    (root / "no" / "broken.wav").write_bytes(b"not audio")
    splits = load_audio_folder(root, FORMAT, workers=1)
    assert [(s.path, "is not a WAV file" in s.reason) for s in splits.skipped] == [("no/broken.wav", True)]
    parts = (splits.train, splits.val, splits.test)
    sources = [source for part in parts for source in part.sources]
    assert len(sources) == len(set(sources)) == 13 and "no/broken.wav" not in sources
    assert splits.classes == ["no", "yes"] and splits.train.values.shape[1:] == (1, 800)
    assert splits.train.values.dtype.is_floating_point and all(len(p) > 0 for p in parts)
    assert any("cropped" in w and "yes/long.wav" in w for w in splits.warnings)
    row = splits.train.sources.index("no/no_0.wav") if "no/no_0.wav" in splits.train.sources else None
    if row is not None:  # 400 samples of sound at 8 kHz, then zeros (pad at the end)
        assert int(splits.train.lengths[row]) == 400 and float(splits.train.values[row, 0, 400:].abs().max()) == 0
    assert splits.facts()["clip_samples"] == 800 and "stratified" in splits.facts()["split_rule"]


def test_load_audio_folder_decodes_the_same_through_the_cache_and_sees_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    root = make_keyword_folder(tmp_path / "words")
    monkeypatch.setattr(audio, "CHUNK", 4)  # several tasks: the worker processes decode
    first = load_audio_folder(root, FORMAT, workers=2)
    again = load_audio_folder(root, FORMAT, workers=1)
    assert again.train.sources == first.train.sources
    assert bool((again.train.values == first.train.values).all())
    write_wav(root / "no" / "no_0.wav", np.zeros((400, 1)), 8000)  # a changed file: a fresh entry
    changed = load_audio_folder(root, FORMAT, workers=1)
    parts = (changed.train, changed.val, changed.test)
    part = next(p for p in parts if "no/no_0.wav" in p.sources)
    assert float(part.values[part.sources.index("no/no_0.wav")].abs().max()) == 0


def test_a_failed_audio_cache_build_is_one_line_and_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = make_keyword_folder(tmp_path / "words")
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(audio, "_build", full_disk)
    with pytest.raises(CnnkitError, match=r"building the audio cache .* failed: No space left") as raised:
        load_audio_folder(root, FORMAT, workers=1)
    assert "\n" not in str(raised.value) and list((tmp_path / "cache" / "audio").iterdir()) == []


def test_is_audio_folder_tells_wav_class_folders_from_image_folders(tmp_path: Path, shapes_folder: Path):
    assert is_audio_folder(make_keyword_folder(tmp_path / "words"))
    assert not is_audio_folder(shapes_folder) and not is_audio_folder(tmp_path / "absent")


def test_load_audio_folder_uses_given_split_folders(tmp_path: Path):
    for split, count in (("train", 4), ("val", 1), ("test", 2)):
        for word in ("down", "up"):
            (tmp_path / split / word).mkdir(parents=True)
            for index in range(count):
                write_wav(tmp_path / split / word / f"{index}.wav", noise(400, index), 8000)
    splits = load_audio_folder(tmp_path, FORMAT, workers=1)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (8, 2, 4)
    assert splits.split_rule == "given folders" and all(s.startswith("test/") for s in splits.test.sources)


def test_load_audio_folder_refuses_a_folder_without_wavs_or_with_one_class(tmp_path: Path):
    (tmp_path / "a").mkdir()
    with pytest.raises(CnnkitError, match="no WAV files"):
        load_audio_folder(tmp_path, FORMAT, workers=1)
    write_wav(tmp_path / "a" / "1.wav", noise(100, 0), 8000)
    with pytest.raises(CnnkitError, match="only one class"):
        load_audio_folder(tmp_path, FORMAT, workers=1)


def make_fsdd(root: Path, speakers=("anna", "bob"), takes: int = 10) -> Path:
    """FSDD's layout, tiny: recordings/{digit}_{speaker}_{index}.wav, plus one stray file."""
    (root / "recordings").mkdir(parents=True)
    for digit in range(10):
        for s, speaker in enumerate(speakers):
            for index in range(takes):
                write_wav(root / "recordings" / f"{digit}_{speaker}_{index}.wav", noise(200, digit + s + index), 8000)
    (root / "recordings" / "notes.wav").write_bytes(b"junk")
    return root


def test_load_spoken_digits_standard_split_is_takes_0_to_4_as_test(tmp_path: Path):
    splits = load_spoken_digits(make_fsdd(tmp_path / "fsdd"), FORMAT, workers=1)
    take = lambda source: int(source.removesuffix(".wav").split("_")[2])  # noqa: E731
    assert sorted(take(s) for s in splits.test.sources) == sorted(list(range(5)) * 20)
    assert all(take(s) >= 5 for s in splits.train.sources + splits.val.sources)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (90, 10, 100)
    assert splits.classes == [str(d) for d in range(10)]
    assert any("not named digit_speaker_index" in w for w in splits.warnings)
    again = load_spoken_digits(make_fsdd(tmp_path / "copy"), FORMAT, workers=1)
    assert again.val.sources == splits.val.sources  # the val carve depends on the files alone


def test_load_spoken_digits_by_speaker_holds_out_whole_speakers(tmp_path: Path):
    root = make_fsdd(tmp_path / "fsdd", speakers=("anna", "bob", "cleo"), takes=2)
    (root / "recordings" / "3_anna_1.wav").write_bytes(b"RIFF\x00\x00")  # cut short
    splits = load_spoken_digits(root / "recordings", FORMAT, split_by="speaker", test_speaker="bob", workers=1)
    assert [item.path for item in splits.skipped] == ["recordings/3_anna_1.wav"]
    assert {s.split("_")[1] for s in splits.test.sources} == {"bob"} and len(splits.test) == 20
    assert "bob" not in {s.split("_")[1] for s in splits.train.sources + splits.val.sources}
    with pytest.raises(CnnkitError, match="did you mean 'cleo'"):
        load_spoken_digits(root, FORMAT, split_by="speaker", test_speaker="clea", workers=1)
    folds = dict(spoken_digit_folds(root, FORMAT, workers=1))
    assert sorted(folds) == ["anna", "bob", "cleo"]
    tested = [source for fold in folds.values() for source in fold.test.sources]
    assert len(tested) == len(set(tested)) == 59  # every readable recording is tested exactly once


def test_spoken_digits_reads_cnnkit_data_dir_and_refuses_a_wrong_folder_or_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    make_fsdd(tmp_path / "data" / "spoken-digits", takes=6)
    monkeypatch.setenv("CNNKIT_DATA_DIR", str(tmp_path / "data"))
    assert len(load_spoken_digits(audio_format=FORMAT, workers=1).test) == 100
    with pytest.raises(CnnkitError, match="does not hold spoken-digits"):
        load_spoken_digits(tmp_path, FORMAT, workers=1)
    with pytest.raises(CnnkitError, match=r"val_split 1\.5"):
        load_spoken_digits(audio_format=FORMAT, val_split=1.5, workers=1)


def make_speech_commands(root: Path) -> Path:
    """Speech Commands v2's layout, tiny: word folders, the two lists, background noise."""
    for w, word in enumerate(("cat", "dog", "no", "up", "yes")):
        (root / word).mkdir(parents=True)
        for index in range(10):
            write_wav(root / word / f"{w:02d}{index:06d}_nohash_0.wav", noise(800, 10 * w + index), 8000)
    (root / "validation_list.txt").write_text("yes/04000000_nohash_0.wav\ncat/00000001_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("yes/04000001_nohash_0.wav\nno/02000001_nohash_0.wav\ngone/x.wav\n")
    (root / "_background_noise_").mkdir()
    write_wav(root / "_background_noise_" / "white_noise.wav", noise(16000, 7), 16000)
    return root


def test_load_speech_commands_keeps_its_official_lists_and_all_words(tmp_path: Path):
    splits = load_speech_commands(make_speech_commands(tmp_path / "sc"), FORMAT, workers=1)
    assert splits.classes == ["cat", "dog", "no", "up", "yes"]
    assert sorted(splits.test.sources) == ["no/02000001_nohash_0.wav", "yes/04000001_nohash_0.wav"]
    assert sorted(splits.val.sources) == ["cat/00000001_nohash_0.wav", "yes/04000000_nohash_0.wav"]
    assert len(splits.train) == 46 and not set(splits.train.sources) & set(splits.test.sources)
    assert any("missing" in w and "gone/x.wav" in w for w in splits.warnings)


def test_load_speech_commands_maps_keywords_silence_and_unknown(tmp_path: Path):
    root = make_speech_commands(tmp_path / "sc")
    splits = load_speech_commands(root, FORMAT, ("yes", "no", "up"), silence_share=0.5, unknown_share=0.5, workers=1)
    assert splits.classes == ["yes", "no", "up", SILENCE, UNKNOWN]
    train = splits.train
    words = [source.split("/")[0] for source in train.sources]
    for word, label in zip(words, train.labels.tolist()):
        expected = {"yes": 0, "no": 1, "up": 2, "_background_noise_": 3}.get(word, 4)
        assert label == expected
    keyword_count = sum(w in ("yes", "no", "up") for w in words)
    assert keyword_count == 27 and words.count("_background_noise_") == 14  # round(0.5 x 27)
    assert sum(w in ("cat", "dog") for w in words) == 14
    silence = train.values[train.labels == 3]
    assert float(silence.abs().max()) > 0  # windows of the background recording, not zeros
    assert len(splits.noise) == 1 and len(splits.noise[0]) == int(0.8 * 8000)
    with pytest.raises(CnnkitError, match="did you mean 'yes'"):
        load_speech_commands(root, FORMAT, ("yess",), workers=1)


def make_archive(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def fsdd_archive(tmp_path: Path) -> tuple[Path, str]:
    """A tarball of a tiny FSDD tree under one top-level folder, as GitHub packs it, and its recordings' digest."""
    tree = make_fsdd(tmp_path / "tree", takes=6)
    (tree / "recordings" / "notes.wav").unlink()
    members = {f"fsdd-abc/recordings/{p.name}": p.read_bytes() for p in sorted((tree / "recordings").iterdir())}
    return make_archive(tmp_path / "fsdd.tar.gz", members), content_digest(tree / "recordings")


@pytest.fixture
def empty_download_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CNNKIT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("CNNKIT_DATA_DIR", raising=False)
    return tmp_path / "cache" / "datasets"


def test_load_spoken_digits_downloads_checks_and_unpacks_into_the_cache(
    tmp_path: Path, empty_download_cache: Path, monkeypatch: pytest.MonkeyPatch
):
    archive, digest = fsdd_archive(tmp_path)
    monkeypatch.setattr(speech, "FSDD", dataclasses.replace(speech.FSDD, url=archive.as_uri(), content_sha256=digest))
    splits = load_spoken_digits(audio_format=FORMAT, workers=1)
    assert len(splits.test) == 100 and (empty_download_cache / "spoken-digits" / "recordings").is_dir()
    assert sorted(p.name for p in empty_download_cache.iterdir()) == ["spoken-digits", "spoken-digits.lock"]
    archive.unlink()  # a second run needs no download
    assert len(load_spoken_digits(audio_format=FORMAT, workers=1).train) == len(splits.train)


def test_fetch_archive_refuses_a_checksum_mismatch_and_keeps_nothing(tmp_path: Path, empty_download_cache: Path):
    archive, _ = fsdd_archive(tmp_path)
    wrong = DatasetArchive("spoken-digits", archive.as_uri(), "recordings", archive_sha256="0" * 64)
    with pytest.raises(CnnkitError, match="wrong SHA-256"):
        fetch_archive(wrong)
    other = dataclasses.replace(wrong, archive_sha256=None, content_sha256="0" * 64, content_dir="recordings")
    with pytest.raises(CnnkitError, match="not the expected ones"):
        fetch_archive(other)
    assert [p.name for p in empty_download_cache.iterdir()] == ["spoken-digits.lock"]  # no archive, no dataset
    with pytest.raises(CnnkitError, match="could not be downloaded"):
        fetch_archive(dataclasses.replace(wrong, url=(tmp_path / "absent.tar.gz").as_uri()))


FSDD_LIKE = DatasetArchive("spoken-digits", "file:///nowhere", "recordings")


@pytest.mark.parametrize("name", ["../evil.txt", "/tmp/evil.txt", "recordings/../../evil.txt"])
def test_extract_archive_refuses_members_outside_the_target(tmp_path: Path, name: str):
    archive = make_archive(tmp_path / "bad.tar.gz", {"recordings/0_a_0.wav": b"x", name: b"owned"})
    target = tmp_path / "out" / "dataset"
    target.parent.mkdir()
    with pytest.raises(CnnkitError, match="refused to unpack"):
        extract_archive(archive, target, FSDD_LIKE)
    assert not (tmp_path / "evil.txt").exists() and list(target.parent.iterdir()) == []


def test_extract_archive_refuses_a_link_out_of_the_target(tmp_path: Path):
    archive = tmp_path / "link.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        link = tarfile.TarInfo("recordings/passwd")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        tar.addfile(link)
    with pytest.raises(CnnkitError, match="refused to unpack"):
        extract_archive(archive, tmp_path / "dataset", FSDD_LIKE)
    assert not (tmp_path / "dataset").exists()


def test_extract_archive_refuses_a_file_that_is_not_a_tarball(tmp_path: Path):
    (tmp_path / "fake.tar.gz").write_bytes(b"<html>rate limited</html>")
    with pytest.raises(CnnkitError, match="not a readable tar archive"):
        extract_archive(tmp_path / "fake.tar.gz", tmp_path / "dataset", FSDD_LIKE)
    assert not (tmp_path / "dataset").exists()

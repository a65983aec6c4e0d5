"""Built-in speech datasets: ``spoken-digits`` (FSDD) and ``speech-commands`` (v2), read or downloaded.

Each is looked for in ``data_dir`` (when given), then ``$CNNKIT_DATA_DIR/<name>``, then the
download cache; only then is its official archive downloaded, checked and unpacked there
(:mod:`cnnkit.data.archive`). Clips are decoded by one :class:`cnnkit.data.wav.AudioFormat`
through the audio cache (:func:`cnnkit.data.audio.read_clips`).

- ``spoken-digits``: the Free Spoken Digit Dataset, ``recordings/{digit}_{speaker}_{index}.wav``
  (8 kHz). Its own split: indices 0-4 are test, the rest train; ``split_by="speaker"`` holds out
  one whole speaker instead, and :func:`spoken_digit_folds` gives leave-one-speaker-out folds.
- ``speech-commands``: Speech Commands v2, a folder per word, its ``validation_list.txt`` and
  ``testing_list.txt``. All 35 words, or with ``keywords`` the standard task: those words plus
  ``_silence_`` (1-s windows of ``_background_noise_/``) and ``_unknown_`` (other words).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from cnnkit.data.archive import DatasetArchive, fetch_archive
from cnnkit.data.audio import (
    BACKGROUND_NOISE,
    AudioSplits,
    check_share,
    cropped_warning,
    is_audio_folder,
    load_audio_folder,
    read_background,
    read_clips,
)
from cnnkit.data.background import add_background
from cnnkit.data.imageset import SkippedFile, _stable_order, stratified_split
from cnnkit.data.series import SeriesSet
from cnnkit.data.wav import AudioFormat
from cnnkit.errors import CnnkitError, did_you_mean

FSDD_COMMIT = "26eb9aaf76e81b692f806f9140c2d2777410d7a1"  # v1.0.10 plus docs: 6 speakers, 3,000 recordings
FSDD = DatasetArchive(
    "spoken-digits",
    f"https://github.com/Jakobovski/free-spoken-digit-dataset/archive/{FSDD_COMMIT}.tar.gz",
    marker="recordings",
    # GitHub regenerates its archives, so the recordings are checked instead (content_digest at that commit).
    content_sha256="99aa5e3a7c822ab55b2a3b47e0b05aeb9f011c54837a12e3831ad24108330829",
    content_dir="recordings",
)
SPEECH_COMMANDS = DatasetArchive(
    "speech-commands",
    "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz",
    marker="testing_list.txt",
    archive_sha256="af14739ee7dc311471de98f5f9d2c9191b18aedfe957f4a6ff791c709868ff58",
)
DEFAULT_FORMATS = {"spoken-digits": AudioFormat(8000, 8000), "speech-commands": AudioFormat(16000, 16000)}

FSDD_NAME = re.compile(r"^(\d)_([A-Za-z]+)_(\d+)\.wav$")
FSDD_TEST_INDICES = range(5)  # the dataset's own convention: takes 0-4 of every digit and speaker are test

STANDARD_KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
# Shares of the background recordings' length for each split's silence windows, in order: no window is shared.
NOISE_SHARES = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


def locate_speech(dataset: DatasetArchive, data_dir: str | Path | None) -> Path:
    """The dataset's root: ``data_dir``, ``$CNNKIT_DATA_DIR/<name>``, the cache, or a fresh download."""
    if data_dir is not None:
        folder = Path(data_dir).expanduser()
        if folder.name == dataset.marker:  # FSDD's recordings/ itself
            folder = folder.parent
        if not (folder / dataset.marker).exists():
            raise CnnkitError(f"{folder} does not hold {dataset.name} (no {dataset.marker} in it); {_layout(dataset)}")
        return folder
    if configured := os.environ.get("CNNKIT_DATA_DIR"):
        folder = Path(configured).expanduser() / dataset.name
        if (folder / dataset.marker).exists():
            return folder
    return fetch_archive(dataset)


def _layout(dataset: DatasetArchive) -> str:
    if dataset is FSDD:
        return "give the folder holding recordings/{digit}_{speaker}_{index}.wav"
    return "give the unpacked Speech Commands folder (word folders and testing_list.txt)"


def _clip_format(audio_format: AudioFormat | None, name: str) -> AudioFormat:
    return audio_format or DEFAULT_FORMATS[name]


def _read_fsdd(data_dir: str | Path | None, audio_format: AudioFormat, workers: int) -> tuple[SeriesSet, list, list]:
    """Every FSDD recording as one clip set (name order), the skipped files and the warnings."""
    recordings = locate_speech(FSDD, data_dir) / "recordings"
    names = sorted(entry.name for entry in recordings.iterdir() if entry.suffix.lower() == ".wav")
    files = [(name, int(match.group(1))) for name in names if (match := FSDD_NAME.match(name))]
    warnings = []
    if len(files) < len(names):
        warnings.append(f"{len(names) - len(files)} file(s) in {recordings} not named digit_speaker_index.wav ignored")
    if not files:
        raise CnnkitError(f"{recordings} holds no {{digit}}_{{speaker}}_{{index}}.wav recordings")
    clips, failures, cropped = read_clips(recordings, files, [str(d) for d in range(10)], audio_format, workers)
    skipped = [SkippedFile(f"recordings/{item.path}", item.reason) for item in failures]
    return clips, skipped, warnings + cropped_warning([f"recordings/{path}" for path in cropped], audio_format)


def _speakers(clips: SeriesSet) -> list[str]:
    return [FSDD_NAME.match(source).group(2) for source in clips.sources]


def _carve(clips: SeriesSet, test: list[int], val_split: float) -> tuple[SeriesSet, SeriesSet, SeriesSet]:
    """(train, val, test): ``test`` as given, val carved from the rest by the stratified hash split."""
    chosen = set(test)
    rest = [i for i in range(len(clips)) if i not in chosen]
    pool = clips.subset(rest)
    val_idx, train_idx = stratified_split(pool.labels, pool.sources, [val_split])
    return pool.subset(train_idx), pool.subset(val_idx), clips.subset(test)


def _fsdd_splits(
    clips: SeriesSet, split_by: str, test_speaker: str | int | None, val_split: float, audio_format: AudioFormat
) -> AudioSplits:
    speakers = _speakers(clips)
    if split_by == "index":
        test = [i for i, s in enumerate(clips.sources) if int(FSDD_NAME.match(s).group(3)) in FSDD_TEST_INDICES]
        rule = f"FSDD's own: indices 0-4 test, the rest train; val {val_split:.0%} of train, stratified by hash"
    elif split_by == "speaker":
        known = sorted(set(speakers))
        if isinstance(test_speaker, int):  # a fold: the speaker at that place in name order
            if not 0 <= test_speaker < len(known):
                raise CnnkitError(
                    f"--fold {test_speaker}: spoken-digits has {len(known)} speakers ({', '.join(known)}); "
                    f"use 0 to {len(known) - 1}"
                )
            test_speaker = known[test_speaker]
        test_speaker = test_speaker or known[0]
        if test_speaker not in known:
            raise CnnkitError(
                f"speaker {test_speaker!r} is not in spoken-digits{did_you_mean(test_speaker, known)}; "
                f"speakers: {', '.join(known)}"
            )
        test = [i for i, speaker in enumerate(speakers) if speaker == test_speaker]
        rule = f"speaker {test_speaker} held out as test; val {val_split:.0%} of the others, stratified by hash"
    else:
        raise CnnkitError(f"unknown split_by {split_by!r} for spoken-digits; use index or speaker")
    if split_by == "index" and test_speaker is not None:
        raise CnnkitError("a test speaker (--fold) is for --split-by speaker; spoken-digits' own split is by index")
    train, val, test_set = _carve(clips, test, val_split)
    return AudioSplits("spoken-digits", train, val, test_set, rule, audio_format)


def load_spoken_digits(
    data_dir: str | Path | None = None,
    audio_format: AudioFormat | None = None,
    split_by: str = "index",
    test_speaker: str | int | None = None,
    val_split: float = 0.1,
    workers: int | None = None,
) -> AudioSplits:
    """The Free Spoken Digit Dataset as train/val/test clips, classes ``0`` to ``9``.

    Args:
        data_dir: Folder holding ``recordings/``; defaults to ``$CNNKIT_DATA_DIR/spoken-digits``,
            then the cache, then a download of the pinned GitHub archive (its recordings checked by SHA-256).
        audio_format: Clip rule; defaults to 8 kHz, 1 s (the recordings' rate; 99% are shorter).
        split_by: ``index`` (the dataset's own split: takes 0-4 test) or ``speaker`` (one speaker
            held out, for speaker-independent accuracy). Defaults to ``index``.
        test_speaker: The held-out speaker with ``split_by="speaker"``, by name or by place in name order
            (a fold: 0 is the first); defaults to the first by name.
        val_split: Share of the training clips held out for validation, stratified by hash. Defaults to 0.1.
        workers: Decoding processes; defaults to the number of cores.

    Example:
        >>> splits = load_spoken_digits("fsdd/", split_by="speaker", test_speaker="theo")  # doctest: +SKIP
    """
    audio_format = _clip_format(audio_format, "spoken-digits")
    check_share("val_split", val_split)
    clips, skipped, warnings = _read_fsdd(data_dir, audio_format, workers or os.cpu_count() or 1)
    splits = _fsdd_splits(clips, split_by, test_speaker, val_split, audio_format)
    splits.skipped, splits.warnings = skipped, warnings
    return splits


def spoken_digit_folds(
    data_dir: str | Path | None = None,
    audio_format: AudioFormat | None = None,
    val_split: float = 0.1,
    workers: int | None = None,
) -> Iterator[tuple[str, AudioSplits]]:
    """Leave-one-speaker-out: (speaker, splits with that speaker as test) for each speaker, decoded once."""
    audio_format = _clip_format(audio_format, "spoken-digits")
    check_share("val_split", val_split)
    clips, skipped, warnings = _read_fsdd(data_dir, audio_format, workers or os.cpu_count() or 1)
    for speaker in sorted(set(_speakers(clips))):
        splits = _fsdd_splits(clips, "speaker", speaker, val_split, audio_format)
        splits.skipped, splits.warnings = skipped, warnings
        yield speaker, splits


def _read_list(root: Path, name: str) -> set[str]:
    path = root / name
    if not path.is_file():
        raise CnnkitError(f"{path} is missing; Speech Commands v2 ships validation_list.txt and testing_list.txt")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _silence(
    signals: list[np.ndarray], names: list[str], split: str, count: int, audio_format: AudioFormat
) -> tuple[np.ndarray, list[str]]:
    """``count`` silence clips (count, clip_samples): windows of the split's share of each noise recording,
    each at a gain from 0 to 1 (as TensorFlow's speech-commands input pipeline draws it), seeded by the split."""
    width = audio_format.clip_samples
    low, high = NOISE_SHARES[split]
    windows = []
    for k, signal in enumerate(signals):
        start, stop = int(low * len(signal)), int(high * len(signal))
        windows += [(k, offset) for offset in range(start, stop - width + 1, width)]
    clips = np.zeros((count, width), np.float32)
    if not windows:  # no background recordings long enough: digital silence
        return clips, [f"{SILENCE}[{i}]" for i in range(count)]
    gains = np.random.default_rng(list(NOISE_SHARES).index(split)).uniform(0.0, 1.0, count)
    sources = []
    for i in range(count):
        k, offset = windows[i % len(windows)]
        clips[i] = gains[i] * signals[k][offset : offset + width]
        sources.append(f"{BACKGROUND_NOISE}/{names[k]}@{offset / audio_format.sample_rate:.2f}s*{gains[i]:.3f}")
    return clips, sources


def parse_keywords(keywords: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """The keyword task's words: ``standard`` (:data:`STANDARD_KEYWORDS`), ``yes,no,up`` or a sequence; None: none."""
    if keywords is None:
        return None
    given = keywords.split(",") if isinstance(keywords, str) else keywords
    words = STANDARD_KEYWORDS if keywords == "standard" else tuple(str(word).strip() for word in given)
    if not words or not all(words):
        raise CnnkitError(f"keywords {keywords!r}: give standard or comma-separated Speech Commands words, e.g. yes,no")
    if len(set(words)) != len(words):
        raise CnnkitError(f"keywords repeat a word: {', '.join(words)}")
    return words


def check_keywords(data: str, keywords: str | Sequence[str] | None) -> None:
    """Refuse ``keywords`` for data other than speech-commands, whose words they name, in one line."""
    if keywords is not None and data != "speech-commands":
        raise CnnkitError(f"--keywords: for speech-commands only; {data} has its own classes, leave it out")


def _keyword_labels(
    files: list[str], words: list[str], keywords: Sequence[str] | None, unknown_share: float
) -> tuple[list[str], list[tuple[str, int]]]:
    """The classes, and (file, label) for the files of one split that the task uses."""
    if keywords is None:
        index = {word: i for i, word in enumerate(words)}
        return words, [(rel, index[rel.split("/")[0]]) for rel in files]
    classes = [*keywords, SILENCE, UNKNOWN]
    index = {word: i for i, word in enumerate(keywords)}
    known = [(rel, index[rel.split("/")[0]]) for rel in files if rel.split("/")[0] in index]
    others = sorted((rel for rel in files if rel.split("/")[0] not in index), key=_stable_order)
    unknown = [(rel, len(keywords) + 1) for rel in sorted(others[: round(unknown_share * len(known))])]
    return classes, known + unknown


def load_speech_commands(
    data_dir: str | Path | None = None,
    audio_format: AudioFormat | None = None,
    keywords: str | Sequence[str] | None = None,
    silence_share: float = 0.1,
    unknown_share: float = 0.1,
    workers: int | None = None,
) -> AudioSplits:
    """Speech Commands v2 as clips in its official splits (``validation_list.txt``, ``testing_list.txt``).

    Args:
        data_dir: The unpacked dataset; defaults to ``$CNNKIT_DATA_DIR/speech-commands``, then the
            cache, then a download of the official archive (checked by SHA-256).
        audio_format: Clip rule; defaults to 16 kHz, 1 s (the recordings' own).
        keywords: None for all 35 words as classes; words (``standard`` or :data:`STANDARD_KEYWORDS` for the
            standard 12-class task, or ``"yes,no,up"``) for those words plus ``_silence_`` and ``_unknown_``,
            ``_silence_`` being the task's one non-speech class (:func:`load_audio` adds no ``_background_``).
        silence_share: ``_silence_`` clips per split, as a share of its keyword clips. Defaults to 0.1.
        unknown_share: ``_unknown_`` clips (other words, chosen by hash) per split, as that share. Defaults to 0.1.
        workers: Decoding processes; defaults to the number of cores.

    Example:
        >>> splits = load_speech_commands(keywords=STANDARD_KEYWORDS)  # doctest: +SKIP
        >>> len(splits.classes)  # doctest: +SKIP
        12
    """
    audio_format = _clip_format(audio_format, "speech-commands")
    workers = workers or os.cpu_count() or 1
    keywords = parse_keywords(keywords)
    check_share("silence_share", silence_share, whole=True)
    check_share("unknown_share", unknown_share, whole=True)
    root = locate_speech(SPEECH_COMMANDS, data_dir)
    words = sorted(e.name for e in root.iterdir() if e.is_dir() and not e.name.startswith(("_", ".")))
    for word in keywords or ():
        if word not in words:
            raise CnnkitError(f"keyword {word!r} is not a Speech Commands word{did_you_mean(word, words)}")
    lists = {"val": _read_list(root, "validation_list.txt"), "test": _read_list(root, "testing_list.txt")}
    everything = sorted(f"{word}/{f.name}" for word in words for f in (root / word).iterdir() if f.suffix == ".wav")
    listed = lists["val"] | lists["test"]
    by_split = {"test": sorted(lists["test"] & set(everything)), "val": sorted(lists["val"] & set(everything))}
    by_split["train"] = [rel for rel in everything if rel not in listed]
    missing = listed - set(everything)
    warnings = [f"{len(missing)} file(s) named in the split lists are missing, e.g. {min(missing)}"] if missing else []
    signals, names, skipped = read_background(root, audio_format)
    sets, cropped = {}, []
    for split, files in by_split.items():
        classes, labelled = _keyword_labels(files, words, keywords, unknown_share)
        clips, failures, split_cropped = read_clips(root, labelled, classes, audio_format, workers)
        skipped += failures
        cropped += split_cropped
        if keywords is not None:
            count = round(silence_share * int((clips.labels < len(keywords)).sum()))
            noise, sources = _silence(signals, names, split, count, audio_format)
            clips = SeriesSet(
                torch.cat([clips.values, torch.from_numpy(noise)[:, None]]),
                torch.cat([clips.lengths, torch.full((count,), audio_format.clip_samples, dtype=torch.long)]),
                torch.cat([clips.labels, torch.full((count,), len(keywords), dtype=torch.long)]),
                classes,
                clips.sources + sources,
            )
        sets[split] = clips
    if keywords is not None and not signals:
        warnings.append(f"no {BACKGROUND_NOISE}/ recordings: {SILENCE} clips are digital silence")
    rule = "Speech Commands' validation_list.txt and testing_list.txt; the rest train"
    if keywords is not None:
        rule += f"; {SILENCE} {silence_share:.0%} and {UNKNOWN} {unknown_share:.0%} (by hash) of each split's keywords"
        rule += f"; {SILENCE} is the non-speech class (no _background_)"
    train_noise = [torch.from_numpy(s[: int(NOISE_SHARES["train"][1] * len(s))].copy()) for s in signals]
    warnings += cropped_warning(cropped, audio_format)
    ordered = [sets[split] for split in ("train", "val", "test")]
    return AudioSplits("speech-commands", *ordered, rule, audio_format, skipped, warnings, train_noise)


# The built-in audio datasets by name, for a dispatcher beside cnnkit.data.builtin.BUILTINS.
AUDIO_BUILTINS = {"spoken-digits": load_spoken_digits, "speech-commands": load_speech_commands}


def is_audio(data: str) -> bool:
    """Whether ``data`` names audio: a built-in speech set or a folder of WAV class folders (decodes nothing)."""
    return data in AUDIO_BUILTINS or is_audio_folder(data)


def clip_format(data: str, sample_rate: int | None = None, clip_seconds: float | None = None) -> AudioFormat:
    """The clip rule of ``data``: the given rate and length, else the built-in's own, else 16 kHz and 1 s."""
    default = DEFAULT_FORMATS.get(data, AudioFormat())
    rate = sample_rate or default.sample_rate
    seconds = clip_seconds or default.clip_seconds
    return AudioFormat(rate, max(1, round(seconds * rate)), default.pad, default.crop)


def load_audio(
    data: str,
    audio_format: AudioFormat,
    split_by: str | None = None,
    fold: int | None = None,
    val_split: float = 0.1,
    test_split: float = 0.2,
    data_dir: str | None = None,
    workers: int | None = None,
    background: float = 0.0,
    keywords: str | Sequence[str] | None = None,
) -> AudioSplits:
    """Audio by name or folder as train/val/test clips: the one dispatcher that training and evaluation share.

    Args:
        data: ``spoken-digits``, ``speech-commands`` or a folder of WAV files, one subfolder per class.
        audio_format: The clip rule (:func:`clip_format`).
        split_by: spoken-digits only: ``index`` (its own split; the default) or ``speaker``.
        fold: With ``split_by="speaker"``, the held-out speaker's place in name order. Defaults to the first.
        val_split: Share of the training clips held out for validation.
        test_split: Share held out for testing where the data has no test split of its own (folders).
        data_dir: Folder holding a built-in's files.
        workers: Decoding processes; defaults to the number of cores.
        background: Clips of the class ``_background_`` per clip of each split
            (:func:`cnnkit.data.background.add_background`); 0 for none. Defaults to 0.
        keywords: speech-commands only: its keyword task (:func:`load_speech_commands`), whose ``_silence_``
            is the non-speech class, so ``background`` must be 0. Defaults to None (every word a class).
    """
    check_keywords(data, keywords)
    keywords = parse_keywords(keywords)
    if keywords is not None and background:  # two non-speech classes would not be the published task
        raise CnnkitError(f"--background {background:g} with --keywords: {SILENCE} is their non-speech class; use 0")
    if data == "spoken-digits":
        splits = load_spoken_digits(data_dir, audio_format, split_by or "index", fold, val_split, workers)
    elif given := [flag for flag, value in (("--split-by", split_by), ("--fold", fold)) if value is not None]:
        raise CnnkitError(f"{', '.join(given)}: for spoken-digits only; {data} has its own split rule, leave them out")
    elif data == "speech-commands":
        splits = load_speech_commands(data_dir, audio_format, keywords, workers=workers)
    else:
        splits = load_audio_folder(Path(data).expanduser(), audio_format, val_split, test_split, workers)
    return add_background(splits, background) if background else splits

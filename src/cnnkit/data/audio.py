"""Audio folders: WAV files in one subfolder per class (optionally inside train/, val/ and test/) as clips.

The folder rules are the image folders' (:mod:`cnnkit.data.folder`): the same split folders,
the same deterministic stratified split by file-name hash, cnnkit output left out, and a file
that cannot be decoded skipped and reported as a :class:`SkippedFile`, never dropped silently.
Every file becomes one clip by one rule (:class:`cnnkit.data.wav.AudioFormat`), decoded once in
parallel processes into a memory-mapped float32 cache entry ``<cache>/audio/<key>/`` whose key is
the image cache's fingerprint of the files and the rule; later runs only map it. Clips are held
in a :class:`cnnkit.data.series.SeriesSet`: a waveform is a series of one channel.

A ``_background_noise_/`` subfolder (Speech Commands' name) holds background recordings, never a
class: they are mixed into training clips as noise and lend windows to the ``_background_`` class.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnkit.data.cache import (
    FREE_SPACE_MARGIN,
    META,
    _allocate,
    _pool,
    cache_root,
    fingerprint,
    format_size,
    open_or_build,
    staged,
)
from cnnkit.data.decode import IMAGE_EXTENSIONS
from cnnkit.data.folder import _split_dir, ignored_output_warning, list_classes, list_images
from cnnkit.data.imageset import SkippedFile, stratified_split
from cnnkit.data.series import SeriesSet
from cnnkit.data.wav import WAV_EXTENSIONS, AudioDecodeError, AudioFormat, fit_length, read_wav, to_mono
from cnnkit.errors import CnnkitError, describe_error

AUDIO_CACHE_VERSION = 1
VALUES = "values.f32"
CHUNK = 64  # files per worker task
BACKGROUND_NOISE = "_background_noise_"  # a folder of background recordings (Speech Commands' name), not a class


@dataclass
class AudioSplits:
    """The three splits of an audio set, what was skipped or worth a warning, and the clip rule.

    Attributes:
        name: The folder or built-in dataset name.
        train, val, test: Clips as float32 ``values`` (N, 1, clip_samples); ``lengths`` count the
            samples of sound in each clip (at most ``clip_samples``; the rest are zeros).
        split_rule: How the splits were made, in words.
        audio_format: The rate, length and pad/crop rule every clip was made by.
        skipped: Files that could not be decoded, with the reason.
        warnings: Things worth saying that are not errors (cropped clips, ignored files).
        noise: Background-noise recordings for training-time mixing (mono, the format's rate), if any.
    """

    name: str
    train: SeriesSet
    val: SeriesSet
    test: SeriesSet
    split_rule: str
    audio_format: AudioFormat
    skipped: list[SkippedFile] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    noise: list[torch.Tensor] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def channels(self) -> int:
        return 1

    @property
    def length(self) -> int:
        """Samples per clip, L of ``values`` (N, 1, L)."""
        return self.audio_format.clip_samples

    def facts(self) -> dict[str, Any]:
        """What a run stores about its data, JSON-ready: enough to decode new recordings the same way."""
        return {"name": self.name, **self.audio_format.facts(), "split_rule": self.split_rule}


@dataclass
class DecodedClips:
    """The clips of a file list in the order asked for, with the files that could not be decoded.

    Attributes:
        values: float32 (N, 1, clip_samples), a view of the memory-mapped cache entry.
        lengths: int64 (N,), samples of sound in each clip.
        kept: For each row, its index in the file list.
        failures: (index in the file list, reason) for each file left out.
        cropped: Indices in the file list of the files longer than a clip, cropped.
    """

    values: torch.Tensor
    lengths: torch.Tensor
    kept: list[int]
    failures: list[tuple[int, str]]
    cropped: list[int]


def _decode_chunk(root: str, rows: list[tuple[int, str]], audio_format: AudioFormat) -> list[tuple[int, Any, int, str]]:
    """(row, clip or failure reason, samples of sound, change) for each file of a worker's share."""
    out = []
    for row, rel in rows:
        path = os.path.join(root, rel)
        try:
            samples, info = read_wav(path)
        except AudioDecodeError as error:
            out.append((row, str(error).replace(path, "file"), 0, ""))
            continue
        mono = to_mono(samples, info.sample_rate, audio_format)
        clip, change = fit_length(mono, audio_format)
        out.append((row, clip, min(len(mono), audio_format.clip_samples), change or ""))
    return out


def _build(entry: Path, root: Path, files: Sequence[str], audio_format: AudioFormat, workers: int) -> None:
    """Decode every file into a staging directory, clips of kept files in order, and publish it as ``entry``."""
    with staged(entry) as staging:
        width = audio_format.clip_samples
        _allocate(staging / VALUES, 4 * len(files) * width)
        values = np.memmap(staging / VALUES, np.float32, "r+", shape=(len(files), width))
        rows = list(enumerate(files))
        chunks = [rows[i : i + CHUNK] for i in range(0, len(rows), CHUNK)]
        if workers > 1 and len(chunks) > 1:
            with _pool(workers) as pool:
                results = pool.map(_decode_chunk, *zip(*[(str(root), chunk, audio_format) for chunk in chunks]))
                meta = _store(values, results)
        else:
            meta = _store(values, (_decode_chunk(str(root), chunk, audio_format) for chunk in chunks))
        values.flush()
        del values
        with open(staging / VALUES, "r+b") as handle:
            handle.truncate(4 * len(meta["kept"]) * width)
            os.fsync(handle.fileno())
        meta.update(version=AUDIO_CACHE_VERSION, shape=[len(meta["kept"]), width])
        (staging / META).write_text(json.dumps(meta))


def _store(values: np.memmap, results: Any) -> dict[str, list]:
    """Write the kept clips one after another (failed files take no row); the rest goes to meta.json."""
    meta: dict[str, list] = {"kept": [], "lengths": [], "failures": [], "cropped": []}
    for chunk in results:
        for row, clip, length, change in chunk:
            if isinstance(clip, str):
                meta["failures"].append((row, clip))
                continue
            values[len(meta["kept"])] = clip
            meta["kept"].append(row)
            meta["lengths"].append(length)
            if change == "cropped":
                meta["cropped"].append(row)
    return meta


def _open_entry(entry: Path) -> DecodedClips | None:
    try:
        meta = json.loads((entry / META).read_text())
        if meta.get("version") != AUDIO_CACHE_VERSION:
            return None
        count, width = meta["shape"]
        if (entry / VALUES).stat().st_size != 4 * count * width:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if count == 0:
        values = torch.zeros((0, width), dtype=torch.float32)
    else:  # copy-on-write: nothing a run does to the tensor reaches the file
        values = torch.from_numpy(np.memmap(entry / VALUES, np.float32, "c", shape=(count, width)))
    failures = [(int(row), str(reason)) for row, reason in meta["failures"]]
    lengths = torch.tensor(meta["lengths"], dtype=torch.long)
    return DecodedClips(values[:, None], lengths, [int(i) for i in meta["kept"]], failures, meta["cropped"])


def decode_clips(
    root: Path, files: Sequence[str], audio_format: AudioFormat, workers: int, cache: Path | None = None
) -> DecodedClips:
    """Decode WAV ``files`` (relative to ``root``) into clips by ``audio_format``, through the audio cache.

    The first call decodes in ``workers`` processes; later calls with the same files (names,
    sizes, modification times), order and format only map the entry.
    """
    base = (cache or cache_root()) / "audio"
    header = f"{AUDIO_CACHE_VERSION}:{json.dumps(audio_format.facts(), sort_keys=True)}:{root.resolve()}"
    entry = base / fingerprint(header, root, files)[:32]

    def build() -> None:
        needed, free = 4 * len(files) * audio_format.clip_samples, shutil.disk_usage(base).free
        if needed > free - min(FREE_SPACE_MARGIN, free // 10):
            raise CnnkitError(
                f"the audio cache needs {format_size(needed)} for {len(files)} clips of {audio_format.clip_samples} "
                f"samples, but {base} has {format_size(free)} free; free space there, shorten the clips, "
                "or set $CNNKIT_CACHE_DIR to a folder on a larger disk"
            )
        try:
            _build(entry, root, files, audio_format, workers)
        except (OSError, MemoryError, BrokenProcessPool) as error:
            what = getattr(error, "strerror", None) or describe_error(error) or type(error).__name__
            if isinstance(error, BrokenProcessPool):
                what = "a decoding process was killed, by a lack of memory or a full disk"
            raise CnnkitError(
                f"building the audio cache in {base} failed: {what} "
                f"({format_size(needed)} needed); free memory or disk space, or set $CNNKIT_CACHE_DIR"
            ) from None

    return open_or_build(entry, _open_entry, build)


def read_clips(
    root: Path, files: Sequence[tuple[str, int]], classes: list[str], audio_format: AudioFormat, workers: int
) -> tuple[SeriesSet, list[SkippedFile], list[str]]:
    """Decode (relative path, label) pairs into a :class:`SeriesSet` of clips; unreadable files are skipped.

    Returns the set (in the order of ``files``, failures left out), the skipped files, and the
    paths of the files that were cropped to the clip length.
    """
    decoded = decode_clips(root, [rel for rel, _ in files], audio_format, workers)
    labels = torch.tensor([files[i][1] for i in decoded.kept], dtype=torch.long)
    skipped = [SkippedFile(files[i][0], reason) for i, reason in decoded.failures]
    sources = [files[i][0] for i in decoded.kept]
    cropped = [files[i][0] for i in decoded.cropped]
    return SeriesSet(decoded.values, decoded.lengths, labels, classes, sources), skipped, cropped


def cropped_warning(cropped: Sequence[str], audio_format: AudioFormat) -> list[str]:
    """The one line saying how many files were longer than a clip and which part was kept (none when none)."""
    if not cropped:
        return []
    return [
        f"{len(cropped)} file(s) longer than {audio_format.clip_seconds:g} s cropped to their "
        f"{audio_format.crop} (e.g. {cropped[0]}); raise the clip length to keep them whole"
    ]


def check_share(flag: str, share: float, whole: bool = False) -> None:
    """Refuse a share outside [0, 1), or [0, 1] when ``whole`` may be taken: 0.1 means a tenth."""
    if not (0 <= share <= 1 if whole else 0 <= share < 1):
        raise CnnkitError(f"{flag} {share}: use a share from 0 to {'1' if whole else 'below 1'} (0.1 is usual)")


def read_background(root: Path, audio_format: AudioFormat) -> tuple[list[np.ndarray], list[str], list[SkippedFile]]:
    """The WAVs of ``root/_background_noise_/`` as mono signals at the format's rate, their names, and those skipped."""
    signals, names, skipped = [], [], []
    folder = root / BACKGROUND_NOISE
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.suffix.lower() not in WAV_EXTENSIONS or not path.is_file():  # Speech Commands keeps a README.md there
            continue
        try:
            samples, info = read_wav(path)
        except AudioDecodeError as error:
            skipped.append(SkippedFile(f"{BACKGROUND_NOISE}/{path.name}", str(error).replace(str(path), "file")))
            continue
        signals.append(to_mono(samples, info.sample_rate, audio_format))
        names.append(path.name)
    return signals, names, skipped


def is_audio_folder(root: str | Path) -> bool:
    """Whether ``root`` (or its ``train/``) has class subfolders holding WAV files and no images (for a dispatcher)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return False
    train_dir = _split_dir(root, "train") or root
    classes, _ = list_classes(train_dir)
    found = {Path(file).suffix.lower() for label in classes for file in os.listdir(train_dir / label)}
    return bool(found & WAV_EXTENSIONS) and not found & IMAGE_EXTENSIONS


def _no_audio_error(folder: Path) -> CnnkitError:
    return CnnkitError(
        f"no WAV files found in class subfolders of {folder}; expected one subfolder per class holding its "
        f"recordings, e.g. {folder / 'yes' / '1.wav'}"
    )


def load_audio_folder(
    root: Path,
    audio_format: AudioFormat,
    val_split: float = 0.1,
    test_split: float = 0.2,
    workers: int | None = None,
) -> AudioSplits:
    """Read a folder of WAV files, one subfolder per class, and split it.

    ``train/``, ``val/`` (or ``valid/``, ``validation/``) and ``test/`` subfolders are used as
    given; a missing val or test split is carved from the training files by the image folders'
    deterministic stratified split (:func:`cnnkit.data.imageset.stratified_split`).

    Args:
        root: The folder.
        audio_format: Rate, clip length and pad/crop rule.
        val_split: Share of training files held out for validation when no val folder is given.
        test_split: Share held out for testing when no test folder is given.
        workers: Decoding processes; defaults to the number of cores.

    Example:
        >>> splits = load_audio_folder(Path("keywords"), AudioFormat(16000, 16000))  # doctest: +SKIP
        >>> splits.train.values.shape[1:]  # doctest: +SKIP
        torch.Size([1, 16000])
    """
    workers = workers or os.cpu_count() or 1
    check_share("val_split", val_split)
    check_share("test_split", test_split)
    if not root.is_dir():
        raise CnnkitError(f"audio folder not found: {root}; give a folder with one subfolder of WAV files per class")
    train_dir = _split_dir(root, "train") or root
    classes, outputs = list_classes(train_dir)
    classes = [name for name in classes if name != BACKGROUND_NOISE]
    files, ignored, nested = list_images(train_dir, classes, WAV_EXTENSIONS)
    prefix = "" if train_dir == root else f"{train_dir.name}/"
    used = sorted({label for _, label in files})
    warnings = [ignored_output_warning(prefix + name) for name in outputs + nested]
    warnings += [f"empty class folder left out: {train_dir / name}" for i, name in enumerate(classes) if i not in used]
    if ignored:
        warnings.append(f"{ignored} file(s) without a .wav extension ignored under {train_dir}")
    if not files:
        raise _no_audio_error(train_dir)
    classes = [classes[i] for i in used]
    if len(classes) < 2:
        raise CnnkitError(f"{train_dir} has only one class ({classes[0]}); a classifier needs at least two")
    relabel = {old: new for new, old in enumerate(used)}
    labels = torch.tensor([relabel[label] for _, label in files], dtype=torch.long)
    # Split before decoding (as image folders do): each split is one contiguous block of the cache entry,
    # and a file that fails to decode moves no other file between splits.
    missing = [split for split in ("test", "val") if train_dir == root or _split_dir(root, split) is None]
    fractions = [test_split if "test" in missing else 0.0, val_split if "val" in missing else 0.0]
    parts = stratified_split(labels, [prefix + rel for rel, _ in files], fractions)  # test, val, train
    ordered = [(files[i][0], int(labels[i])) for part in parts for i in part]
    everything, failures, cropped = read_clips(train_dir, ordered, classes, audio_format, workers)
    everything.sources = [prefix + source for source in everything.sources]
    skipped = [SkippedFile(prefix + item.path, item.reason) for item in failures]
    cropped = [prefix + path for path in cropped]
    failed = {item.path for item in failures}
    bounds = [0]
    for part in parts:
        bounds.append(bounds[-1] + sum(1 for i in part if files[i][0] not in failed))
    carved = {name: everything.slice(bounds[k], bounds[k + 1]) for k, name in enumerate(("test", "val", "train"))}
    for split in ("val", "test"):
        split_dir = _split_dir(root, split) if train_dir != root else None
        if split_dir is None:
            continue
        found, _ = list_classes(split_dir)
        unknown = sorted(set(found) - set(classes) - {BACKGROUND_NOISE})
        if unknown:
            raise CnnkitError(f"{split_dir} has class folders {train_dir} lacks: {', '.join(unknown)}")
        given, _, _ = list_images(split_dir, classes, WAV_EXTENSIONS)
        clips, split_skipped, split_cropped = read_clips(split_dir, given, classes, audio_format, workers)
        clips.sources = [f"{split_dir.name}/{source}" for source in clips.sources]
        skipped += [SkippedFile(f"{split_dir.name}/{item.path}", item.reason) for item in split_skipped]
        cropped += [f"{split_dir.name}/{path}" for path in split_cropped]
        carved[split] = clips
    rule = "given folders"
    if any(fractions):
        shares = f"test {fractions[0]:.0%}, val {fractions[1]:.0%}"
        rule = f"stratified by file-name hash: {shares} of {prefix or 'the folder'}"
    noise: list[torch.Tensor] = []
    if noise_root := next((d for d in (train_dir, root) if (d / BACKGROUND_NOISE).is_dir()), None):
        where = ("" if noise_root == root else prefix) + BACKGROUND_NOISE
        signals, _, noise_skipped = read_background(noise_root, audio_format)
        noise = [torch.from_numpy(signal) for signal in signals]
        skipped += [SkippedFile(item.path.replace(BACKGROUND_NOISE, where, 1), item.reason) for item in noise_skipped]
        rule += f"; {where}/ ({len(noise)} recordings): background noise, not a class"
        warnings.append(
            f"{where}/ holds background recordings, not a class: they are mixed into training clips as noise "
            "and into the _background_ class; rename the folder to train it as a class"
        )
    warnings += cropped_warning(cropped, audio_format)
    return AudioSplits(
        str(root), carved["train"], carved["val"], carved["test"], rule, audio_format, skipped, warnings, noise
    )

"""The background class of audio runs: clips of no keyword, so a spotter can say "nothing was said".

A keyword classifier trained on words alone must name a word for every window it is shown;
slid over a long recording, most windows hold no word, and each would be a false alarm.
:func:`add_background` adds the class :data:`BACKGROUND_CLASS` to every split, made of what
lies between words:

- ``silence``: digital silence, or dither at -90 dBFS;
- ``white`` and ``pink`` noise at a level drawn from :data:`NOISE_LEVELS_DB` (RMS, dBFS);
- ``gaps``: the quiet frames of the split's own recordings (the room between words), joined;
- ``recording``: windows of the data set's background recordings (the ``_background_noise_/``
  folder of Speech Commands or of a WAV class folder; training split only: its val and test shares
  are its silence clips' own), at a gain drawn from 0.1 to 1.

The kinds take turns, clip by clip. Every draw comes from a generator seeded by the split alone
(:data:`BACKGROUND_SEED`), never by the run's seed, so evaluation rebuilds exactly the clips a run
was tested on and a resumed run trains on the same ones, bit for bit.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cnnkit.data.audio import AudioSplits
from cnnkit.data.series import SeriesSet
from cnnkit.errors import CnnkitError

BACKGROUND_CLASS = "_background_"
BACKGROUND_SEED = 0x6B7773  # "kws"
SPLITS = ("train", "val", "test")
NOISE_LEVELS_DB = (-60.0, -20.0)  # from a quiet room to loud hiss, as RMS in dB below full scale
DITHER_DB = -90.0
GAP_FRAME_SECONDS = 0.02
GAP_BELOW_PEAK_DB = -25.0  # a frame this far below its recording's loudest frame holds no speech
GAP_SOURCES = 256  # recordings searched for quiet frames per split: enough variety, bounded time


def _level(rng: np.random.Generator) -> float:
    return float(10 ** (rng.uniform(*NOISE_LEVELS_DB) / 20))


def white_noise(samples: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise (samples,) of the given RMS, float32."""
    return (rms * rng.standard_normal(samples)).astype(np.float32)


def pink_noise(samples: int, rms: float, rng: np.random.Generator) -> np.ndarray:
    """Noise whose power falls as 1/f (samples,), scaled to the given RMS: white noise shaped in the spectrum."""
    spectrum = np.fft.rfft(rng.standard_normal(samples))
    frequency = np.arange(len(spectrum), dtype=np.float64)
    spectrum /= np.sqrt(np.maximum(frequency, 1.0))  # amplitude 1/sqrt(f): power 1/f; DC kept at bin 1's level
    noise = np.fft.irfft(spectrum, samples)
    return (rms * noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


def quiet_frames(clips: SeriesSet, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """The quiet frames of up to :data:`GAP_SOURCES` recordings of ``clips``, joined in a random order (samples,).

    A frame is quiet when it is :data:`GAP_BELOW_PEAK_DB` below its recording's loudest frame;
    only the recorded samples are searched, never the clip's zero padding.
    """
    width = max(1, round(GAP_FRAME_SECONDS * sample_rate))
    chosen = rng.permutation(len(clips))[:GAP_SOURCES]
    frames = []
    for index in chosen.tolist():
        wave = clips.values[index, 0, : int(clips.lengths[index])].numpy()
        count = len(wave) // width
        if count < 2:
            continue
        framed = wave[: count * width].reshape(count, width)
        energy = np.sqrt(np.mean(framed.astype(np.float64) ** 2, axis=1))
        quiet = energy <= energy.max() * 10 ** (GAP_BELOW_PEAK_DB / 20)
        frames += list(framed[quiet])
    if not frames:
        return np.zeros(0, np.float32)
    order = rng.permutation(len(frames))
    return np.concatenate([frames[i] for i in order]).astype(np.float32)


def background_clips(
    count: int,
    clip_samples: int,
    sample_rate: int,
    clips: SeriesSet,
    recordings: list[torch.Tensor],
    seed: int,
) -> tuple[np.ndarray, list[str]]:
    """``count`` background clips (count, clip_samples) and a source string for each (its kind and level).

    Args:
        count: Clips to make.
        clip_samples: Samples per clip.
        sample_rate: Of the clips, in Hz.
        clips: The split's recordings, searched for quiet frames.
        recordings: Background recordings (mono, at ``sample_rate``); none for no ``recording`` kind.
        seed: Seeds every draw.
    """
    rng = np.random.default_rng(seed)
    gaps = quiet_frames(clips, sample_rate, rng)
    long_enough = [r.numpy() for r in recordings if len(r) >= clip_samples]
    kinds = ["silence", "white", "pink"] + ["gaps"] * (len(gaps) > 0) + ["recording"] * bool(long_enough)
    values = np.zeros((count, clip_samples), np.float32)
    sources = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        if kind == "silence":
            rms = 10 ** (DITHER_DB / 20) * (i // len(kinds) % 2)  # every other one is digital silence
            values[i] = white_noise(clip_samples, rms, rng)
            what = f"silence@{DITHER_DB:g}dB" if rms else "silence"
        elif kind in ("white", "pink"):
            rms = _level(rng)
            values[i] = (white_noise if kind == "white" else pink_noise)(clip_samples, rms, rng)
            what = f"{kind}@{20 * np.log10(rms):.1f}dB"
        elif kind == "gaps":
            start = int(rng.integers(len(gaps)))
            values[i] = np.resize(np.roll(gaps, -start), clip_samples)  # wraps round when the gaps are short
            what = f"gaps@{start}"
        else:
            k = int(rng.integers(len(long_enough)))
            offset = int(rng.integers(len(long_enough[k]) - clip_samples + 1))
            scale = float(rng.uniform(0.1, 1.0))
            values[i] = scale * long_enough[k][offset : offset + clip_samples]
            what = f"recording@{k}:{offset / sample_rate:.2f}s*{scale:.3f}"
        sources.append(f"{BACKGROUND_CLASS}/{what}#{i}")
    return np.clip(values, -1.0, 1.0), sources


def _with_background(clips: SeriesSet, share: float, splits: AudioSplits, split: str) -> tuple[SeriesSet, int]:
    count = round(share * len(clips))
    fmt = splits.audio_format
    recordings = splits.noise if split == "train" else []
    noise, sources = background_clips(
        count, fmt.clip_samples, fmt.sample_rate, clips, recordings, seed=BACKGROUND_SEED + SPLITS.index(split)
    )
    classes = [*clips.classes, BACKGROUND_CLASS]
    grown = SeriesSet(
        torch.cat([clips.values, torch.from_numpy(noise)[:, None]]),
        torch.cat([clips.lengths, torch.full((count,), fmt.clip_samples, dtype=torch.long)]),
        torch.cat([clips.labels, torch.full((count,), len(clips.classes), dtype=torch.long)]),
        classes,
        clips.sources + sources,
    )
    return grown, count


def add_background(splits: AudioSplits, share: float) -> AudioSplits:
    """The splits with the class :data:`BACKGROUND_CLASS` added last: ``share`` x each split's clips of it.

    Args:
        splits: Audio splits as loaded.
        share: Background clips per clip of each split; 0.1 gives as many as one class of ten holds.

    Example:
        >>> grown = add_background(load_spoken_digits(), 0.1)  # doctest: +SKIP
        >>> grown.classes[-1]  # doctest: +SKIP
        '_background_'
    """
    if not 0 <= share <= 1:
        raise CnnkitError(f"background {share}: use a share from 0 to 1 (0.1 is the default, 0 turns it off)")
    if BACKGROUND_CLASS in splits.classes:
        raise CnnkitError(
            f"{splits.name} has a class named {BACKGROUND_CLASS}, the name of cnnkit's background class; "
            "rename that folder, or train with --background 0"
        )
    grown = {split: _with_background(getattr(splits, split), share, splits, split) for split in SPLITS}
    counts = ", ".join(f"{count} {split}" for split, (_, count) in grown.items())
    rule = f"{splits.split_rule}; {BACKGROUND_CLASS}: {share:g} x each split's clips ({counts}) of silence, noise, gaps"
    sets = {split: clips for split, (clips, _) in grown.items()}
    return dataclasses.replace(splits, **sets, split_rule=rule)

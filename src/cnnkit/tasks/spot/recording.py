"""A run's spotter, and the recordings it hears: WAV files decoded by the run's rule, or raw PCM from a pipe.

A WAV file of any rate, channel count and bit depth is mixed down and resampled by the run's
recorded clip rule (:class:`cnnkit.modelinfo.AudioPreprocessing`, through :mod:`cnnkit.data.wav`),
as training and evaluation decoded its clips. A stream is 16-bit little-endian mono PCM, read as it
arrives; at a rate other than the run's, each block is resampled on its own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from torch import nn

from cnnkit.checkpoint import load_model, resolve_checkpoint
from cnnkit.data.background import BACKGROUND_CLASS
from cnnkit.data.wav import AudioFormat, read_wav, resample, to_mono
from cnnkit.errors import CnnkitError
from cnnkit.tasks.spot.spotter import NON_KEYWORDS, Detection, SpotSettings, Spotter

STREAM_BLOCK_SECONDS = 0.1  # read from a pipe this much at a time: a detection waits at most a chunk more
RESAMPLED_BLOCK_SECONDS = 1.0  # blocks resampled alone: longer ones put their edges (zeros beyond) further apart


@dataclass
class SpotRun:
    """A run's model and what spotting needs of it: classes, window and rate, and its notes (one line each)."""

    model: nn.Module
    classes: list[str]
    window: int
    sample_rate: int
    notes: list[str]

    @property
    def keywords(self) -> list[str]:
        """The classes a detection can name: all but background, silence and other words."""
        return [name for name in self.classes if name not in NON_KEYWORDS]

    @property
    def window_seconds(self) -> float:
        return self.window / self.sample_rate

    def spotter(self, settings: SpotSettings, keep: bool = False) -> Spotter:
        return Spotter(self.model, self.classes, self.window, self.sample_rate, settings, keep)


def load_run(run: str | Path) -> SpotRun:
    """The audio run (a run directory or checkpoint) to spot with, on the CPU; any other run is refused."""
    model, info = load_model(run, "cpu")
    if info.preprocessing.modality != "audio":
        raise CnnkitError(
            f"{resolve_checkpoint(run)} was trained on {info.preprocessing.modality} data; cnnkit spot needs an audio "
            "run (cnnkit train --data spoken-digits, or a folder of WAV class folders)"
        )
    rule = info.preprocessing
    notes = []
    if not NON_KEYWORDS & set(info.classes):
        notes.append(
            f"this run has no {BACKGROUND_CLASS} class, so every window is some keyword and silence may fire; "
            "retrain it with cnnkit's default --background"
        )
    return SpotRun(model, info.classes, rule.clip_samples, rule.sample_rate, notes)


def read_recording(path: str | Path, run: SpotRun) -> tuple[np.ndarray, list[str]]:
    """A WAV file as mono float32 samples at the run's rate, and a note when it is shorter than one window."""
    samples, info = read_wav(path)
    mono = to_mono(samples, info.sample_rate, AudioFormat(run.sample_rate, run.window))
    notes = []
    if len(mono) < run.window:
        notes.append(
            f"{path} lasts {len(mono) / run.sample_rate:.2f} s, less than the run's {run.window_seconds:g} s window: "
            "padded with silence to one window"
        )
    return mono, notes


def pcm_blocks(stream: BinaryIO, sample_rate: int, run: SpotRun, say: Callable[[str], None]) -> Iterator[np.ndarray]:
    """Blocks of mono float32 samples at the run's rate from 16-bit little-endian mono PCM at ``sample_rate``."""
    seconds = STREAM_BLOCK_SECONDS if sample_rate == run.sample_rate else RESAMPLED_BLOCK_SECONDS
    size = 2 * max(1, round(seconds * sample_rate))
    while True:
        data = stream.read(size)
        if not data:
            return
        if len(data) % 2:
            say("warning: the stream ended in half a 16-bit sample; that byte is left out")
            data = data[:-1]
        block = np.frombuffer(data, "<i2").astype(np.float32) / 32768.0
        yield block if sample_rate == run.sample_rate else np.clip(resample(block, sample_rate, run.sample_rate), -1, 1)


def spot_blocks(spotter: Spotter, blocks: Iterator[np.ndarray]) -> Iterator[Detection]:
    """Detections as the blocks arrive, then those the end closes."""
    for block in blocks:
        yield from spotter.feed(block)
    yield from spotter.finish()

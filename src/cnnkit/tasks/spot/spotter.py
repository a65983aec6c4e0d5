"""Keyword spotting: a classifier of one-clip windows turned into keyword events in a recording of any length.

The waveform is cut into windows of the run's clip length every ``hop_seconds``; each window's
posteriors (:class:`cnnkit.tasks.spot.scores.WindowScorer`) are smoothed by a causal moving
average over ``smooth`` windows, so one window's fluke does not fire. An event opens when a
keyword (any class but the background one) tops the smoothed posteriors at ``threshold`` or
more, grows while it stays there, and is reported once when it falls: its label, its peak
score and where the word lies (the windows that fired all hold it, so it sits where they
overlap). After an event nothing opens for ``refractory_seconds``, so a word the windows see
twice is counted once.

:class:`Spotter` takes samples in blocks of any size (a file at once, or stdin as it arrives)
and scores them in chunks of ``chunk`` windows, always cut at the same places from the start,
so a stream and a file of the same samples give the same detections, to the last digit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from cnnkit.data.background import BACKGROUND_CLASS
from cnnkit.data.speech import SILENCE, UNKNOWN
from cnnkit.errors import CnnkitError
from cnnkit.tasks.spot.scores import WindowScorer, frame_hop

# Classes that name what is not a keyword, never reported: cnnkit's background class, and the standard
# speech-commands task's silence and other words (``--keywords``).
NON_KEYWORDS = frozenset({BACKGROUND_CLASS, SILENCE, UNKNOWN})


@dataclass(frozen=True)
class SpotSettings:
    """How windows become events.

    Args:
        threshold: Smoothed posterior an event needs. Defaults to 0.8.
        hop_seconds: Between window starts. Defaults to 0.1.
        smooth: Windows in the causal moving average of posteriors. Defaults to 3.
        refractory_seconds: After an event, how long no other opens. Defaults to 0.5.
        chunk: Windows scored at once (latency of a stream: ``chunk x hop`` seconds). Defaults to 16.
    """

    threshold: float = 0.8
    hop_seconds: float = 0.1
    smooth: int = 3
    refractory_seconds: float = 0.5
    chunk: int = 16

    def __post_init__(self) -> None:
        problems = [
            *(["--threshold must be in (0, 1]"] if not 0 < self.threshold <= 1 else []),
            *(["--hop must be > 0 seconds"] if not self.hop_seconds > 0 else []),
            *(["--smooth must be at least 1 window"] if self.smooth < 1 else []),
            *(["--refractory must be >= 0 seconds"] if not self.refractory_seconds >= 0 else []),
            *(["the chunk must be at least 1 window"] if self.chunk < 1 else []),
        ]
        if problems:
            raise CnnkitError("; ".join(problems))


@dataclass(frozen=True)
class Detection:
    """One spotted keyword: its class name, where it lies in seconds from the start, and its peak smoothed score."""

    label: str
    start: float
    end: float
    score: float

    def to_dict(self) -> dict:
        return {**asdict(self), "start": round(self.start, 2), "end": round(self.end, 2), "score": round(self.score, 4)}


class EventPicker:
    """Smoothed posteriors (N, K), window by window in order, to events (see the module docstring)."""

    def __init__(self, classes: list[str], settings: SpotSettings, window_seconds: float) -> None:
        self.classes, self.settings, self.window_seconds = classes, settings, window_seconds
        self.keywords = [i for i, name in enumerate(classes) if name not in NON_KEYWORDS]
        self.open: list | None = None  # [label index, first window, last window, peak score]
        self.quiet_until = -np.inf  # seconds: the refractory window's end

    def _where(self, first: int, last: int) -> tuple[float, float]:
        """(start, end) of the word: the overlap of the windows of smoothed rows first..last, else their union."""
        lag = (self.settings.smooth - 1) / 2  # a smoothed row is centred this many windows before its own
        hop, width = self.settings.hop_seconds, self.window_seconds
        start, end = (last - lag) * hop, (first - lag) * hop + width
        if start >= end:
            start, end = (first - lag) * hop, (last - lag) * hop + width
        return max(0.0, start), end

    def _close(self) -> Detection:
        label, first, last, peak = self.open
        self.open = None
        start, end = self._where(first, last)
        self.quiet_until = (last + 1) * self.settings.hop_seconds + self.settings.refractory_seconds
        return Detection(self.classes[label], start, end, peak)

    def push(self, smoothed: np.ndarray, first_index: int) -> list[Detection]:
        """Events closed by these rows (smoothed posteriors of windows ``first_index`` onwards)."""
        found = []
        keyword = smoothed[:, self.keywords]
        best, score = keyword.argmax(1), keyword.max(1)
        for offset in range(len(smoothed)):
            index, label, value = first_index + offset, self.keywords[int(best[offset])], float(score[offset])
            hit = value >= self.settings.threshold
            if self.open is not None:
                if hit and label == self.open[0]:
                    self.open[2], self.open[3] = index, max(self.open[3], value)
                    continue
                found.append(self._close())
            if hit and index * self.settings.hop_seconds >= self.quiet_until:
                self.open = [label, index, index, value]
        return found

    def finish(self) -> list[Detection]:
        return [self._close()] if self.open is not None else []


class Spotter:
    """Detections of keywords in a waveform fed block by block, at the run's rate.

    Args:
        model: The run's classifier of (B, 1, window) waveforms, in eval mode.
        classes: Its class names; those in :data:`NON_KEYWORDS` are never reported.
        window: Samples per window (the run's clip).
        sample_rate: Of the samples fed.
        settings: Threshold, hop, smoothing, refractory window and chunk.
        keep: Keep every window's smoothed posteriors (``posteriors``), for a DET curve. Defaults to False.

    Example:
        >>> spotter = Spotter(model, classes, 8000, 8000, SpotSettings())  # doctest: +SKIP
        >>> found = spotter.feed(samples) + spotter.finish()  # doctest: +SKIP
    """

    def __init__(
        self,
        model: nn.Module,
        classes: list[str],
        window: int,
        sample_rate: int,
        settings: SpotSettings,
        keep: bool = False,
    ) -> None:
        hop = max(1, round(settings.hop_seconds * sample_rate))
        if frames := frame_hop(model, window):  # whole feature frames, so windows can share them (scores.py)
            hop = max(frames, round(hop / frames) * frames)
        self.settings = replace(settings, hop_seconds=hop / sample_rate)  # the hop as it is taken, in seconds
        self.sample_rate, self.window = sample_rate, window
        self.scorer = WindowScorer(model, window, hop)
        self.picker = EventPicker(classes, self.settings, window / sample_rate)
        self.buffer = np.zeros(0, np.float32)  # samples from window ``self.scored`` on
        self.scored = 0  # windows scored so far
        self.received = 0  # samples fed so far
        self.recent = np.zeros((0, len(classes)))  # the last smooth - 1 raw posteriors, for the moving average
        self.keep = keep
        self.posteriors: list[np.ndarray] = []  # with ``keep``: every window's smoothed posteriors (N, K), in chunks

    @property
    def hop(self) -> int:
        return self.scorer.hop

    def feed(self, samples: np.ndarray) -> list[Detection]:
        """Detections closed by these samples (mono float32 in [-1, 1] at the run's rate)."""
        self.buffer = np.concatenate([self.buffer, np.asarray(samples, np.float32)])
        self.received += len(samples)
        chunk = self.settings.chunk
        ready = (len(self.buffer) - self.scorer.span(chunk)) // (chunk * self.hop) + 1  # whole chunks held
        return self._score(chunk, ready) if ready > 0 else []

    def finish(self) -> list[Detection]:
        """The detections left at the end: the last windows (zero-padded to whole windows) and an open event."""
        remaining, found = len(self.buffer), []
        if self.scored == 0 or remaining > self.window - self.hop:  # samples no scored window has covered
            count = max(1, -(-(remaining - self.window) // self.hop) + 1)  # windows reaching past the last sample
            padding = np.zeros(max(0, self.scorer.span(count) - remaining), np.float32)
            self.buffer = np.concatenate([self.buffer, padding])
            chunk = self.settings.chunk
            found += self._score(chunk, count // chunk) if count >= chunk else []
            found += self._score(count % chunk, 1) if count % chunk else []
        return found + self.picker.finish()

    def _score(self, count: int, chunks: int) -> list[Detection]:
        """Detections closed by the next ``chunks`` chunks of ``count`` windows, each smoothed and picked in turn."""
        found = []
        for posteriors in self.scorer.score_chunks(torch.from_numpy(self.buffer), count, chunks):
            found += self._pick(posteriors.numpy().astype(np.float64))  # (count, K)
            self.buffer = self.buffer[count * self.hop :]
        return found

    def _pick(self, raw: np.ndarray) -> list[Detection]:
        count = len(raw)
        joined = np.concatenate([self.recent, raw])
        sums = np.cumsum(np.pad(joined, ((1, 0), (0, 0))), axis=0)
        width = np.minimum(np.arange(len(self.recent) + 1, len(joined) + 1), self.settings.smooth)
        ends = np.arange(len(self.recent) + 1, len(joined) + 1)
        smoothed = (sums[ends] - sums[ends - width]) / width[:, None]  # (count, K): mean of the last `smooth` rows
        self.recent = joined[-(self.settings.smooth - 1) :] if self.settings.smooth > 1 else joined[:0]
        if self.keep:  # 44 bytes a window with 11 classes: 1.6 MB an hour at a 0.1 s hop
            self.posteriors.append(smoothed.astype(np.float32))
        found = self.picker.push(smoothed, self.scored)
        self.scored += count
        return found

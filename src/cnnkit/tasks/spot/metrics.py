"""How well keywords were spotted in a labelled recording: detection F1, misses, false alarms per hour, a DET curve.

The reference is a CSV file of ``label,start,end`` rows (seconds; a header row ``label,start,end``
is allowed). A detection is a hit when it has a reference word's label and its midpoint lies
within that word, widened by ``collar`` seconds on each side; each word is hit at most once
(best score first), and every other detection is a false alarm. A word no detection hits is a
miss. False alarms are counted per hour of the recording.

The DET (detection error tradeoff) curve repeats the event picking at many thresholds on the
same smoothed posteriors and plots the share of words missed against false alarms per hour.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.tasks.spot.spotter import Detection, EventPicker, SpotSettings

COLLAR_SECONDS = 0.5  # a 1 s window places a word to within about half of itself
DET_THRESHOLDS = np.round(np.concatenate([np.linspace(0.05, 0.9, 18), np.linspace(0.91, 0.99, 9)]), 3)


@dataclass(frozen=True)
class Word:
    """One labelled keyword of a reference recording, in seconds from its start."""

    label: str
    start: float
    end: float


@dataclass(frozen=True)
class SpotMetrics:
    """Detections scored against the reference words of one recording."""

    words: int
    hits: int
    misses: int
    false_alarms: int
    hours: float

    @property
    def f1(self) -> float:
        total = 2 * self.hits + self.misses + self.false_alarms
        return 2 * self.hits / total if total else 1.0

    @property
    def false_alarms_per_hour(self) -> float:
        return self.false_alarms / self.hours if self.hours else 0.0

    def to_dict(self) -> dict:
        return {
            "f1": round(self.f1, 4),
            "words": self.words,
            "hits": self.hits,
            "misses": self.misses,
            "false_alarms": self.false_alarms,
            "false_alarms_per_hour": round(self.false_alarms_per_hour, 2),
            "hours": round(self.hours, 4),
        }


def read_labels(path: str | Path, classes: Sequence[str]) -> list[Word]:
    """The reference words of a ``label,start,end`` CSV file, each one of ``classes``; a bad row is refused."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise CnnkitError(f"cannot read --labels {path}: {getattr(error, 'strerror', None) or error}") from None
    fix = "give a CSV file of label,start,end rows in seconds, e.g. 7,12.34,12.80"
    words = []
    for number, row in enumerate(csv.reader(text.splitlines()), 1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if number == 1 and [cell.strip().lower() for cell in row] == ["label", "start", "end"]:
            continue
        if len(row) != 3:
            raise CnnkitError(f"--labels {path} row {number} has {len(row)} field(s), not 3; {fix}")
        label, start, end = (cell.strip() for cell in row)
        try:
            begin, finish = float(start), float(end)
        except ValueError:
            raise CnnkitError(f"--labels {path} row {number}: {start!r} or {end!r} is not a number; {fix}") from None
        if not (math.isfinite(begin) and math.isfinite(finish)) or not 0 <= begin <= finish:
            raise CnnkitError(f"--labels {path} row {number}: need 0 <= start <= end (got {start}, {end}); {fix}")
        if label not in classes:
            raise CnnkitError(
                f"--labels {path} row {number}: {label!r} is not a keyword of the run ({', '.join(classes)})"
            )
        words.append(Word(label, begin, finish))
    if not words:
        raise CnnkitError(f"--labels {path} holds no words; {fix}")
    return words


def score_detections(
    detections: Sequence[Detection], words: Sequence[Word], seconds: float, collar: float = COLLAR_SECONDS
) -> SpotMetrics:
    """Hits, misses and false alarms of ``detections`` against ``words`` in a recording of ``seconds``."""
    taken = [False] * len(words)
    hits = 0
    for detection in sorted(detections, key=lambda d: -d.score):
        middle = (detection.start + detection.end) / 2
        for index, word in enumerate(words):
            inside = word.start - collar <= middle <= word.end + collar
            if not taken[index] and word.label == detection.label and inside:
                taken[index], hits = True, hits + 1
                break
    return SpotMetrics(len(words), hits, len(words) - hits, len(detections) - hits, seconds / 3600)


def det_curve(
    smoothed: np.ndarray, classes: list[str], settings: SpotSettings, window_seconds: float, words: Sequence[Word]
) -> list[tuple[float, SpotMetrics]]:
    """(threshold, metrics) at each of :data:`DET_THRESHOLDS`, from one recording's smoothed posteriors (N, K)."""
    seconds = (len(smoothed) - 1) * settings.hop_seconds + window_seconds
    points = []
    for threshold in DET_THRESHOLDS:
        picker = EventPicker(classes, replace(settings, threshold=float(threshold)), window_seconds)
        found = picker.push(smoothed, 0) + picker.finish()
        points.append((float(threshold), score_detections(found, words, seconds)))
    return points


def plot_det(points: list[tuple[float, SpotMetrics]], chosen: SpotMetrics, threshold: float, path: Path) -> None:
    """The DET curve as a PNG: words missed (%) against false alarms per hour (log scale), the threshold used marked."""
    from cnnkit.understand import figures

    plt = figures.pyplot()
    figure, axes = plt.subplots(figsize=(5, 4))
    floor = 0.1  # false alarms per hour drawn at this floor when there are none, so the log axis can show them
    alarms = [max(metrics.false_alarms_per_hour, floor) for _, metrics in points]
    missed = [100 * metrics.misses / max(metrics.words, 1) for _, metrics in points]
    axes.plot(alarms, missed, marker=".", label="thresholds 0.05-0.99")
    chosen_x = max(chosen.false_alarms_per_hour, floor)
    axes.plot(
        [chosen_x], [100 * chosen.misses / max(chosen.words, 1)], "o", color="red", label=f"threshold {threshold:g}"
    )
    axes.set_xscale("log")
    axes.set_xlabel(f"false alarms per hour (none drawn at {floor:g})")
    axes.set_ylabel("words missed (%)")
    axes.set_title(f"keyword spotting DET: F1 {chosen.f1:.3f} at {threshold:g}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figures.save(figure, path, dpi=100)

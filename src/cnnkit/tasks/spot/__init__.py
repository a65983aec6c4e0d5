"""Keyword spotting in long and live audio with an audio classification run (``cnnkit spot``).

A run trained on one-clip keywords, with its ``_background_`` class (:mod:`cnnkit.data.background`),
is slid over a recording of any length (:mod:`.scores`), its posteriors smoothed and turned into
one event per spoken keyword (:mod:`.spotter`); a WAV file or a raw PCM stream is decoded by the
run's own rule (:mod:`.recording`), and a labelled recording is scored by detection F1, misses,
false alarms per hour and a DET curve (:mod:`.metrics`). Spotting trains nothing: it is a use of a
classifier, so it plugs into no :class:`cnnkit.tasks.Task` seam.
"""

from cnnkit.tasks.spot.metrics import SpotMetrics, Word, det_curve, plot_det, read_labels, score_detections
from cnnkit.tasks.spot.recording import SpotRun, load_run, pcm_blocks, read_recording, spot_blocks
from cnnkit.tasks.spot.spotter import Detection, EventPicker, SpotSettings, Spotter

__all__ = [
    "Detection",
    "EventPicker",
    "SpotMetrics",
    "SpotRun",
    "SpotSettings",
    "Spotter",
    "Word",
    "det_curve",
    "load_run",
    "pcm_blocks",
    "plot_det",
    "read_labels",
    "read_recording",
    "score_detections",
    "spot_blocks",
]

"""The keyword-spotting command: ``cnnkit spot RUN AUDIO.wav`` (or ``--stream`` from stdin) prints each keyword once."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cnnkit.cli.flags import number_type
from cnnkit.config import COUNT, POSITIVE, Range
from cnnkit.errors import CnnkitError

STREAM_FORMAT = "raw 16-bit signed little-endian mono PCM (arecord -f S16_LE -c 1, sox -t raw -e signed -b 16 -c 1)"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add spot to the ``cnnkit`` parser."""
    spot = commands.add_parser(
        "spot",
        help="find spoken keywords in a long recording or a live stream with an audio run",
        description="Slide an audio run's window over a recording of any length and print each keyword heard once, "
        "with where it lies and its score. The WAV file (any rate, channels, PCM or float) is decoded by the run's "
        "clip rule. --stream reads " + STREAM_FORMAT + " from stdin and prints keywords as they are heard, e.g. "
        "`arecord -f S16_LE -c 1 -r 16000 | cnnkit spot RUN --stream --sample-rate 16000`. "
        "--labels scores a labelled recording (F1, misses, false alarms per hour, and a DET curve under --out).",
    )
    spot.add_argument("run", metavar="RUN", help="run directory or checkpoint of an audio run")
    spot.add_argument("audio", metavar="AUDIO.wav", nargs="?", help="the recording (leave out with --stream)")
    spot.add_argument(
        "--threshold", type=number_type(Range(float, 0, 1, low_open=True)), default=0.8,
        help="smoothed posterior a keyword needs (default: 0.8)",
    )  # fmt: skip
    spot.add_argument(
        "--json", action="store_true", help='one JSON line per keyword: {"label", "start", "end", "score"}'
    )
    spot.add_argument("--hop", type=number_type(POSITIVE), default=0.1, help="seconds between windows (default: 0.1)")
    spot.add_argument(
        "--smooth", type=number_type(COUNT), default=3, help="windows in the moving average of posteriors (default: 3)"
    )
    spot.add_argument(
        "--refractory", type=number_type(Range(float, 0)), default=0.5,
        help="seconds after a keyword in which no other is reported (default: 0.5)",
    )  # fmt: skip
    spot.add_argument("--stream", action="store_true", help=f"read {STREAM_FORMAT} from stdin")
    spot.add_argument(
        "--sample-rate", type=number_type(Range(int, 1000, 768_000)),
        help="with --stream: Hz of the PCM on stdin (default: the run's rate)",
    )  # fmt: skip
    spot.add_argument(
        "--labels", type=Path, metavar="CSV",
        help="reference words of the recording, CSV rows label,start,end in seconds: print F1, misses, false alarms",
    )  # fmt: skip
    spot.add_argument("--out", type=Path, help="with --labels: folder for det.png and spot.json")
    spot.add_argument("--threads", type=number_type(COUNT), help="CPU threads (default: PyTorch's)")


def _print(detection, as_json: bool) -> None:
    if as_json:
        print(json.dumps(detection.to_dict()), flush=True)
    else:
        print(f"{detection.start:8.2f}-{detection.end:.2f} s  {detection.label}  {detection.score:.3f}", flush=True)


def run_spot(args: argparse.Namespace) -> int:
    import torch

    from cnnkit.tasks.spot import SpotSettings, load_run, pcm_blocks, read_labels, read_recording, spot_blocks

    if args.stream == (args.audio is not None):
        raise CnnkitError("give either AUDIO.wav or --stream (PCM on stdin), not both or neither")
    if args.sample_rate is not None and not args.stream:
        raise CnnkitError("--sample-rate is for --stream; a WAV file's header gives its own rate")
    if args.stream and args.labels is not None:
        raise CnnkitError("--labels scores a recording; give AUDIO.wav instead of --stream")
    if args.out is not None and args.labels is None:
        raise CnnkitError("--out holds the DET curve of a labelled recording; give --labels too")
    settings = SpotSettings(args.threshold, args.hop, args.smooth, args.refractory)
    run = load_run(args.run)
    words = read_labels(args.labels, run.keywords) if args.labels is not None else None
    if args.threads:  # once the input is known good: a refused command leaves the process as it was
        torch.set_num_threads(args.threads)
    for note in run.notes:
        print(f"warning: {note}", file=sys.stderr)
    spotter = run.spotter(settings, keep=words is not None)
    if args.stream:
        blocks = pcm_blocks(
            sys.stdin.buffer, args.sample_rate or run.sample_rate, run, lambda line: print(line, file=sys.stderr)
        )
        for detection in spot_blocks(spotter, blocks):
            _print(detection, args.json)
        return 0
    samples, notes = read_recording(args.audio, run)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    found = list(spot_blocks(spotter, iter([samples])))
    for detection in found:
        _print(detection, args.json)
    if words is not None:
        _score(args, run, spotter, found, words, len(samples) / run.sample_rate)
    return 0


def _score(args: argparse.Namespace, run, spotter, found: list, words: list, seconds: float) -> None:
    """Print the metrics of a labelled recording; with --out, write det.png and spot.json there."""
    from dataclasses import asdict

    import numpy as np

    from cnnkit.tasks.spot import det_curve, plot_det, score_detections

    metrics = score_detections(found, words, seconds)
    if args.json:
        print(json.dumps({"metrics": metrics.to_dict()}))
    else:
        print(
            f"F1 {metrics.f1:.3f}: {metrics.hits} of {metrics.words} words found, {metrics.misses} missed, "
            f"{metrics.false_alarms} false alarm(s) ({metrics.false_alarms_per_hour:.1f} per hour of {seconds:.0f} s)"
        )
    if args.out is None:
        return
    args.out.mkdir(parents=True, exist_ok=True)
    points = det_curve(np.concatenate(spotter.posteriors), run.classes, spotter.settings, run.window_seconds, words)
    plot_det(points, metrics, args.threshold, args.out / "det.png")
    record = {
        "metrics": metrics.to_dict(),
        "settings": asdict(spotter.settings),
        "det": [{"threshold": t, **m.to_dict()} for t, m in points],
        "detections": [d.to_dict() for d in found],
    }
    (args.out / "spot.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'det.png'} and {args.out / 'spot.json'}", file=sys.stderr)


COMMANDS = {"spot": run_spot}

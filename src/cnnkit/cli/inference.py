"""The commands that run a trained model on its inputs: predict (labels) and explain (what the model looks at).

predict takes images, series files or WAV recordings, whichever the model reads.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from cnnkit.cli import detect as cli_detect
from cnnkit.cli.flags import number_type
from cnnkit.cli.inputs import expand_inputs, report_unreadable
from cnnkit.config import COUNT, Range
from cnnkit.errors import CnnkitError

PREVIEW_ROWS = 20
PREDICTIONS = "predictions.csv"
DEFAULT_CSV = f"runs/{PREDICTIONS}"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add predict and explain to the ``cnnkit`` parser."""
    predict = commands.add_parser(
        "predict",
        help="top-k labels for images or folders of images (or time series files, or WAV files and folders)",
        description="Predict labels; a folder's predictions also go to one CSV file (--out).",
    )
    predict.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    predict.add_argument(
        "inputs",
        nargs="+",
        metavar="IMAGE_OR_FOLDER",
        help="images or folders; series runs: series files; audio runs: WAV files or folders",
    )
    predict.add_argument("--top-k", type=number_type(COUNT), default=3, help="labels to show per image (default: 3)")
    predict.add_argument(
        "--json", action="store_true", help="print one JSON record per image (and write a CSV only if --out is given)"
    )
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    predict.add_argument(
        "--out",
        metavar="CSV",
        help=f"CSV file (or folder for {PREDICTIONS}) of the predictions, replaced each time (default: a "
        f"folder's go to {DEFAULT_CSV}, single files' and --json's nowhere)",
    )
    predict.add_argument("--pretrained", action="store_true", help="MODEL is an architecture: use its ImageNet weights")
    predict.add_argument(
        "--threshold",
        type=number_type(Range(float, 0, 1)),
        help="detection runs: lowest box score reported (default: 0.25)",
    )
    predict.add_argument(
        "--max-boxes", type=number_type(COUNT), help="detection runs: most boxes per image (default: 100)"
    )
    predict.add_argument("--weights", help="MODEL is an architecture: its ImageNet weights from this local file")
    predict.add_argument(
        "--draw", metavar="DIR", help="detection runs and exports: write each image with its boxes drawn to DIR"
    )

    explain = commands.add_parser(
        "explain",
        help="Grad-CAM, saliency, feature maps and filters for images; Grad-CAM over time for series and audio",
        description="Show what a model looks at: heatmaps, feature maps and filters, tied together in index.html. "
        "Series and audio runs: per class the most confident right and wrong test series, Grad-CAM over time.",
    )
    explain.add_argument("checkpoint", metavar="RUN_OR_CHECKPOINT")
    explain.add_argument(
        "inputs", nargs="*", metavar="IMAGE_OR_FOLDER", help="images or folders (series and audio runs: --data)"
    )
    explain.add_argument(
        "--top-k", type=number_type(COUNT), default=3, help="classes to explain per image (default: 3)"
    )
    explain.add_argument("--class", dest="class_name", help="explain this class instead of the top-k")
    explain.add_argument("--layer", help="target layer name (default: the last convolution)")
    explain.add_argument("--data", help="series and audio runs: labelled data (default: the data the run trained on)")
    explain.add_argument(
        "--split", default="test", choices=("train", "val", "test"), help="series and audio runs: split (default: test)"
    )
    explain.add_argument("--device", default="auto", help="auto, cpu, cuda or mps (default: auto)")
    explain.add_argument("--out", default="runs", help="folder that holds the output directory (default: runs)")
    explain.add_argument("--name", help="output directory name under --out (default: explain, explain2, ...)")


def _series_files(inputs: Sequence[str]) -> list[Path]:
    """The series files to predict, as given: a missing file or a folder is refused in one line."""
    paths = [Path(item).expanduser() for item in inputs]
    for path in paths:
        if not path.is_file():
            raise CnnkitError(f"series file not found: {path}; give .tsv, .ts, .csv or .npy files (not folders)")
    return paths


def run_predict(args: argparse.Namespace) -> int:
    from cnnkit.deploy.detector import ImageDetector
    from cnnkit.deploy.load import load_predictor

    classifier = load_predictor(args.checkpoint, args.device, args.pretrained, args.weights)
    if isinstance(classifier, ImageDetector):  # a detector's run or export predicts boxes (cli/detect.py)
        return cli_detect.run_predict_detection(args, classifier, *expand_inputs(args.inputs))
    if args.threshold is not None or args.max_boxes is not None or args.draw is not None:
        raise CnnkitError(f"--threshold, --max-boxes and --draw are for detectors; {args.checkpoint} classifies")
    modality = classifier.preprocessing.modality
    if modality == "series":  # every series of each file, named file:row
        predictions, saw_folder = classifier.predict_series(_series_files(args.inputs), args.top_k), False
    elif modality == "audio":  # each WAV decoded by the run's clip rule; a recording longer than a clip is cropped
        from cnnkit.data.wav import WAV_EXTENSIONS

        paths, saw_folder = expand_inputs(args.inputs, WAV_EXTENSIONS, "WAV file")
        predictions, failures, notes = classifier.predict_clips(paths, args.top_k)
        report_unreadable(paths, failures, len(predictions), "WAV file")
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    else:
        paths, saw_folder = expand_inputs(args.inputs)
        predictions, failures = classifier.predict_files(paths, args.top_k)
        report_unreadable(paths, failures, len(predictions))
    if args.json:
        for prediction in predictions:
            print(json.dumps(prediction.to_dict()))
    else:
        for prediction in predictions[: PREVIEW_ROWS if saw_folder else None]:
            ranked = "  ".join(f"{label} ({p:.1%})" for label, p in zip(prediction.labels, prediction.probabilities))
            print(f"{prediction.source}  {ranked}")
        if saw_folder and len(predictions) > PREVIEW_ROWS:
            print(f"... {len(predictions) - PREVIEW_ROWS} more")
    if args.out or (saw_folder and not args.json):
        csv_path = _write_predictions(predictions, Path(args.out or DEFAULT_CSV).expanduser())
        print(f"{len(predictions)} predictions written to {csv_path}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _write_predictions(predictions: list, target: Path) -> Path:
    """One CSV of top-k labels and probabilities, replaced whole (never half-written); a folder gets predictions.csv."""
    path = target if target.suffix.lower() == ".csv" else target / PREDICTIONS
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    k = len(predictions[0].labels)
    try:
        with open(partial, "w", newline="") as stream:
            writer = csv.writer(stream)
            writer.writerow(
                ["path", *[f"{column}_{rank}" for rank in range(1, k + 1) for column in ("label", "probability")]]
            )
            for prediction in predictions:
                ranked = zip(prediction.labels, (f"{p:.6f}" for p in prediction.probabilities))
                writer.writerow([prediction.source, *[value for pair in ranked for value in pair]])
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def run_explain(args: argparse.Namespace) -> int:
    from cnnkit.deploy.load import load
    from cnnkit.rundir import new_run_dir
    from cnnkit.understand.explain import explain_images
    from cnnkit.understand.signals import explain_signals

    classifier = load(args.checkpoint, device=args.device)
    modality = classifier.preprocessing.modality
    if modality != "image" and args.inputs:
        raise CnnkitError(
            f"{args.checkpoint} reads {'time series' if modality == 'series' else 'audio'}: explain draws labelled "
            "ones, right and wrong per class; give them with --data (default: the run's own test split), not files"
        )
    if modality == "image" and (args.data or not args.inputs):
        raise CnnkitError(f"{args.checkpoint} reads images: give images or folders to explain (--data is for signals)")
    if modality != "image":
        data, _ = classifier.labelled_images(args.data, args.split)
    else:
        paths, _ = expand_inputs(args.inputs)
    existed = args.name is not None and (Path(args.out).expanduser() / args.name).exists()
    out_dir = new_run_dir(args.out, args.name, "explain")
    try:
        if modality != "image":
            explanation = explain_signals(classifier, data, out_dir, args.class_name, args.layer)
        else:
            explanation = explain_images(classifier, paths, out_dir, args.top_k, args.class_name, args.layer)
    except BaseException:  # a bad --class or --layer, Ctrl-C: leave no half-written folder behind
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    for path, reason in explanation.skipped:
        print(f"warning: skipped {path}: {reason}", file=sys.stderr)
    items = {"series": "series", "audio": "clip(s)"}.get(modality, "image(s)")
    print(f"{len(explanation.images)} {items} explained (layer {explanation.layer}); open {explanation.page}")
    return 0


COMMANDS = {"predict": run_predict, "explain": run_explain}

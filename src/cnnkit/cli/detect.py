"""``evaluate`` and ``predict`` on a detection run: COCO mAP of a split, and boxes per image.

:func:`cnnkit.cli.main.run_evaluate` and :func:`cnnkit.cli.inference.run_predict` hand a
detector's run (or checkpoint) to these, so one command name serves both tasks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cnnkit.cli.inputs import report_unreadable
from cnnkit.errors import CnnkitError

if TYPE_CHECKING:
    from cnnkit.deploy.detector import ImageDetector

PREVIEW_ROWS = 20


def run_evaluate_detection(args: argparse.Namespace) -> int:
    """COCO mAP, mAP@0.5 and per-class AP of ``args.checkpoint`` on ``--split`` of ``--data``."""
    from cnnkit.tasks.detect.evaluate import evaluate_run

    if args.report:
        raise CnnkitError(
            f"--report writes a classifier's galleries and Grad-CAM; {args.checkpoint} is a detector: leave it out"
        )
    metrics, count, skipped = evaluate_run(args.checkpoint, args.data, args.split, args.device)
    for item in skipped:
        print(f"warning: skipped {item.path}: {item.reason}", file=sys.stderr)
    summary = metrics.to_dict()
    if args.json:
        print(json.dumps({"split": args.split, "images": count, **summary}))
        return 0
    print(f"mAP@[.5:.95] {summary['map']:.4f}  mAP@0.5 {summary['map50']:.4f}  on {count} {args.split} images")
    for name, values in summary["per_class"].items():
        shown = "no boxes" if values["ap"] < 0 else f"AP {values['ap']:.4f}  AP@0.5 {values['ap50']:.4f}"
        print(f"  {name:<20} {shown}  ({values['targets']} boxes)")
    return 0


def run_predict_detection(
    args: argparse.Namespace, detector: ImageDetector, paths: list[Path], saw_folder: bool
) -> int:
    """Boxes, labels and scores per image, in original pixels; one JSON record per image with ``--json``.

    ``detector`` is a run's or an export's (:func:`cnnkit.deploy.load.load_predictor`); with ``--draw DIR``
    each image is also written there with its boxes drawn.
    """
    from cnnkit.tasks.detect.records import MAX_BOXES, THRESHOLD

    if args.pretrained or args.weights:
        raise CnnkitError(f"--pretrained and --weights name an architecture; {args.checkpoint} is a trained detector")
    threshold = THRESHOLD if args.threshold is None else args.threshold
    predictions, failures = detector.predict_files(paths, threshold, args.max_boxes or MAX_BOXES)
    report_unreadable(paths, failures, len(predictions))
    if args.draw is not None:
        from cnnkit.deploy.drawing import write_drawings

        written = write_drawings(predictions, detector.classes, args.draw)
        print(f"{len(written)} image(s) with their boxes drawn in {args.draw}", file=sys.stderr if args.json else None)
    if args.json:
        for prediction in predictions:
            print(json.dumps(prediction.to_dict()))
        return 0
    for prediction in predictions[: PREVIEW_ROWS if saw_folder else None]:
        found = "  ".join(
            f"{label} {score:.2f} [{', '.join(f'{v:g}' for v in box)}]"
            for label, score, box in zip(prediction.labels, prediction.scores, prediction.boxes)
        )
        print(f"{prediction.source}  {found or 'no boxes'}")
    if saw_folder and len(predictions) > PREVIEW_ROWS:
        print(f"... {len(predictions) - PREVIEW_ROWS} more (--json prints them all)")
    return 0


def run_check_detection(args: argparse.Namespace) -> int:
    """Every annotation problem of a detection dataset, its unreadable and duplicate images, boxes per class and size.

    Exits 1 when more than ``--max-bad-share`` of the images cannot be decoded, as the image-folder check does.
    """
    from cnnkit.data.detection_check import scan_detection

    if args.near_duplicates or args.model is not None or args.threshold is not None:
        raise CnnkitError(f"--near-duplicates is for image folders so far; {args.data} holds detection annotations")
    report = scan_detection(args.data)
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(report.summary())
        for kind, lines in report.problems.items():
            for line in lines:
                print(f"{kind}: {line}")
        for item in report.bad:
            print(f"bad: {item.path}: {item.reason}")
        for warning in report.warnings:
            print(f"warning: {warning}")
    return 1 if len(report.bad) / max(1, sum(report.images.values())) > args.max_bad_share else 0

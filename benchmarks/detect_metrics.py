"""COCO mAP: cnnkit's vectorised ``evaluate_detections`` against pycocotools' ``COCOeval``, on the same detections.

Builds a COCO-val-sized synthetic set (by default 5,000 images, 80 classes, up to 20 boxes an
image from 4 to 300 px; a detector that finds 80% of them with jittered boxes, duplicates
and false alarms), then times both implementations (pycocotools: ``evaluate`` +
``accumulate``, the COCO objects built beforehand and not timed) over ``--repeats`` runs,
printing mean ± std seconds and the largest difference between their precision arrays
(it should be 0). Needs ``pip install pycocotools`` (in the ``test`` extra).

    python benchmarks/detect_metrics.py                                    # COCO-val sized (minutes)
    python benchmarks/detect_metrics.py --images 100 --classes 5 --repeats 1   # a check in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from cnnkit.tasks.detect.coco import to_coco
from cnnkit.tasks.detect.metrics import evaluate_detections


def synthetic(images: int, classes: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(predictions, targets) of a noisy detector on random boxes, as ``evaluate_detections`` takes them."""
    rng = np.random.default_rng(seed)
    predictions, targets = [], []
    for _ in range(images):
        count = int(rng.integers(0, 21))
        corner = rng.uniform(0, 600, (count, 2))
        boxes = np.concatenate([corner, corner + rng.uniform(4, 300, (count, 2))], 1).astype(np.float32)
        labels = rng.integers(0, classes, count)
        targets.append({"boxes": boxes, "labels": labels, "crowd": rng.random(count) < 0.01})
        found = rng.random(count) < 0.8
        sides = np.tile(boxes[found, 2:] - boxes[found, :2], 2)
        hits = boxes[found] + rng.normal(0, 0.1, sides.shape) * sides
        twice = hits[: len(hits) // 4]
        corner = rng.uniform(0, 600, (int(rng.integers(0, 6)), 2))
        alarms = np.concatenate([corner, corner + rng.uniform(4, 100, corner.shape)], 1)
        hit_labels = labels[found]
        predictions.append(
            {
                "boxes": np.concatenate([hits, twice, alarms]).astype(np.float32),
                "labels": np.concatenate([hit_labels, hit_labels[: len(twice)], rng.integers(0, classes, len(alarms))]),
                "scores": rng.random(len(hits) + len(twice) + len(alarms)),
            }
        )
    return predictions, targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    classes = [f"class{k}" for k in range(args.classes)]
    predictions, targets = synthetic(args.images, args.classes, args.seed)
    dataset, results = to_coco(predictions, targets, classes)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found = truth.loadRes(results)
    ours, reference = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        metrics = evaluate_detections(predictions, targets, classes)
        ours.append(time.perf_counter() - start)
        evaluator = COCOeval(truth, found, "bbox")
        start = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        reference.append(time.perf_counter() - start)
    difference = np.abs(metrics.precision - evaluator.eval["precision"][..., -1]).max()
    boxes = len(dataset["annotations"])
    print(f"{args.images} images, {args.classes} classes, {len(results)} detections, {boxes} boxes")
    print(f"cnnkit evaluate_detections: {np.mean(ours):.2f} ± {np.std(ours):.2f} s   mAP {metrics.map:.4f}")
    print(f"pycocotools COCOeval:       {np.mean(reference):.2f} ± {np.std(reference):.2f} s")
    print(f"speed-up {np.mean(reference) / np.mean(ours):.1f}x; largest precision difference {difference:.2g}")


if __name__ == "__main__":
    main()

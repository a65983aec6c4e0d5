"""COCO detection metrics checked value for value against pycocotools' COCOeval, the reference implementation."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.coco import to_coco
from cnnkit.tasks.detect.metrics import IOU_THRESHOLDS, RECALL_THRESHOLDS, evaluate_detections

CLASSES = ["car", "sign", "person"]


def _coco_eval(predictions, targets, num_classes, max_detections=100):
    """pycocotools' COCOeval on the same records: its eval dict (precision (T, R, K, A, M), ...) and stats (12,)."""
    coco = pytest.importorskip("pycocotools.coco", reason="pycocotools is the reference (pip install -e .[test])")
    cocoeval = pytest.importorskip("pycocotools.cocoeval")
    dataset, results = to_coco(predictions, targets, CLASSES[:num_classes], [(640, 480)] * len(targets))
    with contextlib.redirect_stdout(io.StringIO()):
        truth = coco.COCO()
        truth.dataset = dataset
        truth.createIndex()
        if results:
            found = truth.loadRes(results)
        else:  # loadRes cannot read an empty list
            found = coco.COCO()
            found.dataset = dataset | {"annotations": []}
            found.createIndex()
        evaluator = cocoeval.COCOeval(truth, found, "bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.eval, evaluator.stats


def _assert_agrees(predictions, targets, num_classes=3, max_detections=100):
    ours = evaluate_detections(predictions, targets, CLASSES[:num_classes], max_detections=max_detections)
    reference, stats = _coco_eval(predictions, targets, num_classes, max_detections)
    np.testing.assert_allclose(ours.precision, reference["precision"][..., -1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.scores, reference["scores"][..., -1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.recall, reference["recall"][..., -1], rtol=0, atol=1e-12)
    if max_detections == 100:  # COCOeval's summary reads maxDets=100 only
        summary = ours.to_dict()
        mine = [summary[key] for key in ("map", "map50", "map75", "map_small", "map_medium", "map_large", "mar100")]
        np.testing.assert_allclose(mine, [*stats[:6], stats[8]], rtol=0, atol=1e-9)
    return ours


def _scene(rng, num_images, num_classes=3, max_boxes=8, side=(8, 200), crowd=0.0):
    """Random ground truth and a noisy detector's output: jittered hits, misses, duplicates, false alarms."""
    predictions, targets = [], []
    for _ in range(num_images):
        count = int(rng.integers(0, max_boxes + 1))
        xy = rng.uniform(0, 400, (count, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(*side, (count, 2))], 1).astype(np.float32)
        labels = rng.integers(0, num_classes, count)
        targets.append({"boxes": boxes, "labels": labels, "crowd": rng.random(count) < crowd})
        seen = rng.random(count) < 0.8
        jitter = rng.normal(0, 0.08, (count, 4)) * np.tile(boxes[:, 2:] - boxes[:, :2], 2)
        hits = (boxes + jitter)[seen]
        twice = hits[rng.random(len(hits)) < 0.3]
        xy = rng.uniform(0, 400, (int(rng.integers(0, 4)), 2))
        alarms = np.concatenate([xy, xy + rng.uniform(*side, (len(xy), 2))], 1)
        found = np.concatenate([hits, twice, alarms]).astype(np.float32)
        found_labels = np.concatenate(
            [labels[seen], labels[seen][: len(twice)], rng.integers(0, num_classes, len(alarms))]
        )
        predictions.append({"boxes": found, "labels": found_labels, "scores": rng.random(len(found)).round(2)})
    return predictions, targets


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_evaluate_detections_agrees_with_cocoeval_on_random_scenes(seed):
    rng = np.random.default_rng(seed)
    predictions, targets = _scene(rng, num_images=25, crowd=0.1 if seed % 2 else 0.0)
    ours = _assert_agrees(predictions, targets)
    assert 0 < ours.map < ours.map50 < 1


def test_evaluate_detections_agrees_with_cocoeval_on_tiny_scenes():
    # 40 scenes of 1-3 images with 0-3 boxes: empty images, lone boxes, one class missing, integer ties.
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        predictions, targets = _scene(rng, num_images=int(rng.integers(1, 4)), max_boxes=3, crowd=0.2)
        for record in predictions + targets:
            record["boxes"] = record["boxes"].round()
        _assert_agrees(predictions, targets)


def test_evaluate_detections_agrees_with_cocoeval_on_small_boxes():
    rng = np.random.default_rng(7)
    predictions, targets = _scene(rng, num_images=20, side=(2, 40))
    ours = _assert_agrees(predictions, targets)
    assert ours.average_precision(area="small") > -1  # boxes of 2-40 px are mostly COCO-small


def test_evaluate_detections_perfect_predictions_score_one():
    rng = np.random.default_rng(3)
    _, targets = _scene(rng, num_images=10)
    predictions = [{"boxes": t["boxes"], "labels": t["labels"], "scores": np.ones(len(t["labels"]))} for t in targets]
    ours = _assert_agrees(predictions, targets)
    assert ours.map == pytest.approx(1.0) and ours.map50 == pytest.approx(1.0)


def test_evaluate_detections_no_predictions_score_zero():
    rng = np.random.default_rng(4)
    _, targets = _scene(rng, num_images=6)
    empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, int), "scores": np.zeros(0)}
    ours = _assert_agrees([empty] * len(targets), targets)
    assert ours.map == 0 and ours.map50 == 0


def test_evaluate_detections_duplicates_are_false_positives():
    truth = [{"boxes": np.array([[10, 10, 50, 50], [100, 100, 160, 150]], np.float32), "labels": np.array([0, 0])}]
    boxes = np.array([[10, 10, 50, 50], [11, 10, 50, 51], [100, 100, 160, 150]], np.float32)
    found = [{"boxes": boxes, "labels": np.array([0, 0, 0]), "scores": np.array([0.9, 0.8, 0.7])}]
    ours = _assert_agrees(found, truth, num_classes=1)
    # hit, duplicate, hit: precision 2/3 at recall 1, 1 up to recall 0.5 -> (51 + 50 * 2/3) / 101
    assert ours.map50 == pytest.approx((51 + 50 * (2 / (3 + np.spacing(1)))) / 101)


def test_evaluate_detections_class_without_ground_truth_is_left_out():
    truth = [{"boxes": np.array([[0, 0, 40, 40]], np.float32), "labels": np.array([0])}]
    hit = {"boxes": np.array([[0, 0, 40, 40]], np.float32), "labels": np.array([0]), "scores": np.array([0.5])}
    stray = {"boxes": np.array([[0, 0, 40, 40], [200, 200, 240, 260]], np.float32), "labels": np.array([0, 2])}
    ours = _assert_agrees([stray | {"scores": np.array([0.5, 0.9])}], truth)
    assert ours.map == pytest.approx(1.0) and ours.per_class()["person"] == -1 and ours.per_class()["sign"] == -1
    assert evaluate_detections([hit], truth, CLASSES).map == ours.map


def test_evaluate_detections_ties_follow_cocoeval():
    # Integer boxes and two score levels: equal IoUs and equal scores everywhere.
    rng = np.random.default_rng(11)
    predictions, targets = [], []
    for _ in range(12):
        boxes = (rng.integers(0, 6, (6, 2)) * 10).astype(np.float32)
        boxes = np.concatenate([boxes, boxes + 20], 1)
        targets.append({"boxes": boxes, "labels": rng.integers(0, 2, 6), "difficult": rng.random(6) < 0.2})
        shift = (rng.integers(-1, 2, (8, 4)) * 5).astype(np.float32)
        found = boxes[rng.integers(0, 6, 8)] + shift
        predictions.append({"boxes": found, "labels": rng.integers(0, 2, 8), "scores": rng.integers(1, 3, 8) / 2})
    _assert_agrees(predictions, targets, num_classes=2)


def test_evaluate_detections_keeps_max_detections_per_image_and_class():
    rng = np.random.default_rng(5)
    predictions, targets = _scene(rng, num_images=4, max_boxes=30)
    for prediction in predictions:  # 40 extra low-scoring alarms per image
        alarms = np.tile(np.array([[600, 400, 620, 420]], np.float32), (40, 1))
        prediction["boxes"] = np.concatenate([prediction["boxes"], alarms])
        prediction["labels"] = np.concatenate([prediction["labels"], np.zeros(40, int)])
        prediction["scores"] = np.concatenate([prediction["scores"], np.full(40, 0.001)])
    capped = _assert_agrees(predictions, targets, max_detections=10)
    assert capped.map != evaluate_detections(predictions, targets, CLASSES).map


def test_evaluate_detections_ignores_detections_on_crowds():
    truth = [{"boxes": np.array([[0, 0, 40, 40], [100, 0, 300, 200]], np.float32), "labels": np.array([0, 0])}]
    truth[0]["crowd"] = np.array([False, True])
    boxes = np.array([[0, 0, 40, 40], [110, 10, 150, 50], [200, 100, 260, 160]], np.float32)
    found = [{"boxes": boxes, "labels": np.zeros(3, int), "scores": np.array([0.5, 0.9, 0.8])}]
    ours = _assert_agrees(found, truth, num_classes=1)
    assert ours.map == pytest.approx(1.0) and ours.num_targets.tolist() == [
        1
    ]  # the two boxes inside the crowd count for nothing


def test_evaluate_detections_reads_tensors_and_returns_curves():
    truth = [{"boxes": torch.tensor([[10.0, 10, 50, 50]]), "labels": torch.tensor([1])}]
    found = [{"boxes": torch.tensor([[10.0, 10, 50, 52]]), "labels": torch.tensor([1]), "scores": torch.tensor([0.7])}]
    metrics = evaluate_detections(found, truth, CLASSES, area_ranges=False)
    recall, precision = metrics.curve("sign")
    assert recall is RECALL_THRESHOLDS and precision == pytest.approx(np.ones(101))
    assert metrics.precision.shape == (len(IOU_THRESHOLDS), 101, 3, 1) and "map_small" not in metrics.to_dict()
    assert metrics.to_dict()["per_class"]["sign"] == {"ap": metrics.map, "ap50": pytest.approx(1.0), "targets": 1}


def test_to_coco_writes_xywh_boxes_crowds_and_one_based_ids():
    truth = [{"boxes": [[10, 20, 50, 60]], "labels": [1], "difficult": [True]}, {"boxes": [], "labels": []}]
    found = [{"boxes": [], "labels": [], "scores": []}, {"boxes": [[1, 2, 4, 8]], "labels": [0], "scores": [0.5]}]
    dataset, results = to_coco(found, truth, ["car", "sign"], [(64, 48), (32, 32)])
    assert dataset["images"][0] == {"id": 1, "width": 64, "height": 48}
    assert dataset["categories"] == [{"id": 1, "name": "car"}, {"id": 2, "name": "sign"}]
    assert dataset["annotations"] == [
        {"id": 1, "image_id": 1, "category_id": 2, "bbox": [10, 20, 40, 40], "area": 1600, "iscrowd": 1}
    ]
    assert results == [{"image_id": 2, "category_id": 1, "bbox": [1, 2, 3, 6], "score": 0.5}]


@pytest.mark.parametrize(
    ("prediction", "message"),
    [
        ({"boxes": [[0, 0, 1, 1]], "labels": [0]}, "no scores"),
        ({"boxes": [[0, 0, 1]], "labels": [0], "scores": [1]}, "need \\(N, 4\\)"),
        ({"boxes": [[0, 0, 1, 1]], "labels": [3], "scores": [1]}, "label 3, outside the 3 classes"),
        ({"boxes": [[0, 0, float("nan"), 1]], "labels": [0], "scores": [1]}, "not a finite number"),
    ],
)
def test_evaluate_detections_rejects_bad_records(prediction, message):
    truth = [{"boxes": [[0, 0, 1, 1]], "labels": [0]}]
    with pytest.raises(CnnkitError, match=message):
        evaluate_detections([prediction], truth, CLASSES)
    with pytest.raises(CnnkitError, match="2 prediction records for 1 images"):
        evaluate_detections([prediction, prediction], truth, CLASSES)


@pytest.mark.slow
def test_evaluate_detections_agrees_with_cocoeval_on_many_images_in_small_blocks(monkeypatch):
    monkeypatch.setattr("cnnkit.tasks.detect.metrics.BLOCK_VALUES", 64)  # many padded blocks per size bucket
    rng = np.random.default_rng(21)
    predictions, targets = _scene(rng, num_images=300, max_boxes=12, crowd=0.05)
    _assert_agrees(predictions, targets)

"""COCO's detection metrics, computed the way ``pycocotools.COCOeval`` computes them, without its per-box loops.

For every class and IoU threshold 0.50:0.05:0.95, each image's detections (best score first,
at most ``max_detections`` per image and class, COCO's ``maxDets=100``) are matched greedily
to the unmatched ground-truth box of highest IoU; precision is then read at 101 recall points
(0, 0.01, ..., 1) after taking its running maximum from the right (COCO's interpolation),
and AP is the mean of those 101 values. mAP@[.5:.95] averages AP over the ten thresholds and
the classes, mAP@0.5 uses the first threshold only.

The rules follow ``COCOeval`` to the tie (``tests/test_detect_metrics.py`` checks every
precision value against it):

- **Crowd and difficult boxes** (COCO's ``iscrowd``, Pascal VOC's ``difficult``) are both
  treated as COCO treats ``iscrowd``: they are not counted as objects to find; a detection's
  IoU with one is its intersection over the *detection's* area; any number of detections may
  match one, and those detections count neither as hits nor as false positives. A detection
  matches a regular box if it can and falls back to an ignored one only if not.
- **A class with no (non-ignored) ground truth** has no AP (-1, COCO's marker) and is left out
  of every mean, whatever was detected for it; mAP is -1 only when no class has ground truth.
- **Area ranges** (small < 32², medium 32²-96², large > 96² pixels, bounds inclusive as
  COCO has them) use the box area ``w * h``; COCO's own annotations use the segment's area,
  so numbers on COCO itself differ slightly from the official ones. A ground-truth box
  outside the range is ignored, and so is a detection outside it that matches nothing.
- Equal scores are ranked by image order, then by the order the detector gave them
  (COCO's stable merge sort); equal IoUs go to the later ground-truth box, as in COCO.

Matching is vectorised over images, classes and IoU thresholds at once: (image, class)
groups of similar size are padded into blocks, and one loop step handles the n-th best
detection of every group in the block, so the Python loop runs at most ``max_detections``
steps per block however many images there are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError

# Exactly COCOeval.Params' arrays (the same linspace calls), so thresholds compare equal.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)  # (T,) = 10
RECALL_THRESHOLDS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)  # (R,) = 101
AREA_RANGES = {"all": (0.0, 1e5**2), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, 1e5**2)}

BLOCK_VALUES = 1 << 22  # padded (group, detection, box) values matched in one block, whatever the dataset size


@dataclass
class DetectionMetrics:
    """Precision and recall of a detector, per IoU threshold, recall point, class and area range.

    Arrays hold -1 where a class has no ground truth in an area range (COCO's marker).

    Attributes:
        classes: The K class names, in label order.
        areas: The area ranges evaluated, ``all`` first (keys of :data:`AREA_RANGES`).
        precision: (T, R, K, A) interpolated precision at each IoU threshold and recall point.
        scores: (T, R, K, A) the detection score at which each recall point is reached (0 if never).
        recall: (T, K, A) the largest recall reached.
        num_targets: (K,) ground-truth boxes that count (crowd and difficult left out) per class.
        max_detections: Detections kept per image and class.
    """

    classes: list[str]
    areas: tuple[str, ...]
    precision: np.ndarray
    scores: np.ndarray
    recall: np.ndarray
    num_targets: np.ndarray
    max_detections: int

    def average_precision(self, iou: float | None = None, area: str = "all") -> float:
        """mAP over the classes with ground truth: at one IoU threshold, or averaged over all ten (None)."""
        return _mean_valid(self.precision[self._thresholds(iou), :, :, self._area(area)])

    def average_recall(self, area: str = "all") -> float:
        """COCO's AR: the largest recall, averaged over the IoU thresholds and the classes with ground truth."""
        return _mean_valid(self.recall[:, :, self._area(area)])

    @property
    def map(self) -> float:
        """mAP@[.5:.95], COCO's headline number."""
        return self.average_precision()

    @property
    def map50(self) -> float:
        """mAP at IoU 0.5, Pascal VOC's threshold."""
        return self.average_precision(0.5)

    def per_class(self, iou: float | None = None) -> dict[str, float]:
        """AP of each class (over all areas), -1 for a class with no ground truth."""
        chosen = self.precision[self._thresholds(iou), :, :, 0]  # (t, R, K)
        return {name: _mean_valid(chosen[:, :, k]) for k, name in enumerate(self.classes)}

    def curve(self, label: int | str, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
        """(recall points (R,), interpolated precision (R,)) of one class at one IoU threshold, for plotting.

        Example:
            >>> recall, precision = metrics.curve("car")
            >>> plt.plot(recall, precision)
        """
        k = self.classes.index(label) if isinstance(label, str) else label
        return RECALL_THRESHOLDS, self.precision[self._thresholds(iou), :, k, 0][0]

    def to_dict(self) -> dict[str, Any]:
        """The summary numbers as JSON-ready floats: ``map``, ``map50``, ``map75``, ``mar100``, per area and class."""
        summary: dict[str, Any] = {
            "map": self.map,
            "map50": self.map50,
            "map75": self.average_precision(0.75),
            f"mar{self.max_detections}": self.average_recall(),
        }
        for area in self.areas[1:]:
            summary[f"map_{area}"] = self.average_precision(area=area)
        ap, ap50 = self.per_class(), self.per_class(0.5)
        summary["per_class"] = {
            name: {"ap": ap[name], "ap50": ap50[name], "targets": int(count)}
            for name, count in zip(self.classes, self.num_targets)
        }
        return summary

    def _thresholds(self, iou: float | None) -> slice | np.ndarray:
        if iou is None:
            return slice(None)
        chosen = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
        if not len(chosen):
            raise ValueError(f"IoU threshold {iou} is not one of {IOU_THRESHOLDS.round(2).tolist()}")
        return chosen

    def _area(self, area: str) -> int:
        if area not in self.areas:
            raise ValueError(f"area range {area!r} was not evaluated; evaluated: {', '.join(self.areas)}")
        return self.areas.index(area)


def evaluate_detections(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    max_detections: int = 100,
    area_ranges: bool = True,
) -> DetectionMetrics:
    """COCO's precision, recall and mAP of detections against ground truth, image by image.

    Args:
        predictions: Per image ``{"boxes": (N, 4), "scores": (N,), "labels": (N,)}``; boxes
            ``[x1, y1, x2, y2]`` in pixels (:mod:`cnnkit.data.boxes`' convention), labels indices
            into ``classes``. NumPy arrays, lists or tensors.
        targets: Per image, in the same order, ``{"boxes": (M, 4), "labels": (M,)}`` and optionally
            ``"crowd"`` and ``"difficult"`` (M,) flags, as :class:`cnnkit.data.boxes.BoxedImage` holds them.
        classes: The class names; their number fixes K.
        max_detections: Highest-scoring detections kept per image and class (COCO's ``maxDets``). Defaults to 100.
        area_ranges: Also evaluate COCO's small, medium and large objects. Defaults to True.

    Returns:
        The :class:`DetectionMetrics`; ``.map`` and ``.map50`` are the headline numbers.

    Raises:
        CnnkitError: When the two lists differ in length, or a record lacks a key or has
            misshapen arrays, non-finite values or labels outside ``classes``.

    Example:
        >>> truth = [{"boxes": [[10, 10, 50, 50]], "labels": [0]}]
        >>> found = [{"boxes": [[10, 10, 50, 50]], "scores": [0.9], "labels": [0]}]
        >>> round(evaluate_detections(found, truth, ["car"]).map, 6)  # COCO's tp / (tp + fp + eps): 1 - 2e-16
        1.0
    """
    if len(predictions) != len(targets):
        raise CnnkitError(f"{len(predictions)} prediction records for {len(targets)} images; give one per image")
    num_classes = len(classes)
    areas = tuple(AREA_RANGES) if area_ranges else ("all",)
    p_image, p_box, p_label, p_score, p_order = _flatten(predictions, "prediction", num_classes)
    g_image, g_box, g_label, g_crowd, _ = _flatten(targets, "target", num_classes)

    # Detections sorted by (image, class, score down, detector order): rank is the place within the group.
    sort = np.lexsort((p_order, -p_score, p_label, p_image))
    p_group = (p_image * num_classes + p_label)[sort]
    rank = _place_in_group(p_group)
    keep = sort[rank < max_detections]
    p_image, p_box, p_label, p_score = p_image[keep], p_box[keep], p_label[keep], p_score[keep]
    p_group, rank = p_group[rank < max_detections], rank[rank < max_detections]
    g_group = g_image * num_classes + g_label

    groups = np.unique(np.concatenate([p_group, g_group]))
    p_unit, g_unit = np.searchsorted(groups, p_group), np.searchsorted(groups, g_group)
    p_area, g_area = _area(p_box), _area(g_box)

    shape = (len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), num_classes, len(areas))
    precision, scores = np.full(shape, -1.0), np.full(shape, -1.0)
    recall = np.full((shape[0], num_classes, len(areas)), -1.0)
    # Accumulation order: per class, score down, then image, then rank (COCO's concatenation, stably sorted).
    ranked = np.lexsort((rank, p_image, -p_score, p_label))
    class_start = np.searchsorted(p_label[ranked], np.arange(num_classes + 1))
    num_targets = np.zeros(num_classes, dtype=np.int64)
    for a, area in enumerate(areas):
        low, high = AREA_RANGES[area]
        g_ignore = g_crowd | (g_area < low) | (g_area > high)
        matched, ignored = _match(p_unit, rank, p_box, g_unit, g_box, g_crowd, g_ignore, len(groups))
        ignored |= ~matched & ((p_area < low) | (p_area > high))[None, :]
        counted = np.bincount(g_label[~g_ignore], minlength=num_classes)
        if a == 0:
            num_targets = counted
        for k in np.flatnonzero(counted):
            chosen = ranked[class_start[k] : class_start[k + 1]]
            precision[:, :, k, a], scores[:, :, k, a], recall[:, k, a] = _accumulate(
                matched[:, chosen], ignored[:, chosen], p_score[chosen], counted[k]
            )
    return DetectionMetrics(list(classes), areas, precision, scores, recall, num_targets, max_detections)


def _flatten(records: Sequence[Mapping[str, Any]], kind: str, num_classes: int) -> tuple[np.ndarray, ...]:
    """All images' boxes in one array: (image (N,), boxes (N, 4), labels (N,), scores or crowd (N,), order (N,))."""
    images, boxes, labels, extra, order = [], [], [], [], []
    for i, record in enumerate(records):
        where = f"{kind} record {i}"
        needed = ("boxes", "labels", "scores") if kind == "prediction" else ("boxes", "labels")
        if missing := [key for key in needed if key not in record]:
            raise CnnkitError(f"{where} has no {', '.join(missing)}; a {kind} needs {', '.join(needed)}")
        box = _array(record["boxes"], np.float64)
        box = box.reshape(-1, 4) if box.size == 0 else box
        label = _array(record["labels"], np.int64).reshape(-1)
        if box.ndim != 2 or box.shape[1] != 4 or len(label) != len(box):
            raise CnnkitError(f"{where}: boxes of shape {box.shape} and {len(label)} labels; need (N, 4) and (N,)")
        if not np.isfinite(box).all():
            raise CnnkitError(f"{where} has a box coordinate that is not a finite number")
        if len(outside := label[(label < 0) | (label >= num_classes)]):
            raise CnnkitError(f"{where} has label {outside[0]}, outside the {num_classes} classes 0-{num_classes - 1}")
        if kind == "prediction":
            value = _array(record["scores"], np.float64).reshape(-1)
            if len(value) != len(box) or not np.isfinite(value).all():
                raise CnnkitError(f"{where}: {len(value)} scores for {len(box)} boxes, or a score that is not finite")
        else:
            value = np.zeros(len(box), dtype=bool)
            for flag in ("crowd", "difficult"):
                if record.get(flag) is not None:
                    value = value | _array(record[flag], bool).reshape(-1)
            if len(value) != len(box):
                raise CnnkitError(f"{where}: crowd or difficult flags do not match its {len(box)} boxes")
        images.append(np.full(len(box), i, dtype=np.int64))
        boxes.append(box)
        labels.append(label)
        extra.append(value)
        order.append(np.arange(len(box)))
    if not records:
        extra_type = np.float64 if kind == "prediction" else bool
        return np.zeros(0, np.int64), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, extra_type), np.zeros(0, int)
    return tuple(np.concatenate(parts) for parts in (images, boxes, labels, extra, order))


def _array(value: Any, dtype: type) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, read without importing torch here
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _area(box: np.ndarray) -> np.ndarray:
    return (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])


def _mean_valid(values: np.ndarray) -> float:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else -1.0


def _place_in_group(group: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted (N,) array."""
    first = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, bool)
    start = np.maximum.accumulate(np.where(first, np.arange(len(group)), 0)) if len(group) else first
    return np.arange(len(group)) - start


def _spans(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For runs ``[start, start + count)``: (every index, which run it is in, its place in the run)."""
    row = np.repeat(np.arange(len(counts)), counts)
    column = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.repeat(starts, counts) + column, row, column


def _coco_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """IoU (C, D, G) of detections (C, D, 4) and ground truth (C, G, 4); intersection over detection area for crowds.

    The operations are pycocotools' ``bbIou``'s, in float64 and in its order, so ties fall the same way.
    """
    width = np.minimum(dt[:, :, None, 2], gt[:, None, :, 2]) - np.maximum(dt[:, :, None, 0], gt[:, None, :, 0])
    height = np.minimum(dt[:, :, None, 3], gt[:, None, :, 3]) - np.maximum(dt[:, :, None, 1], gt[:, None, :, 1])
    inter = np.where((width > 0) & (height > 0), width * height, 0.0)
    dt_area, gt_area = _area(dt.reshape(-1, 4)).reshape(dt.shape[:2]), _area(gt.reshape(-1, 4)).reshape(gt.shape[:2])
    union = np.where(crowd[:, None, :], dt_area[:, :, None], dt_area[:, :, None] + gt_area[:, None, :] - inter)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _match(p_unit, rank, p_box, g_unit, g_box, g_crowd, g_ignore, num_units) -> tuple[np.ndarray, np.ndarray]:
    """COCO's greedy matching in every (image, class) group: (matched (T, P), matched an ignored box (T, P))."""
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)
    num_t = len(thresholds)
    matched = np.zeros((num_t, len(p_unit)), dtype=bool)
    ignored = np.zeros_like(matched)
    # Ground truth of a group in COCO's order: regular boxes first, ignored ones last, each in input order.
    g_sorted = np.lexsort((np.arange(len(g_unit)), g_ignore, g_unit))
    p_count, g_count = np.bincount(p_unit, minlength=num_units), np.bincount(g_unit, minlength=num_units)
    p_first, g_first = np.cumsum(p_count) - p_count, np.cumsum(g_count) - g_count  # detections are sorted by unit
    width_p, width_g = _next_power_of_two(p_count), _next_power_of_two(g_count)
    buckets = np.unique(np.stack([width_p, width_g], 1)[(p_count > 0) & (g_count > 0)], axis=0)
    for pad_d, pad_g in buckets:
        units = np.flatnonzero((width_p == pad_d) & (width_g == pad_g) & (p_count > 0) & (g_count > 0))
        block = max(1, BLOCK_VALUES // (int(pad_d) * int(pad_g) * num_t))
        for start in range(0, len(units), block):
            chosen = units[start : start + block]
            p_index, p_row, _ = _spans(p_first[chosen], p_count[chosen])
            g_place, g_row, g_column = _spans(g_first[chosen], g_count[chosen])
            g_index = g_sorted[g_place]
            dt = np.zeros((len(chosen), pad_d, 4))
            dt[p_row, rank[p_index]] = p_box[p_index]
            gt = np.zeros((len(chosen), pad_g, 4))
            gt[g_row, g_column] = g_box[g_index]
            real = np.zeros((len(chosen), pad_g), dtype=bool)
            real[g_row, g_column] = True
            crowd, ignore = np.zeros_like(real), np.zeros_like(real)
            crowd[g_row, g_column], ignore[g_row, g_column] = g_crowd[g_index], g_ignore[g_index]
            hit, hit_ignored = _match_block(_coco_iou(dt, gt, crowd), real, crowd, ignore, thresholds, p_count[chosen])
            matched[:, p_index] = hit[p_row, :, rank[p_index]].T
            ignored[:, p_index] = hit_ignored[p_row, :, rank[p_index]].T
    return matched, ignored


def _match_block(iou, real, crowd, ignore, thresholds, count) -> tuple[np.ndarray, np.ndarray]:
    """Match detections (C, D) to ground truth (C, G) best score first: (matched (C, T, D), to an ignored box)."""
    blocks, pad_d, pad_g = iou.shape
    num_t = len(thresholds)
    taken = np.zeros((blocks, num_t, pad_g), dtype=bool)
    matched = np.zeros((blocks, num_t, pad_d), dtype=bool)
    to_ignored = np.zeros_like(matched)
    rows, levels = np.arange(blocks)[:, None], np.arange(num_t)[None, :]
    free = real[:, None, :] & (~taken | crowd[:, None, :])
    for d in range(int(count.max())):
        overlap = iou[:, None, d, :]  # (C, 1, G)
        candidate = free & (overlap >= thresholds[None, :, None]) & (d < count)[:, None, None]  # (C, T, G)
        # A regular box if any qualifies, else an ignored one (COCO stops at the first ignored box once matched).
        regular = (candidate & ~ignore[:, None, :]).any(-1, keepdims=True)
        candidate &= ignore[:, None, :] != regular
        best = np.where(candidate, overlap, -1.0).max(-1, keepdims=True)
        winner = pad_g - 1 - (candidate & (overlap == best))[..., ::-1].argmax(-1)  # the last of equal IoUs
        found = candidate.any(-1)  # (C, T)
        taken[rows, levels, winner] |= found
        free = real[:, None, :] & (~taken | crowd[:, None, :])
        matched[:, :, d] = found
        to_ignored[:, :, d] = found & ignore[rows, winner]
    return matched, to_ignored


def _next_power_of_two(count: np.ndarray) -> np.ndarray:
    return np.where(count > 0, 1 << np.ceil(np.log2(np.maximum(count, 1))).astype(np.int64), 0)


def _accumulate(matched, ignored, score, num_targets) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class's (precision (T, R), score (T, R), recall (T,)) from its detections (T, N), best score first."""
    hits = np.cumsum(matched & ~ignored, axis=1).astype(float)  # (T, N)
    misses = np.cumsum(~matched & ~ignored, axis=1).astype(float)
    recall = hits / num_targets
    precision = hits / (misses + hits + np.spacing(1))
    precision = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]  # the best precision at any higher recall
    count = precision.shape[1]
    at_recall = np.zeros((len(precision), len(RECALL_THRESHOLDS)))
    score_at = np.zeros_like(at_recall)
    if count:
        for t in range(len(precision)):
            place = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")  # (R,)
            reached = place < count
            at_recall[t, reached] = precision[t, place[reached]]
            score_at[t, reached] = score[place[reached]]
    return at_recall, score_at, recall[:, -1] if count else np.zeros(len(precision))

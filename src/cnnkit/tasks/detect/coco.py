"""Detections and ground truth in COCO's JSON formats, for pycocotools or a COCO results file.

The inverse of the reader in :mod:`cnnkit.data.coco`: the per-image records that
:func:`cnnkit.tasks.detect.metrics.evaluate_detections` takes become COCO's dataset dict
(``images``, ``categories``, ``annotations``) and its results list (one
``{"image_id", "category_id", "bbox", "score"}`` per detection), with boxes as
``[x, y, width, height]``. Image ids are 1..N in record order and category ids 1..K in
class order; crowd and difficult boxes are written as ``iscrowd: 1``, which is how
:mod:`cnnkit.tasks.detect.metrics` treats both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cnnkit.errors import CnnkitError
from cnnkit.tasks.detect.metrics import _flatten


def to_coco(
    predictions: Sequence[Mapping[str, Any]],
    targets: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    sizes: Sequence[tuple[int, int]] | None = None,
) -> tuple[dict[str, list[dict]], list[dict]]:
    """COCO's (ground-truth dataset dict, results list) for the records ``evaluate_detections`` takes.

    Args:
        predictions: Per image ``{"boxes", "scores", "labels"}``.
        targets: Per image ``{"boxes", "labels"}``, optionally ``"crowd"`` and ``"difficult"``.
        classes: The class names, written as the categories.
        sizes: Each image's (width, height), written into ``images``; None writes 0 for both. Defaults to None.

    Example:
        >>> dataset, results = to_coco(predictions, targets, ["car"])
        >>> ground_truth = pycocotools.coco.COCO(); ground_truth.dataset = dataset; ground_truth.createIndex()
        >>> found = ground_truth.loadRes(results)
    """
    if len(predictions) != len(targets):
        raise CnnkitError(f"{len(predictions)} prediction records for {len(targets)} images; give one per image")
    sizes = sizes or [(0, 0)] * len(targets)
    images = [{"id": i + 1, "width": int(w), "height": int(h)} for i, (w, h) in enumerate(sizes)]
    categories = [{"id": k + 1, "name": name} for k, name in enumerate(classes)]
    image, box, label, crowd, _ = _flatten(targets, "target", len(classes))
    size = np.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1)
    annotations = [
        {"id": n + 1, "image_id": i + 1, "category_id": k + 1, "bbox": [x, y, w, h], "area": w * h, "iscrowd": c}
        for n, (i, k, (x, y), (w, h), c) in enumerate(
            zip(image.tolist(), label.tolist(), box[:, :2].tolist(), size.tolist(), crowd.astype(int).tolist())
        )
    ]
    image, box, label, score, _ = _flatten(predictions, "prediction", len(classes))
    size = np.stack([box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]], 1)
    results = [
        {"image_id": i + 1, "category_id": k + 1, "bbox": [x, y, w, h], "score": s}
        for i, k, (x, y), (w, h), s in zip(
            image.tolist(), label.tolist(), box[:, :2].tolist(), size.tolist(), score.tolist()
        )
    ]
    return {"images": images, "categories": categories, "annotations": annotations}, results

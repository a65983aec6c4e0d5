"""What a detection says about one image: its boxes, labels and scores, in the image's original pixels.

``cnnkit predict RUN images --json`` prints one record per image,
``{"path": ..., "boxes": [{"label": ..., "score": ..., "box": [x1, y1, x2, y2]}, ...]}``,
best score first; the boxes follow :mod:`cnnkit.data.boxes`' convention (continuous
pixels of the upright original image), so they can be drawn on the file as it is. No
PyTorch here: a run (:class:`cnnkit.deploy.torch_runtime.TorchDetector`) and its ONNX
export (:class:`cnnkit.deploy.onnx_detector.OnnxDetector`) make the same records.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

THRESHOLD = 0.25  # lowest score predict reports by default: evaluation keeps 0.05 for mAP's tail, a reader wants fewer
MAX_BOXES = 100  # boxes per image, at most (every detector keeps 100, COCO's maxDets)


@dataclass
class BoxPrediction:
    """One image's detections: ``boxes`` (N, 4) xyxy in original pixels, ``scores`` (N,), class ``labels`` (N,)."""

    source: str
    boxes: list[list[float]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "path": self.source,
            "boxes": [
                {"label": label, "score": score, "box": box}
                for label, score, box in zip(self.labels, self.scores, self.boxes)
            ],
        }


def rank_boxes(
    detection: dict[str, np.ndarray], classes: Sequence[str], source: str, threshold: float, max_boxes: int
) -> BoxPrediction:
    """Detections scoring ``threshold`` or more, best first (ties keep the detector's order), ``max_boxes`` at most."""
    scores = np.asarray(detection["scores"], dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    order = order[scores[order] >= threshold][:max_boxes]
    return BoxPrediction(
        source,
        [[round(float(v), 2) for v in box] for box in detection["boxes"][order]],
        [float(scores[i]) for i in order],
        [classes[int(detection["labels"][i])] for i in order],
    )

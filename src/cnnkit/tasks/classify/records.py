"""What a classification says about one image: its ranked labels and their probabilities.

No PyTorch here: ONNX Runtime-only prediction ranks with NumPy through the same code as a
checkpoint, so both name the same labels for the same file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Prediction:
    """Ranked labels and probabilities for one image."""

    source: str
    labels: list[str]
    probabilities: list[float]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict:
        return {"path": self.source, "labels": self.labels, "probabilities": self.probabilities}


def rank(probabilities: np.ndarray, classes: Sequence[str], sources: Sequence[str], top_k: int) -> list[Prediction]:
    """One :class:`Prediction` per row of ``probabilities`` (N, K), named by ``sources``: the top ``top_k`` labels.

    Ties keep the class order (a stable sort), so a prediction never depends on the runtime.
    """
    k = max(1, min(top_k, len(classes)))
    ranked = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        Prediction(source, [classes[j] for j in order], [float(p) for p in row[order]])
        for source, order, row in zip(sources, ranked, probabilities)
    ]

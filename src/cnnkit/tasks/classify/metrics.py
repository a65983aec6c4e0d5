"""Pure functions from predictions and targets to the numbers users read."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

ABSENT_NAMES = 10  # absent classes named in the terminal report (an ImageNet model has 1,000)


def confusion_matrix(predictions: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (K, K): rows are true classes, columns predicted classes."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass
class ClassReport:
    name: str
    precision: float
    recall: float
    f1: float
    support: int


def per_class_report(confusion: torch.Tensor, classes: list[str]) -> list[ClassReport]:
    """Precision, recall and F1 per class from a confusion matrix; 0 where undefined."""
    true_positive = confusion.diag().double()
    predicted = confusion.sum(0).double()
    actual = confusion.sum(1).double()
    precision = torch.where(predicted > 0, true_positive / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, true_positive / actual.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return [
        ClassReport(name, float(p), float(r), float(f), int(s))
        for name, p, r, f, s in zip(classes, precision, recall, f1, actual)
    ]


@dataclass
class EvalResult:
    """The outcome of evaluating a model on one set of labelled images."""

    loss: float
    accuracy: float
    confusion: list[list[int]]
    per_class: list[ClassReport]
    classes: list[str]

    @property
    def count(self) -> int:
        return sum(map(sum, self.confusion))

    @property
    def present(self) -> list[bool]:
        """Per class: whether the data holds it or the model predicted it (scikit-learn's labels for averaging)."""
        predicted = [sum(column) for column in zip(*self.confusion)]
        return [report.support > 0 or count > 0 for report, count in zip(self.per_class, predicted)]

    @property
    def macro_f1(self) -> float:
        """Mean F1 over the :attr:`present` classes; NaN when none is.

        Data holding a few of the model's classes is not scored down by the absent ones,
        whose F1 is 0 by definition (as scikit-learn's ``f1_score(average="macro")``).
        """
        scores = [report.f1 for report, present in zip(self.per_class, self.present) if present]
        return sum(scores) / len(scores) if scores else math.nan

    @property
    def absent(self) -> list[str]:
        """Classes neither in the data nor predicted: left out of :attr:`macro_f1` and the table of :meth:`format`."""
        return [name for name, present in zip(self.classes, self.present) if not present]

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "count": self.count,
            "macro_f1": self.macro_f1,
            "absent_classes": self.absent,
            "classes": self.classes,
            "per_class": [asdict(report) for report in self.per_class],
            "confusion": self.confusion,
        }

    def format(self) -> str:
        """A per-class table and the confusion matrix, for the terminal."""
        width = max(8, *(len(name) for name in self.classes))
        lines = [
            f"accuracy {self.accuracy:.2%} on {self.count} images   loss {self.loss:.4f}",
            "",
            f"{'class':<{width}}  precision  recall     f1  support",
        ]
        for report, present in zip(self.per_class, self.present):
            if present:
                lines.append(
                    f"{report.name:<{width}}  {report.precision:9.3f}  {report.recall:6.3f}  {report.f1:5.3f}"
                    f"  {report.support:7d}"
                )
        lines.append(f"{'macro F1':<{width}}  {'':9}  {'':6}  {self.macro_f1:5.3f}")
        if self.absent:
            names = ", ".join(self.absent[:ABSENT_NAMES]) + (", ..." if len(self.absent) > ABSENT_NAMES else "")
            lines.append(
                f"({len(self.absent)} of the model's {len(self.classes)} classes are absent from the data and were "
                f"never predicted, so they are left out of the table and macro F1: {names})"
            )
        lines += ["", "confusion matrix (rows: true, columns: predicted)"]
        cell = max(4, len(str(max(max(row) for row in self.confusion))) + 1)
        short = [name[: cell - 1] for name in self.classes]
        lines.append(" " * width + "".join(f"{name:>{cell}}" for name in short))
        for name, row in zip(self.classes, self.confusion):
            lines.append(f"{name:<{width}}" + "".join(f"{count:>{cell}}" for count in row))
        return "\n".join(lines)

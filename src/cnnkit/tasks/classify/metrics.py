"""Pure functions from predictions and targets to the numbers users read."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


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

    def to_dict(self) -> dict:
        return {
            "loss": self.loss,
            "accuracy": self.accuracy,
            "count": self.count,
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
        for report in self.per_class:
            lines.append(
                f"{report.name:<{width}}  {report.precision:9.3f}  {report.recall:6.3f}  {report.f1:5.3f}"
                f"  {report.support:7d}"
            )
        macro_f1 = sum(r.f1 for r in self.per_class) / max(1, len(self.per_class))
        lines += [
            f"{'macro F1':<{width}}  {'':9}  {'':6}  {macro_f1:5.3f}",
            "",
            "confusion matrix (rows: true, columns: predicted)",
        ]
        cell = max(4, len(str(max(max(row) for row in self.confusion))) + 1)
        short = [name[: cell - 1] for name in self.classes]
        lines.append(" " * width + "".join(f"{name:>{cell}}" for name in short))
        for name, row in zip(self.classes, self.confusion):
            lines.append(f"{name:<{width}}" + "".join(f"{count:>{cell}}" for count in row))
        return "\n".join(lines)

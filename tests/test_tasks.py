"""The Task protocol and the classification task: loss, batch score, best-epoch order, prediction records."""

import subprocess
import sys

import pytest
import torch
from torch import nn

from cnnkit.tasks import monitor_score
from cnnkit.tasks.classify import ClassifyTask


def test_classify_task_loss_matches_weighted_smoothed_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 2, 1, 0])
    weights = torch.tensor([1.0, 2.0, 0.5])
    task = ClassifyTask(["a", "b", "c"], weights, label_smoothing=0.1)
    expected = nn.functional.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1)
    assert torch.equal(task.loss(logits, labels), expected)
    assert task.score_batch(logits, labels).item() == (logits.argmax(1) == labels).sum().item()


def test_monitor_score_prefers_accuracy_then_lower_loss_and_never_nan():
    monitor = ClassifyTask(["a"]).monitor
    better = monitor_score({"val_acc": 0.9, "val_loss": 0.4}, monitor)
    tied_but_lower_loss = monitor_score({"val_acc": 0.9, "val_loss": 0.3}, monitor)
    worse = monitor_score({"val_acc": 0.8, "val_loss": 0.1}, monitor)
    assert tied_but_lower_loss > better > worse
    assert monitor_score({"val_acc": float("nan"), "val_loss": 0.1}, monitor) is None


def test_classify_task_records_rank_labels_by_probability():
    task = ClassifyTask(["cat", "dog", "fox"])
    probabilities = torch.tensor([[0.0, 2.0, 1.0], [1.0, 1.0, 0.0]]).softmax(1).numpy()
    records = task.records(probabilities, ["a.png", "b.png"], top_k=2)
    assert [record.labels for record in records] == [["dog", "fox"], ["cat", "dog"]]  # a tie keeps class order
    assert records[0].source == "a.png" and records[0].label == "dog"
    assert records[0].probabilities == pytest.approx([probabilities[0, 1], probabilities[0, 2]])


def test_tasks_package_imports_without_torch():
    code = "import sys, cnnkit.tasks, cnnkit.tasks.classify; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

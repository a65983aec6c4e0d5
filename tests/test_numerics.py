"""Numerical faults: NaN/inf steps stop (or are skipped and counted); gradient clipping; reproducible runs."""

import json
import math

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.data import ImageSet
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.safeload import load_tensors
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.training.loop import StepSettings, train_one_epoch
from cnnkit.training.optim import Optimisation
from cnnkit.training.resume import read_state
from cnnkit.training.runlog import StepLog

SETTINGS = {"data": "digits", "epochs": 1, "batch_size": 128, "seed": 4, "verbose": False}


class PoisonedLoss(nn.CrossEntropyLoss):
    """Cross-entropy that returns NaN on chosen calls, as a diverging model would."""

    poisoned = frozenset()

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, logits, labels):
        self.calls += 1
        loss = super().forward(logits, labels)
        return loss * math.nan if self.calls in self.poisoned else loss


pytestmark = pytest.mark.usefixtures("one_thread")


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    monkeypatch.setattr(PoisonedLoss, "poisoned", frozenset({6}))
    monkeypatch.setattr(nn, "CrossEntropyLoss", PoisonedLoss)
    with pytest.raises(CnnkitError, match=r"stopped at step 6 \(epoch 1\): loss nan.*Lower --lr \(now 0\.003\)"):
        # fp32 as asked: auto's bf16 would repeat the step in fp32 and go on
        cnnkit.train(out=str(tmp_path), name="nan", save_every=2, precision="fp32", **SETTINGS)
    state = read_state(tmp_path / "nan")  # validated: finite weights only
    assert state.progress.step == 4
    assert len((tmp_path / "nan" / "steps.csv").read_text().splitlines()) == 1 + 5


@pytest.mark.slow
def test_skip_option_skips_and_counts_nonfinite_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(PoisonedLoss, "poisoned", frozenset({3, 7}))
    monkeypatch.setattr(nn, "CrossEntropyLoss", PoisonedLoss)
    run = cnnkit.train(out=str(tmp_path), name="skip", nonfinite="skip", **SETTINGS)
    steps = (run.dir / "steps.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in steps if line.endswith(",1")] == [3, 7]
    assert json.loads((run.dir / "results.json").read_text())["skipped_steps"] == 2
    assert load_tensors(run.last_checkpoint)  # finite weights
    assert run.test.accuracy > 0.5


def test_gradient_clipping_bounds_each_update():
    torch.manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (16, 1, 4, 4), dtype=torch.uint8), torch.arange(16) % 2, ["a", "b"], [])
    preprocessing = Preprocessing(4, 1, (0.5,), (0.25,))
    task, changes = ClassifyTask(["a", "b"]), {}
    for clip in (None, 1e-3):
        generator = torch.Generator().manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
        model.load_state_dict({k: torch.full_like(v, 0.1) for k, v in model.state_dict().items()})
        before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        optimisation = Optimisation(optimizer, scheduler)
        settings = StepSettings(16, clip_grad_norm=clip)
        train_one_epoch(model, data, preprocessing, task, optimisation, torch.device("cpu"), generator, settings)
        changes[clip] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    assert changes[1e-3] <= 1e-3 * (1 + 1e-4)
    assert changes[None] > 10 * changes[1e-3]


@pytest.mark.slow
def test_two_runs_with_one_seed_are_bitwise_equal_and_record_their_environment(tmp_path):
    runs = [cnnkit.train(out=str(tmp_path), name=name, **SETTINGS) for name in ("a", "b")]
    first, second = (load_tensors(run.last_checkpoint) for run in runs)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert (runs[0].dir / "steps.csv").read_text() == (runs[1].dir / "steps.csv").read_text()
    environment = json.loads((runs[0].dir / "environment.json").read_text())
    assert environment["versions"]["torch"] == torch.__version__
    assert environment["device"] == "cpu" and environment["torch_threads"] == 1
    assert environment["config"]["seed"] == 4


def test_step_log_round_trips_losses_exactly(tmp_path):
    log = StepLog(tmp_path / "steps.csv")
    log.write(1, 1, 0.1 + 0.2, False)
    log.close()
    assert float((tmp_path / "steps.csv").read_text().splitlines()[1].split(",")[2]) == 0.1 + 0.2


@pytest.mark.slow
def test_best_is_never_a_nan_score(tmp_path, monkeypatch):
    from cnnkit.checkpoint import read_checkpoint

    real_evaluate, calls = ClassifyTask.evaluate, []

    def evaluate_nan_in_epoch_two(self, *args, **kwargs):
        result = real_evaluate(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:  # the validation pass of epoch 2
            result.loss = result.accuracy = math.nan
        return result

    monkeypatch.setattr(ClassifyTask, "evaluate", evaluate_nan_in_epoch_two)
    run = cnnkit.train(out=str(tmp_path), **{**SETTINGS, "epochs": 2})
    assert math.isnan(run.history[1]["val_acc"]) and run.best_epoch == 1
    assert read_checkpoint(run.best_checkpoint)[1].extra["epoch"] == 1
    assert read_state(run.dir).progress.best_epoch == 1

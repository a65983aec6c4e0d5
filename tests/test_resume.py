"""Exact resume: killed runs continue bit for bit; failed saves keep the previous state; mismatches are refused."""

import csv
import errno
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch

import cnnkit
from cnnkit import checkpoint
from cnnkit.errors import CnnkitError
from cnnkit.safeload import load_tensors
from cnnkit.tasks.classify import ClassifyTask
from cnnkit.training.optim import adam_kernel
from cnnkit.training.resume import STATE, match_parameter_layouts, read_state

# One thread: on a shared 2-core machine torch's thread pool spins and runs 10x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ("--data", "digits", "--epochs", "2", "--batch-size", "64", "--save-every", "3", "--seed", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


def cnnkit_process(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cnnkit", "train", *args]
    # As in a terminal: a shell's background job (`pytest &`) ignores SIGINT, and its children would too.
    default_sigint = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
    return subprocess.Popen(
        command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint
    )


def count_steps(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "steps.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def kill_when(process: subprocess.Popen, ready, timeout: float = 240, sig: int = signal.SIGKILL) -> bool:
    """Send ``sig`` (SIGKILL) to the process as soon as ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(sig)
            process.wait()
            return True
        time.sleep(0.0005)
    process.wait()
    return False


def rows(path: Path, drop: str | None = None) -> list[dict]:
    with open(path) as stream:
        return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(stream)]


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_matches_uninterrupted_run_bit_for_bit(tmp_path):
    reference = cnnkit_process(*TRAIN, "--out", str(tmp_path), "--name", "reference")
    assert reference.wait() == 0, reference.stderr.read()
    run_dir = tmp_path / "killed"
    rng = random.Random(5)  # the kill moments are random but the test is repeatable
    saving = []

    def mid_save() -> bool:
        temporary = [p.name for p in run_dir.glob(f".{STATE}.tmp*")]
        saving.extend(temporary)
        return bool(temporary)

    first_kill, late_kill = rng.randint(4, 15), rng.randint(22, 36)
    moments = [
        ("mid-epoch 1", lambda: count_steps(run_dir) >= first_kill),
        ("mid-save", mid_save),
        ("mid-step, epoch 2", lambda: count_steps(run_dir) >= late_kill and time.sleep(rng.uniform(0, 0.05)) is None),
    ]
    kills = []
    for index, (name, ready) in enumerate(moments):
        args = ("--out", str(tmp_path), "--name", "killed") if index == 0 else ("--resume", str(run_dir))
        process = cnnkit_process(*(TRAIN if index == 0 else ()), *args)
        assert kill_when(process, ready), f"run ended before the {name} kill: {process.stderr.read()}"
        assert process.returncode == -signal.SIGKILL
        kills.append((name, count_steps(run_dir)))
    assert saving, "the mid-save kill did not land during a save"
    final = cnnkit_process("--resume", str(run_dir))
    assert final.wait() == 0, final.stderr.read()

    assert (run_dir / "steps.csv").read_text() == (tmp_path / "reference" / "steps.csv").read_text(), kills
    assert count_steps(run_dir) == 40
    assert rows(run_dir / "metrics.csv", drop="seconds") == rows(tmp_path / "reference" / "metrics.csv", "seconds")
    for name in ("last.safetensors", "best.safetensors"):
        ours, theirs = load_tensors(run_dir / name), load_tensors(tmp_path / "reference" / name)
        assert ours.keys() == theirs.keys()
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert not list(run_dir.glob(".*tmp*"))


def fillable_disk(monkeypatch) -> dict:
    """Make every fsync fail with ENOSPC once the returned ``disk["full"]`` is set."""
    disk, real_fsync = {"full": False}, os.fsync

    def fsync(descriptor):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    return disk


@pytest.mark.slow
def test_failed_save_keeps_the_previous_state_which_resume_then_uses(tmp_path, monkeypatch):
    settings = {"data": "digits", "epochs": 2, "batch_size": 128, "save_every": 4, "seed": 2, "verbose": False}
    reference = cnnkit.train(out=str(tmp_path), name="reference", **settings)
    disk = fillable_disk(monkeypatch)

    class FillDiskAfterFirstEpoch:
        def on_epoch_end(self, run_dir, row):
            disk["full"] = True
            disk["state"] = (run_dir / STATE).read_bytes()

    with pytest.raises(CnnkitError, match=r"No space left on device.*intact.*--resume"):
        cnnkit.train(out=str(tmp_path), name="full", callbacks=[FillDiskAfterFirstEpoch()], **settings)
    run_dir = tmp_path / "full"
    assert (run_dir / STATE).read_bytes() == disk["state"]  # the previous state, byte for byte
    assert not list(run_dir.glob(".*tmp*"))
    assert read_state(run_dir).progress.epoch == 1

    disk["full"] = False
    resumed = cnnkit.train(resume=run_dir, verbose=False)
    ours, theirs = load_tensors(resumed.last_checkpoint), load_tensors(reference.last_checkpoint)
    assert all(torch.equal(ours[key], theirs[key]) for key in theirs)
    assert rows(run_dir / "steps.csv") == rows(reference.dir / "steps.csv")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module scope: the one_thread fixture does not reach here
    try:
        return cnnkit.train(data="digits", epochs=1, batch_size=128, out=str(out), name="short", verbose=False).dir
    finally:
        torch.set_num_threads(threads)


def copy_run(run_dir: Path, target: Path) -> Path:
    shutil.copytree(run_dir, target)
    return target


def contents(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_resume_extends_a_finished_run(short_run, tmp_path):
    run_dir = copy_run(short_run, tmp_path / "extended")
    run = cnnkit.train(resume=run_dir, epochs=2, verbose=False)
    assert [row["epoch"] for row in run.history] == [1, 2]
    steps = rows(run_dir / "steps.csv")
    assert [int(row["step"]) for row in steps] == list(range(1, len(steps) + 1))
    assert {row["epoch"] for row in steps} == {"1", "2"}
    assert read_state(run_dir).progress.cycles == [[1, 1], [2, 2]]
    assert json.loads((run_dir / "results.json").read_text())["test"]["count"] == 359


def test_resume_refuses_changed_settings_other_class_counts_and_truncated_state(short_run, tmp_path):
    before = contents(short_run)
    with pytest.raises(CnnkitError, match=r"cannot change lr \(0\.003 -> 0\.1\)"):
        cnnkit.train(resume=short_run, lr=0.1, verbose=False)
    with pytest.raises(CnnkitError, match=r"--epochs 0|epochs must be at least 1|fewer than"):
        cnnkit.train(resume=short_run, epochs=0, verbose=False)

    other = copy_run(short_run, tmp_path / "other_classes")
    state = read_state(other)
    state.values["model"]["num_classes"] = 3
    data = safetensors.torch.save(state.tensors, metadata={"cnnkit.state": json.dumps(state.values)})
    (other / STATE).write_bytes(data)
    with pytest.raises(CnnkitError, match=r"does not match: num_classes: the checkpoint has 3, this run has 10"):
        cnnkit.train(resume=other, verbose=False)

    truncated = copy_run(short_run, tmp_path / "truncated")
    whole = (truncated / STATE).read_bytes()
    (truncated / STATE).write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CnnkitError, match=r"truncated"):
        cnnkit.train(resume=truncated, verbose=False)
    assert contents(short_run) == before  # nothing restarted or rewritten

    with pytest.raises(CnnkitError, match=r"holds no resumable state"):
        cnnkit.train(resume=tmp_path, verbose=False)


def test_a_save_that_reads_back_wrong_never_replaces_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"previous")
    monkeypatch.setattr(checkpoint.Path, "read_bytes", lambda self: b"what the disk returned")
    with pytest.raises(checkpoint.CheckpointWriteError, match=r"reads back different bytes.*previous .* is intact"):
        checkpoint.write_atomic(target, b"new checkpoint")
    monkeypatch.undo()
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]


@pytest.mark.slow
def test_resume_keeps_the_architecture_the_run_started_with(tmp_path, monkeypatch):
    from cnnkit.models import convnet

    monkeypatch.setattr(convnet, "HIDDEN_MIN_IMAGES", 10)  # digits now count as enough for the hidden layer
    run = cnnkit.train(data="digits", epochs=1, out=str(tmp_path), verbose=False)
    monkeypatch.undo()  # as if a later cnnkit drew the line elsewhere
    resumed = cnnkit.train(resume=str(run.dir), epochs=2, verbose=False)
    _, info = checkpoint.read_checkpoint(resumed.dir / "last.safetensors")
    assert info.model.kwargs == {"hidden": 256} and len(resumed.history) == 2


class Killed(BaseException):
    """What SIGKILL does to a run: it stops at once, past every handler."""


def same_run(ours: Path, theirs: Path) -> None:
    assert (ours / "steps.csv").read_text() == (theirs / "steps.csv").read_text()
    for name in ("last.safetensors", "best.safetensors"):
        mine, reference = load_tensors(ours / name), load_tensors(theirs / name)
        assert mine.keys() == reference.keys()
        assert all(torch.equal(mine[key], reference[key]) for key in mine), name


@pytest.mark.slow
def test_augmented_run_killed_mid_epoch_resumes_bit_for_bit(shapes_folder, tmp_path):
    common = dict(data=str(shapes_folder), img_size=16, epochs=2, batch_size=4, save_every=2, seed=3)
    common.update(augment="crop=2,hflip,rotate=10,erasing=0.5", out=str(tmp_path), verbose=False)
    reference = cnnkit.train(name="reference", **common)

    class KillAfterSecondSave:
        def on_checkpoint(self, run_dir, path, epoch, step):
            if path.name == STATE and step == 4:  # mid-epoch 1: each epoch has 7 steps
                raise Killed

    with pytest.raises(Killed):
        cnnkit.train(name="killed", callbacks=[KillAfterSecondSave()], **common)
    assert read_state(tmp_path / "killed").progress.tally.batches == 4
    resumed = cnnkit.train(resume=tmp_path / "killed", verbose=False)
    same_run(resumed.dir, reference.dir)


def ctrl_c_at_loss(call: int):
    """A ClassifyTask.loss that presses Ctrl-C in the middle of training step ``call``."""
    real_loss, calls = ClassifyTask.loss, []

    def loss(self, outputs, targets):
        calls.append(1)
        if len(calls) == call:
            signal.raise_signal(signal.SIGINT)
        return real_loss(self, outputs, targets)

    return loss


@pytest.mark.slow
def test_ctrl_c_in_the_first_epoch_saves_a_state_that_resumes_bit_for_bit(shapes_folder, tmp_path, monkeypatch, capsys):
    common = dict(data=str(shapes_folder), img_size=16, epochs=1, batch_size=4, seed=3, out=str(tmp_path))
    reference = cnnkit.train(name="reference", verbose=False, **common)
    monkeypatch.setattr(ClassifyTask, "loss", ctrl_c_at_loss(3))
    # Python's own Ctrl-C handler, as in a terminal (a background `pytest &` inherits SIGINT ignored)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        stopped = cnnkit.train(name="stopped", **common)
    finally:
        signal.signal(signal.SIGINT, previous)
    monkeypatch.undo()
    assert stopped.interrupted
    assert f"continue with --resume {stopped.dir}" in capsys.readouterr().out
    assert read_state(stopped.dir).progress.step == 3  # step 3 was finished, then the run stopped
    resumed = cnnkit.train(resume=stopped.dir, verbose=False)
    same_run(resumed.dir, reference.dir)


@pytest.mark.slow
def test_cli_ctrl_c_mid_epoch_exits_130_and_resumes_bit_for_bit(tmp_path):
    train = ("--data", "digits", "--epochs", "1", "--batch-size", "64", "--seed", "1", "--out", str(tmp_path))
    reference = cnnkit_process(*train, "--name", "reference")
    assert reference.wait() == 0, reference.stderr.read()
    run_dir = tmp_path / "stopped"
    stopped = cnnkit_process(*train, "--name", "stopped")
    assert kill_when(stopped, lambda: count_steps(run_dir) >= 5, sig=signal.SIGINT), stopped.stderr.read()
    assert stopped.returncode == 130
    assert read_state(run_dir).progress.step == count_steps(run_dir) >= 5  # no --save-every: saved at Ctrl-C
    resumed = cnnkit_process("--resume", str(run_dir))
    assert resumed.wait() == 0, resumed.stderr.read()
    same_run(run_dir, tmp_path / "reference")


def test_ctrl_c_before_any_state_says_to_start_over(shapes_folder, tmp_path, monkeypatch, capsys):
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt  # during the first validation, outside any step

    monkeypatch.setattr(ClassifyTask, "evaluate", interrupted)
    run = cnnkit.train(data=str(shapes_folder), img_size=16, epochs=1, out=str(tmp_path), name="early")
    printed = capsys.readouterr().out
    assert run.interrupted and not (run.dir / STATE).exists()
    assert "run the command again to start over" in printed and "--resume" not in printed


def test_full_disk_in_the_first_epoch_says_to_start_over_and_leaves_no_run_directory(
    shapes_folder, tmp_path, monkeypatch
):
    disk = fillable_disk(monkeypatch)

    class FillDiskAtStart:
        def on_fit_start(self, run_dir, config):
            disk["full"] = True  # after the image cache was built, before the first save

    settings = dict(data=str(shapes_folder), img_size=16, epochs=1, out=str(tmp_path / "runs"), verbose=False)
    with pytest.raises(CnnkitError, match=r"No space left on device.*free some space, then run the command again") as e:
        cnnkit.train(callbacks=[FillDiskAtStart()], **settings)
    assert "--resume" not in str(e.value)
    assert not (tmp_path / "runs" / "train").exists()


def test_state_round_trips_the_fp16_grad_scaler(tmp_path):
    from cnnkit.models import ModelSpec
    from cnnkit.training.optim import Optimisation
    from cnnkit.training.resume import Progress, save_state

    def parts():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
        return model, Optimisation(optimizer, scheduler, scaler)

    model, optimisation = parts()
    for values in (torch.ones(3, 4), torch.full((3, 4), math.inf), torch.ones(3, 4), torch.ones(3, 4)):
        optimisation.optimizer.zero_grad()
        optimisation.scaler.scale(model(values).sum()).backward()
        optimisation.scaler.step(optimisation.optimizer)  # skipped on the inf step, which halves the scale
        optimisation.scaler.update()
    expected = optimisation.scaler.state_dict()
    assert (expected["scale"], expected["_growth_tracker"]) == (2.0**10, 0)  # halved once, then doubled
    generator = torch.Generator().manual_seed(1)
    spec, config = ModelSpec("convnet", 2, 1, 4), cnnkit.TrainConfig()
    save_state(tmp_path, model, None, optimisation, generator.get_state(), generator, Progress(), spec, config)
    restored_model, restored = parts()
    read_state(tmp_path).restore(
        restored_model, restored.optimizer, restored.scheduler, torch.Generator(), restored.scaler
    )
    assert restored.scaler.state_dict() == expected
    optimisation.scaler = torch.amp.GradScaler("cpu", enabled=False)  # fp32 and bf16 keep no scaler state
    save_state(tmp_path, model, None, optimisation, generator.get_state(), generator, Progress(), spec, config)
    assert read_state(tmp_path).values["grad_scaler"] is None


def test_restored_moments_take_their_channels_last_parameters_layout_so_the_fused_adam_pairs_them():
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last))
    gradient = torch.randn_like(weight)

    def stepped(restore: bool) -> torch.Tensor:
        parameter = torch.nn.Parameter(weight.detach().clone())  # channels_last, as the model trains
        optimizer = torch.optim.AdamW([parameter], lr=0.1, **adam_kernel([parameter]))
        for index in range(2):
            parameter.grad = gradient * (index + 1)
            optimizer.step()
            if restore and index == 0:  # as read back from the state file: contiguous moments
                saved = optimizer.state_dict()
                state = {key: {k: v.contiguous() for k, v in kept.items()} for key, kept in saved["state"].items()}
                optimizer = torch.optim.AdamW([parameter], lr=0.1, **adam_kernel([parameter]))
                optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
                match_parameter_layouts(optimizer)
        return parameter.detach()

    assert torch.equal(stepped(restore=True), stepped(restore=False))

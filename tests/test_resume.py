"""Exact resume: killed runs continue bit for bit; failed saves keep the previous state; mismatches are refused."""

import csv
import errno
import json
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
from cnnkit.training.resume import STATE, read_state

# One thread: on a shared 2-core machine torch's thread pool spins and runs 10x slower.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
TRAIN = ("--data", "digits", "--epochs", "2", "--batch-size", "64", "--save-every", "3", "--seed", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


def cnnkit_process(*args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "cnnkit", "train", *args]
    return subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def count_steps(run_dir: Path) -> int:
    try:
        return max(0, len((run_dir / "steps.csv").read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


def kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> bool:
    """SIGKILL the process as soon as ``ready()`` holds; False if it ended first."""
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if ready():
            process.send_signal(signal.SIGKILL)
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


def test_failed_save_keeps_the_previous_state_which_resume_then_uses(tmp_path, monkeypatch):
    settings = {"data": "digits", "epochs": 2, "batch_size": 128, "save_every": 4, "seed": 2, "verbose": False}
    reference = cnnkit.train(out=str(tmp_path), name="reference", **settings)
    disk = {"full": False}
    real_fsync = os.fsync

    def fsync(descriptor):
        if disk["full"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(descriptor)

    class FillDiskAfterFirstEpoch:
        def on_epoch_end(self, run_dir, row):
            disk["full"] = True
            disk["state"] = (run_dir / STATE).read_bytes()

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    with pytest.raises(CnnkitError, match=r"No space left on device.*intact.*--resume"):
        cnnkit.train(out=str(tmp_path), name="full", callbacks=[FillDiskAfterFirstEpoch()], **settings)
    run_dir = tmp_path / "full"
    assert (run_dir / STATE).read_bytes() == disk["state"]  # the previous state, byte for byte
    assert not list(run_dir.glob(".*tmp*"))
    assert read_state(run_dir).progress.epoch == 1

    monkeypatch.setattr(checkpoint.os, "fsync", real_fsync)
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


def test_resume_keeps_the_architecture_the_run_started_with(tmp_path, monkeypatch):
    from cnnkit.models import convnet

    monkeypatch.setattr(convnet, "HIDDEN_MIN_IMAGES", 10)  # digits now count as enough for the hidden layer
    run = cnnkit.train(data="digits", epochs=1, out=str(tmp_path), verbose=False)
    monkeypatch.undo()  # as if a later cnnkit drew the line elsewhere
    resumed = cnnkit.train(resume=str(run.dir), epochs=2, verbose=False)
    _, info = checkpoint.read_checkpoint(resumed.dir / "last.safetensors")
    assert info.model.kwargs == {"hidden": 256} and len(resumed.history) == 2

"""Distributed training on CPU (gloo, 127.0.0.1): torchrun workers train one run, resume bit for bit, exit cleanly.

Every launch costs seconds of process start-up (torch, torchvision, the data), so the slow
tests share them: the two-node run is the uninterrupted reference that the killed and the
restarted runs must end as, bit for bit, and the resumed run is the ``--devices 2`` run
whose single run directory is checked.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cnnkit
from cnnkit.config import TrainConfig
from cnnkit.data.augment import Augmentation
from cnnkit.errors import CnnkitError
from cnnkit.safeload import load_tensors
from cnnkit.training.distributed import RECORD, World, devices_to_launch, report_failure
from cnnkit.training.resume import SavedState, resume_config

# Digits, 2 epochs: long enough to kill a worker mid-run, short enough for a test; the augmentation's
# random draws (crop offsets, angles, factors) must resume exactly too.
AUGMENT = "crop=1,rotate=5,brightness=0.2"
TRAIN = ("train", "--data", "digits", "--epochs", "2", "--batch-size", "32", "--seed", "3", "--augment", AUGMENT)
WORKER_ENV = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
ABORT = "terminate called"


def cnnkit_command(*args: str, out: Path) -> list[str]:
    return [sys.executable, "-m", "cnnkit", *args, "--out", str(out)]


def run(command: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=WORKER_ENV, timeout=timeout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "last.safetensors")


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"weights differ in {different[:3]}"


def worker_pid(launcher: int, rank: int, timeout: float = 120) -> int:
    """The pid of the launcher's child of ``rank`` (torchrun sets RANK in each worker's environment)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{launcher}/task/{launcher}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} under {launcher}")


def kill_after_first_save(launcher: subprocess.Popen, run_dir: Path) -> None:
    """SIGKILL rank 1 as soon as rank 0 has saved a state (save-every 5 steps, of 80)."""
    victim = worker_pid(launcher.pid, 1)
    deadline = time.monotonic() + 240
    while not (run_dir / "state.safetensors").exists():
        assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before its first save"
        time.sleep(0.005)
    os.kill(victim, signal.SIGKILL)


def node_cores(rank: int) -> set[int]:
    """Node ``rank``'s half of this machine's cores, as if it were a machine of its own.

    Each node's one worker takes all the cores it sees; pinned to half, it takes the threads
    a worker of ``--devices 2`` takes here, so both ways compute the same run bit for bit
    (and two nodes do not oversubscribe one machine).
    """
    cores = sorted(os.sched_getaffinity(0))
    half = max(1, len(cores) // 2)
    return set(cores[rank * half : (rank + 1) * half] or cores[-half:])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Two torchrun "nodes" on 127.0.0.1 train one uninterrupted run: what every interrupted one must end as."""
    out = tmp_path_factory.mktemp("reference")
    node = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1"]
    node += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    nodes = [
        subprocess.Popen(
            [*node, "--node-rank", str(rank), "-m", "cnnkit", *TRAIN, "--out", str(out), "--name", "nodes"],
            env=WORKER_ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=lambda rank=rank: os.sched_setaffinity(0, node_cores(rank)),
        )
        for rank in (0, 1)
    ]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs
    assert not any(ABORT in stderr or "Traceback" in stderr for _, stderr in outputs), outputs
    return SimpleNamespace(dir=out / "nodes", stdout=[stdout for stdout, _ in outputs])


@pytest.mark.slow
def test_torchrun_two_nodes_on_loopback_train_one_run_as_accurate_as_one_process(
    reference_run: SimpleNamespace, tmp_path: Path, one_thread
):
    run_dir = reference_run.dir
    assert [path.name for path in run_dir.parent.iterdir()] == ["nodes"]
    record = json.loads((run_dir / RECORD).read_text())
    assert record["world_size"] == 2 and record["sessions"][0]["nodes"] == 2
    assert record["sessions"][0]["backend"] == "gloo"
    assert TrainConfig.load(run_dir / "config.yaml").devices == 2
    steps = (run_dir / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 2 * 40  # rank 0 alone logs: one row per global step (1259 images / 32 per batch)
    first, second = reference_run.stdout
    assert "test accuracy" in first and "test accuracy" not in second  # rank 0 alone speaks
    single = cnnkit.train(
        data="digits", epochs=2, batch_size=32, seed=3, augment=AUGMENT, out=str(tmp_path), verbose=False
    )
    both = json.loads((run_dir / "results.json").read_text())["test"]["accuracy"]
    assert both > 0.9 and single.test.accuracy > 0.9  # two shards of one shuffled epoch learn as one process does


@pytest.mark.slow
def test_resume_after_sigkill_of_a_worker_matches_uninterrupted_run(reference_run: SimpleNamespace, tmp_path: Path):
    command = cnnkit_command(*TRAIN, "--devices", "2", "--save-every", "5", "--name", "killed", out=tmp_path)
    launcher = subprocess.Popen(command, env=WORKER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_after_first_save(launcher, tmp_path / "killed")
    _, stderr = launcher.communicate(timeout=120)
    assert launcher.returncode == 1
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith("cnnkit: error: rank 1 was stopped by SIGKILL") and "--resume" in lines[-1]
    assert "Traceback" not in stderr
    resumed = run(cnnkit_command("train", "--resume", str(tmp_path / "killed"), "--devices", "2", out=tmp_path))
    assert resumed.returncode == 0, resumed.stderr
    assert ABORT not in resumed.stderr and "Traceback" not in resumed.stderr
    assert "test accuracy" in resumed.stdout and [path.name for path in tmp_path.iterdir()] == ["killed"]
    record = json.loads((tmp_path / "killed" / RECORD).read_text())
    assert [session["world_size"] for session in record["sessions"]] == [2, 2]
    assert_same_weights(tmp_path / "killed", reference_run.dir)  # --devices 2 on one machine = two nodes


@pytest.mark.slow
def test_torchrun_max_restarts_recovers_a_killed_worker_exactly(reference_run: SimpleNamespace, tmp_path: Path):
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command = [*torchrun, "--max-restarts", "1", "-m", "cnnkit", *TRAIN, "--save-every", "5", "--out", str(tmp_path)]
    launcher = subprocess.Popen(command, env=WORKER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_after_first_save(launcher, tmp_path / "train")
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, stderr
    assert [path.name for path in tmp_path.iterdir()] == ["train"]  # the restart continued the same run
    record = json.loads((tmp_path / "train" / RECORD).read_text())
    assert [session["restart"] for session in record["sessions"]] == [0, 1]
    assert_same_weights(tmp_path / "train", reference_run.dir)


@pytest.mark.slow
def test_train_devices_worker_error_is_one_line_naming_the_rank(tmp_path: Path):
    result = run(cnnkit_command(*TRAIN, "--devices", "2", "--batch-size", "33", out=tmp_path))
    assert result.returncode == 2
    [line] = result.stderr.strip().splitlines()  # the first failing rank's, whichever it was
    assert re.fullmatch(r"cnnkit: error: rank [01]: --batch-size 33 is the global batch, .* e\.g\. 32 or 34", line)
    assert not any(tmp_path.iterdir())


TEARDOWN = """
import sys, torch
from torch import nn

from cnnkit.training.distributed import shut_down
rank, path = int(sys.argv[1]), sys.argv[2]
for cycle in range(int(sys.argv[3])):
    torch.distributed.init_process_group("gloo", init_method=f"file://{path}.{cycle}", rank=rank, world_size=2)
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 2)))
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    del model, optimizer  # what Session.close does before the process group goes
    shut_down()
"""


@pytest.mark.slow
def test_teardown_repeated_never_aborts(tmp_path: Path):
    script = tmp_path / "teardown.py"
    script.write_text(TEARDOWN)
    # One pair, 20 init/teardown cycles each (40 teardowns), then both exit as a worker does: each
    # process start costs seconds (torch, and DDP's first use imports torch._dynamo), a cycle a fraction of one.
    store = str(tmp_path / "store")
    pair = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), store, "20"],
            env={**WORKER_ENV, "OMP_NUM_THREADS": "1"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]
    errors = [process.communicate(timeout=120)[1] for process in pair]
    assert [process.returncode for process in pair] == [0, 0], errors
    assert not any(ABORT in error for error in errors), errors


def test_world_refuses_a_batch_that_does_not_split_evenly():
    with pytest.raises(CnnkitError, match=r"multiple of 3, e\.g\. 63 or 66"):
        World(0, 3, 0, 3).start(TrainConfig(batch_size=64, device="cpu"))


def test_world_claim_refuses_devices_other_than_the_world_size():
    assert World(1, 2, 1, 2).claim({"lr": 0.1}) == {"lr": 0.1, "devices": 2}
    with pytest.raises(CnnkitError, match="torchrun started 2 workers"):
        World(1, 2, 1, 2).claim({"devices": 4})
    with pytest.raises(CnnkitError, match="cnnkit train --devices 2"):
        World().claim({"devices": 2})


def test_world_from_environment_reads_torchrun_variables():
    environ = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    world = World.from_environment({**environ, "TORCHELASTIC_RESTART_COUNT": "1", "TORCHELASTIC_RUN_ID": "job"})
    assert world == World(3, 8, 1, 2, 1, "job") and not world.leader and world.active
    assert World.from_environment({}) == World()


def test_devices_to_launch_follows_flag_then_resumed_run(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    TrainConfig(devices=2).save(tmp_path / "config.yaml")
    assert devices_to_launch({"devices": 3}, None, str(tmp_path)) == 3
    assert devices_to_launch({}, None, str(tmp_path)) == 2
    assert devices_to_launch({}, None, None) == 0
    monkeypatch.setenv("WORLD_SIZE", "2")  # inside a torchrun worker: never launch again
    assert devices_to_launch({"devices": 2}, None, None) == 0


def test_resume_at_another_world_size_is_refused(tmp_path: Path):
    state = SavedState(tmp_path / "run" / "state.safetensors", {}, {"config": TrainConfig(devices=2).to_dict()})
    with pytest.raises(CnnkitError, match=r"run was trained on 2 process\(es\) and is resumed on 1; .* --devices 2"):
        resume_config(state, {"devices": 1})
    assert resume_config(state, {"devices": 2, "epochs": 20}).epochs == 20  # the same world size resumes


def failure(exitcode: int, timestamp: int, message: str = "", own: bool = False) -> SimpleNamespace:
    data = {"traceback": ""} if own else {}
    name = signal.Signals(-exitcode).name if exitcode < 0 else ""
    return SimpleNamespace(
        exitcode=exitcode, timestamp=timestamp, message=message, error_file_data=data, signal_name=lambda: name
    )


def test_report_failure_names_the_cause_not_the_ranks_that_lost_it(tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "state.safetensors").write_bytes(b"")
    (tmp_path / "file").write_text(str(run_dir))
    lost = failure(1, 5, "rank 0: lost contact with another rank: x", own=True)
    failures = {0: lost, 1: failure(-9, 6), 2: failure(-15, 5)}  # SIGTERM: the launcher stopping a survivor
    assert report_failure(failures, tmp_path / "file", 2) == 1
    line = capsys.readouterr().err.strip()
    assert (
        line == f"cnnkit: error: rank 1 was stopped by SIGKILL; the run keeps its last saved state: "
        f"continue with --resume {run_dir} --devices 2"
    )
    assert report_failure({1: failure(2, 5, "rank 1: bad data", own=True)}, tmp_path / "none", 2) == 2
    assert capsys.readouterr().err.strip() == "cnnkit: error: rank 1: bad data"
    assert report_failure({0: failure(130, 5), 1: failure(130, 5)}, tmp_path / "none", 2) == 130


class RecordingTask:
    """A task that remembers which images (labels = their indices) each step trained on."""

    def __init__(self) -> None:
        self.steps: list[list[int]] = []

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.steps.append(targets.tolist())
        return outputs.sum()

    def score_batch(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.zeros(())


def shard_steps(shard: tuple[int, int], count: int = 23, batch_size: int = 6) -> list[list[int]]:
    from cnnkit.data import ImageSet
    from cnnkit.modelinfo import Preprocessing
    from cnnkit.training.loop import StepSettings, train_one_epoch
    from cnnkit.training.optim import Optimisation

    data = ImageSet(torch.zeros(count, 1, 1, 1, dtype=torch.uint8), torch.arange(count), ["x"], [""] * count)
    model = nn.Sequential(nn.Flatten(), nn.Linear(1, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    optimisation = Optimisation(optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0), None)
    task = RecordingTask()
    preprocessing = Preprocessing(1, 1, (0.0,), (1.0,), "crop")
    settings = StepSettings(batch_size, shard=shard)
    generator = torch.Generator().manual_seed(5)  # seeded alike on every rank: one shuffled epoch
    train_one_epoch(model, data, preprocessing, task, optimisation, torch.device("cpu"), generator, settings)
    return task.steps


def test_train_one_epoch_shards_split_each_global_batch_evenly_and_disjointly():
    single, first, second = shard_steps((0, 1)), shard_steps((0, 2)), shard_steps((1, 2))
    assert len(single) == len(first) == len(second) == 4  # 23 images, batches of 6: every rank runs every step
    for whole, mine, theirs in zip(single, first, second):
        assert len(mine) == len(theirs) and not set(mine) & set(theirs) and set(mine) | set(theirs) <= set(whole)
    assert [len(step) for step in first] == [3, 3, 3, 2]  # the last batch's odd image is dropped on both ranks
    for whole, mine, theirs in zip(single[:3], first, second):  # full batches: exactly the single-process images
        assert sorted(mine + theirs) == sorted(whole)


EVERY_AUGMENTATION = Augmentation(crop_padding=2, hflip=True, rotate=10, scale=0.1, translate=0.1, brightness=0.2,
                                  contrast=0.2, saturation=0.2, erasing=0.5)  # fmt: skip


def test_augmentation_shards_take_their_own_draws_of_the_global_batch():
    images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    single = torch.Generator().manual_seed(4)
    whole = EVERY_AUGMENTATION(images, single)  # one process augmenting the global batch of 8
    for rank in (0, 1):  # the loader gives rank r images r, r + 2, ... of the global batch
        generator = torch.Generator().manual_seed(4)
        torch.testing.assert_close(EVERY_AUGMENTATION(images[rank::2], generator, (rank, 2)), whole[rank::2])
        assert torch.equal(generator.get_state(), single.get_state())  # every rank's generator stays in step
    same = images[:4]  # the same images at the same positions of both shares get different draws
    first, second = (EVERY_AUGMENTATION(same, torch.Generator().manual_seed(4), (rank, 2)) for rank in (0, 1))
    assert not any(torch.equal(a, b) for a, b in zip(first, second))

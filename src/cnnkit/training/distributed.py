"""One run on many processes: torchrun workers, DistributedDataParallel, and the rules that keep them in step.

``cnnkit train --devices N`` runs PyTorch's own elastic launcher (``torch.distributed.run``,
what ``torchrun`` is) in-process, which starts N copies of ``python -m cnnkit train ...``;
plain ``torchrun ... -m cnnkit train ...`` starts the same workers, on one machine or many.
Each worker finds its place in the environment torchrun gives it (:class:`World`) and:

- takes ``batch_size // N`` images of every global batch: its shard of one shuffled epoch,
  drawn from a generator seeded alike on every rank, so the union of the ranks' batches is
  the single-process batch (see ``training/loop.py``);
- sums each step's loss, hits and image count with the others in one all-reduce (which
  also carries Ctrl-C), so every rank logs, stops and falls back to fp32 at the same step;
- evaluates the whole validation split itself: the ranks hold identical weights, so they
  reach identical results with no communication and in the time rank 0 alone would take;
- writes nothing unless it is rank 0, which alone writes the run directory.

Teardown releases the DDP wrapper and its optimizer before the process group is destroyed:
gloo's threads otherwise outlive their owner and about half of the runs end in
``terminate called without an active exception`` (``tests/test_distributed.py`` repeats it).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnkit.compute import ComputeSettings, select_device
from cnnkit.config import TrainConfig
from cnnkit.errors import CnnkitError, describe_error

RECORD = "distributed.json"
LAUNCHED = "CNNKIT_LAUNCHED"  # set by `cnnkit train --devices N`: its workers leave error lines to it
RUN_FILE = "CNNKIT_RUN_FILE"  # where rank 0 names the run directory, for the launcher's hint


@dataclass(frozen=True)
class World:
    """Where this process stands among the workers of one run; a plain process is rank 0 of 1.

    Args:
        rank: This process's global rank. Defaults to 0.
        size: Processes in the run (the world size). Defaults to 1.
        local_rank: Rank on this machine: the GPU it takes. Defaults to 0.
        local_size: Processes on this machine, which share its cores. Defaults to 1.
        restart: torchrun's restart count (``--max-restarts``). Defaults to 0.
        run_id: torchrun's rendezvous id, the same for every restart of one job. Defaults to None.
    """

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    restart: int = 0
    run_id: str | None = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] = os.environ) -> World:
        """The world torchrun describes in the environment (``RANK``, ``WORLD_SIZE``, ...), else a single process."""
        if "WORLD_SIZE" not in environ or "RANK" not in environ:
            return cls()
        size = int(environ["WORLD_SIZE"])
        return cls(
            int(environ["RANK"]),
            size,
            int(environ.get("LOCAL_RANK", 0)),
            int(environ.get("LOCAL_WORLD_SIZE", size)),
            int(environ.get("TORCHELASTIC_RESTART_COUNT", 0)),
            environ.get("TORCHELASTIC_RUN_ID"),
        )

    @property
    def leader(self) -> bool:
        """True on rank 0, the one process that writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def claim(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The overrides with ``devices`` set to this world's size; a different ``devices`` is refused."""
        asked = overrides.get("devices", self.size)
        if asked != self.size:
            if self.active:
                raise CnnkitError(
                    f"--devices {asked}, but torchrun started {self.size} workers; leave --devices out under "
                    "torchrun (its --nnodes and --nproc-per-node set the world size)"
                )
            raise CnnkitError(
                f"devices={asked} needs {asked} worker processes: run `cnnkit train --devices {asked}` or "
                f"`torchrun --standalone --nproc-per-node {asked} -m cnnkit train`, not fit() in one process"
            )
        return {**overrides, "devices": self.size}

    def start(self, config: TrainConfig) -> torch.device:
        """This rank's device, after joining the process group: NCCL on GPUs (one each), gloo on CPUs.

        Each worker takes ``cores // processes on this machine`` threads, so N workers do not
        oversubscribe the cores. A global batch that does not split evenly is refused.
        """
        device = select_device(config.device)
        if not self.active:
            return device
        if config.batch_size % self.size:
            lower, upper = config.batch_size // self.size * self.size, -(-config.batch_size // self.size) * self.size
            raise CnnkitError(
                f"--batch-size {config.batch_size} is the global batch, split evenly over {self.size} processes; "
                f"use a multiple of {self.size}, e.g. {lower or upper} or {upper}"
            )
        if config.finetune:
            raise CnnkitError(
                "--finetune trains other parameters in each phase, which DistributedDataParallel cannot follow; "
                "fine-tune with --devices 1, or train all layers with --pretrained"
            )
        if device.type == "mps":
            raise CnnkitError("--devices above 1 runs on CUDA GPUs or CPUs, not on mps; add --device cpu")
        if device.type == "cuda":
            if self.local_size > torch.cuda.device_count():
                raise CnnkitError(
                    f"{self.local_size} processes on this machine but {torch.cuda.device_count()} GPU(s); "
                    "use one process per GPU (--devices, --nproc-per-node), or --device cpu"
                )
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        else:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // self.local_size))
        if not torch.distributed.is_initialized():
            # torchrun's store outlives a restart; keys of each attempt's own (its ranks' addresses) keep them apart.
            store, _, _ = next(torch.distributed.rendezvous("env://"))
            store = torch.distributed.PrefixStore(f"cnnkit/restart{self.restart}", store)
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend, store=store, rank=self.rank, world_size=self.size)
        return device

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        """The module the training steps run: DDP around ``model`` (parameters shared), or ``model`` itself.

        On CUDA batch norm becomes SyncBatchNorm (statistics over the global batch). On CPU,
        where SyncBatchNorm does not run, each rank normalises by its own share of the batch;
        the running statistics are then recomputed after each epoch by every rank alike
        (``recompute_batch_norm``, identical weights and batches), so buffers need no broadcast.
        """
        if not self.active:
            return model
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over every rank (one all-reduce), on every rank."""
        if self.active:
            torch.distributed.all_reduce(values)
        return values

    def share(self, text: str | None) -> str:
        """Rank 0's ``text`` on every rank (the others pass None): a run directory, a compute choice.

        Sent as UTF-8 bytes in a tensor, never as a pickle.
        """
        if not self.active:
            return text or ""
        device = torch.device("cuda", self.local_rank) if torch.distributed.get_backend() == "nccl" else None
        data = torch.tensor(list((text or "").encode()), dtype=torch.uint8, device=device)
        length = torch.tensor([len(data)], dtype=torch.long, device=device)
        torch.distributed.broadcast(length, 0)
        if not self.leader:
            data = torch.zeros(int(length), dtype=torch.uint8, device=device)
        torch.distributed.broadcast(data, 0)
        return bytes(data.cpu().tolist()).decode()

    def agree(self, settings: ComputeSettings) -> ComputeSettings:
        """Rank 0's precision on every rank: ``auto`` measures bf16 per process, and ranks must compute alike."""
        chosen = json.loads(self.share(json.dumps([settings.precision, settings.precision_note])))
        return replace(settings, precision=chosen[0], precision_note=chosen[1])

    def record(self, run_dir: Path, backend: str) -> None:
        """Rank 0 writes ``distributed.json`` (world size, nodes, backend, torchrun job id) for resume and restarts."""
        if not self.active or not self.leader:
            return
        path = run_dir / RECORD
        sessions = json.loads(path.read_text())["sessions"] if path.exists() else []
        session = {"world_size": self.size, "nodes": self.size // self.local_size, "backend": backend}
        session |= {"threads_per_worker": torch.get_num_threads(), "run_id": self.run_id, "restart": self.restart}
        path.write_text(json.dumps({"world_size": self.size, "sessions": [*sessions, session]}, indent=2))
        if os.environ.get(RUN_FILE):
            Path(os.environ[RUN_FILE]).write_text(str(run_dir))

    def restarted_run(self, out: str | Path) -> Path | None:
        """After a torchrun restart, the run its first attempt wrote under ``out`` (same job id, with a state).

        Every rank finds the same directory, so the restart resumes it exactly; None before the first save.
        """
        if not self.restart or not self.run_id:
            return None
        found = []
        for record in Path(out).expanduser().glob(f"*/{RECORD}"):
            sessions = json.loads(record.read_text())["sessions"]
            state = record.parent / "state.safetensors"
            if state.exists() and any(s.get("run_id") == self.run_id for s in sessions):
                found.append((state.stat().st_mtime, record.parent))
        return max(found)[1] if found else None


def shut_down() -> None:
    """Destroy the process group once nothing holds DDP or an optimizer (collected first), so gloo exits cleanly."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextmanager
def worker_errors() -> Iterator[World]:
    """Run a worker's command: its error becomes one line naming its rank, and the process group is shut down.

    Under ``cnnkit train --devices N`` the line goes to torchrun's error file only, and the
    launcher prints the first one; under plain torchrun each failing rank prints its own.
    A lost peer (another rank killed) is reported as such, without gloo's traceback.
    """
    world = World.from_environment()
    if "WORLD_SIZE" not in os.environ:  # a plain process: errors keep their usual path
        yield world
        return
    failure: tuple[int, str, str] | None = None
    try:
        yield world
    except CnnkitError as error:
        failure = (2, f"rank {world.rank}: {describe_error(error)}", "")
    except KeyboardInterrupt:
        failure = (130, f"rank {world.rank}: interrupted", "")
    except Exception as error:  # any failure of a worker ends as one line (its traceback goes to the error file)
        reason = str(error).strip().splitlines()[-1:] or [type(error).__name__]
        peer = isinstance(error, torch.distributed.DistError) or "Connection" in str(error)
        what = "lost contact with another rank" if peer else type(error).__name__
        failure = (1, f"rank {world.rank}: {what}: {reason[0][:300]}", traceback.format_exc())
    shut_down()
    if failure is None:
        return
    code, message, trace = failure
    if os.environ.get("TORCHELASTIC_ERROR_FILE") and code != 130:
        record = {"message": message, "timestamp": int(time.time()), "traceback": trace}
        Path(os.environ["TORCHELASTIC_ERROR_FILE"]).write_text(json.dumps(record))
    if not os.environ.get(LAUNCHED) and code != 130:
        print(f"cnnkit: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def devices_to_launch(options: Mapping[str, Any], config: TrainConfig | None, resume: str | None) -> int:
    """How many workers ``cnnkit train`` should start here: 0 inside a torchrun worker or for one process.

    ``--devices`` wins, then the ``--config`` file's ``devices``, then a resumed run's own.
    """
    if "WORLD_SIZE" in os.environ:
        return 0
    devices = options.get("devices") or (config.devices if config else None)
    if devices is None and resume is not None:
        path = Path(resume).expanduser() / "config.yaml"
        devices = TrainConfig.load(path).devices if path.is_file() else None
    return devices if devices and devices > 1 else 0


def launch(argv: list[str], devices: int) -> int:
    """Start ``devices`` workers of ``cnnkit <argv>`` on this machine through torch's elastic launcher.

    Returns the exit code: 0, 2 for a worker's own error, 130 after Ctrl-C, else 1. A failure
    is one line naming the first failing rank, and, when a state was saved, how to resume.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    cores = len(os.sched_getaffinity(0))
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // devices)))
    os.environ[LAUNCHED] = "1"
    with tempfile.TemporaryDirectory(prefix="cnnkit-launch-") as folder:
        os.environ[RUN_FILE] = str(Path(folder) / "run")
        for name in list(logging.root.manager.loggerDict):  # torch's own loggers: the launcher speaks in one line
            if name.startswith("torch.distributed"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
        arguments = ["--standalone", "--nproc-per-node", str(devices), "--monitor-interval", "0.1"]
        try:
            run(parse_args([*arguments, "-m", "cnnkit", *argv]))
        except ChildFailedError as error:
            return report_failure(error.failures, Path(folder) / "run", devices)
        except SignalException:  # Ctrl-C: the launcher passed it on; each worker finished its step and rank 0 saved
            return 130
    return 0


def report_failure(failures: Mapping[int, Any], run_file: Path, devices: int) -> int:
    """Print one line for the first failure that explains the others, and return the launcher's exit code."""
    if all(failure.exitcode == 130 for failure in failures.values()):
        return 130  # rank 0 has said where the interrupted run is kept

    def weight(item: tuple[int, Any]) -> tuple[int, int, int]:
        rank, failure = item
        # A cnnkit error or a signal is the cause; SIGTERM is how the launcher stops the survivors, a symptom.
        own = failure.exitcode == 2 or (failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM)
        return (0 if own else 1, failure.timestamp, rank)

    rank, failure = min(failures.items(), key=weight)
    if failure.exitcode < 0:
        message = f"rank {rank} was stopped by {failure.signal_name()}"
    elif "traceback" in failure.error_file_data:  # written by worker_errors
        message = failure.message
    else:
        message = f"rank {rank} exited with code {failure.exitcode}"
    run_dir = Path(run_file.read_text()) if run_file.exists() else None
    if run_dir is not None and (run_dir / "state.safetensors").exists():
        message += f"; the run keeps its last saved state: continue with --resume {run_dir} --devices {devices}"
    print(f"cnnkit: error: {message}", file=sys.stderr)
    return 2 if failure.exitcode == 2 else 1

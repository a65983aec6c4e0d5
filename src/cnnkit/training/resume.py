"""Resumable training state: everything needed to continue a run exactly where it stopped.

``state.safetensors`` in the run directory holds the tensors (model, best model,
optimizer moments, every random generator's state) and, in its JSON metadata, the rest:
epoch, step, position in the epoch's data order, running totals, scheduler, the fp16
grad scaler, best score and history. It is written atomically (see
:func:`cnnkit.checkpoint.write_atomic`) and read through
:func:`cnnkit.safeload.load_tensors`, so it never holds or runs a pickle.

The training generator draws each epoch's data order and then every batch's
augmentation, so two of its states are kept: the one at the epoch's start (``rng.order``,
to draw that epoch's order again) and the one at the save (``rng.augment``, to continue
the augmentation's draws where they stopped).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn

from cnnkit.checkpoint import write_atomic
from cnnkit.config import TrainConfig
from cnnkit.errors import CnnkitError
from cnnkit.models import ModelSpec
from cnnkit.safeload import load_tensors, read_header
from cnnkit.training.optim import Optimisation

STATE = "state.safetensors"
STEPS = "steps.csv"
FORMAT = "cnnkit.state/1"

# Settings that may differ on resume: they change where and how fast, not what is computed.
RESUME_OVERRIDES = frozenset({"epochs", "device", "workers", "save_every"})


@dataclass
class EpochTally:
    """Running totals of the epoch in progress; ``batches`` is the position in its data order."""

    batches: int = 0
    total_loss: float = 0.0
    correct: int = 0
    seen: int = 0


@dataclass
class Progress:
    """Where a run stands: finished epochs, optimizer steps, the epoch in progress and the best so far.

    ``cycles`` lists ``[first_epoch, last_epoch]`` of each learning-rate schedule: one for a
    plain run, one more each time a finished run is extended with ``--epochs``.
    """

    epoch: int = 0
    step: int = 0
    skipped_steps: int = 0
    tally: EpochTally = field(default_factory=EpochTally)
    best_score: list[float] | None = None
    best_epoch: int | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    cycles: list[list[int]] = field(default_factory=list)

    def cycle(self, epoch: int) -> list[int]:
        return next(cycle for cycle in self.cycles if cycle[0] <= epoch <= cycle[1])


def _rng_tensors(order_state: torch.Tensor, generator: torch.Generator) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state(), "rng.order": order_state, "rng.augment": generator.get_state()}
    if torch.cuda.is_available():
        tensors |= {f"rng.cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())}
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(keys.astype(np.int64))
    return tensors, {"numpy": [kind, int(position), int(has_gauss), float(gauss)], "python": random.getstate()}


def _restore_rng(tensors: dict[str, torch.Tensor], values: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    # States written before rng.augment existed continue from the epoch's start, as they always did.
    generator.set_state(tensors.get("rng.augment", tensors["rng.order"]))
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("rng.cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    kind, position, has_gauss, gauss = values["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), position, has_gauss, gauss))
    version, internal, gauss_next = values["python"]
    random.setstate((version, tuple(internal), gauss_next))


def save_state(
    run_dir: Path,
    model: nn.Module,
    best_state: dict[str, torch.Tensor] | None,
    optimisation: Optimisation,
    order_state: torch.Tensor,
    generator: torch.Generator,
    progress: Progress,
    spec: ModelSpec,
    config: TrainConfig,
) -> None:
    """Write ``state.safetensors`` atomically.

    ``order_state`` is the training generator's state at the epoch's start; ``generator``
    is that generator now, part-way through the epoch's augmentation draws.
    """
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v.cpu().contiguous() for k, v in (best_state or {}).items()}
    optimizer_state = optimisation.optimizer.state_dict()
    values: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                values.setdefault(str(index), {})[name] = value
    rng_tensors, rng_values = _rng_tensors(order_state, generator)
    scaler = optimisation.scaler
    metadata = {
        "format": FORMAT,
        "model": spec.to_dict(),
        "config": config.to_dict(),
        "progress": asdict(progress),
        "optimizer": {"param_groups": optimizer_state["param_groups"], "values": values},
        "scheduler": optimisation.scheduler.state_dict(),
        # fp16 only: its scale and growth tracker are plain numbers; null in fp32 and bf16.
        "grad_scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_values,
    }
    data = safetensors.torch.save(tensors | rng_tensors, metadata={"cnnkit.state": json.dumps(metadata)})
    write_atomic(run_dir / STATE, data)


@dataclass
class SavedState:
    """A state file read back: its tensors and its JSON metadata."""

    path: Path
    tensors: dict[str, torch.Tensor]
    values: dict[str, Any]

    @property
    def config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.values["config"], str(self.path))

    @property
    def progress(self) -> Progress:
        values = dict(self.values["progress"])
        values["tally"] = EpochTally(**values["tally"])
        return Progress(**values)

    def weights(self, prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) + 1 :]: v for k, v in self.tensors.items() if k.startswith(prefix + ".")}

    @property
    def spec(self) -> ModelSpec:
        """The architecture the run was started with."""
        return ModelSpec.from_dict(self.values["model"])

    def check_spec(self, spec: ModelSpec, classes: list[str], saved_classes: list[str]) -> None:
        """Refuse to continue a state made for another architecture, class count or input shape."""
        saved = self.spec
        differences = [
            f"{key}: the checkpoint has {getattr(saved, key)!r}, this run has {getattr(spec, key)!r}"
            for key in ("name", "num_classes", "in_channels", "img_size")
            if getattr(saved, key) != getattr(spec, key)
        ]
        if classes != saved_classes:
            differences.append(f"classes: the run has {saved_classes}, the data now has {classes}")
        if differences:
            raise CnnkitError(f"{self.path} does not match: " + "; ".join(differences))

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        generator: torch.Generator,
        scaler: torch.amp.GradScaler | None = None,
    ) -> dict[str, torch.Tensor] | None:
        """Load everything back in place and return the best weights so far.

        With ``scheduler=None`` (a new learning-rate cycle begins) the optimizer keeps its
        moments but takes the new cycle's hyperparameters; with ``optimizer=None`` (a new
        fine-tuning phase begins, over other parameter groups) it starts afresh. An
        enabled fp16 ``scaler`` gets its saved scale and growth tracker back.
        """
        try:
            model.load_state_dict(self.weights("model"))
        except RuntimeError as error:
            raise CnnkitError(f"{self.path}: weights do not fit the model ({str(error).splitlines()[1:2]})") from None
        _restore_rng(self.tensors, self.values["rng"], generator)
        if optimizer is not None:
            self._restore_optimizer(optimizer, scheduler)
        if scaler is not None and scaler.is_enabled() and self.values.get("grad_scaler"):
            scaler.load_state_dict(self.values["grad_scaler"])
        return self.weights("best") or None

    def order_generator(self) -> torch.Generator | None:
        """A generator to draw the data order of an epoch stopped part-way; None when the training generator draws it.

        That epoch's order is drawn again from its starting state while the training
        generator, restored to its state at the save, continues the augmentation.
        """
        if not self.progress.tally.batches or "rng.augment" not in self.tensors:
            return None
        return torch.Generator().set_state(self.tensors["rng.order"])

    def _restore_optimizer(
        self, optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None
    ) -> None:
        saved = self.values["optimizer"]
        state: dict[int, dict[str, Any]] = {}
        for key, tensor in self.tensors.items():
            if key.startswith("optimizer."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = tensor
        for index, entries in saved["values"].items():
            state.setdefault(int(index), {}).update(entries)
        groups = saved["param_groups"] if scheduler is not None else optimizer.state_dict()["param_groups"]
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        match_parameter_layouts(optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(self.values["scheduler"])


def match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each restored moment its parameter's memory layout (channels_last or not), as training made it.

    The file holds them contiguous. The default Adam follows strides, but the fused kernel
    (``optim.adam_kernel``) pairs elements by memory position: a channels_last weight with a
    contiguous moment silently updates element i with another element's moment.
    """
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            entries = optimizer.state.get(parameter, {})
            for name, value in entries.items():
                tensor = isinstance(value, torch.Tensor) and value.shape == parameter.shape
                if tensor and value.stride() != parameter.stride():
                    entries[name] = torch.empty_like(parameter, dtype=value.dtype).copy_(value)


def carry_moments(old: torch.optim.Optimizer, new: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """Give ``new`` (built for a new learning-rate cycle) the moments ``old`` has learned."""
    new.load_state_dict({"state": old.state_dict()["state"], "param_groups": new.state_dict()["param_groups"]})
    return new


def read_state(run_dir: str | Path) -> SavedState:
    """Read and validate ``RUN/state.safetensors``.

    Raises:
        CnnkitError: no state, a truncated or malformed file, or not a cnnkit training state.
    """
    path = Path(run_dir).expanduser() / STATE
    if not path.is_file():
        raise CnnkitError(
            f"{Path(run_dir)} holds no resumable state ({STATE}); give a run directory written by `cnnkit train`"
        )
    _, metadata = read_header(path)
    tensors = load_tensors(path)
    try:
        values = json.loads(metadata["cnnkit.state"])
        if values.get("format") != FORMAT:
            raise ValueError(f"format {values.get('format')!r}")
    except (KeyError, ValueError, TypeError) as error:
        raise CnnkitError(f"{path} is not a cnnkit training state (metadata: {error})") from None
    return SavedState(path, tensors, values)


def resume_config(state: SavedState, overrides: dict[str, Any]) -> TrainConfig:
    """The run's own config with the few keys that may change on resume; any other change is refused."""
    config = state.config
    saved = config.to_dict()
    if overrides.get("devices", saved["devices"]) != saved["devices"]:
        raise CnnkitError(
            f"{state.path.parent} was trained on {saved['devices']} process(es) and is resumed on "
            f"{overrides['devices']}; resume it with --devices {saved['devices']}: each process's share of the batch "
            "would change, and the run would no longer continue bit for bit"
        )
    changed = sorted(k for k, v in overrides.items() if k not in RESUME_OVERRIDES and k in saved and saved[k] != v)
    if changed:
        details = ", ".join(f"{k} ({saved[k]!r} -> {overrides[k]!r})" for k in changed)
        raise CnnkitError(
            f"cannot change {details} when resuming: the run would no longer be the same run; "
            f"only {', '.join(sorted(RESUME_OVERRIDES))} may change. Start a new run instead"
        )
    values = {**saved, **{k: v for k, v in overrides.items() if k in RESUME_OVERRIDES}}
    if values["epochs"] < saved["epochs"]:
        raise CnnkitError(f"--epochs {values['epochs']} is fewer than the run's {saved['epochs']}; it can only grow")
    return TrainConfig.from_dict(values, str(state.path))


def truncate_logs(run_dir: Path, progress: Progress) -> None:
    """Drop log rows written after the state was saved, so a resumed run appends exactly where it stopped.

    Temporary files left by a save that was killed half-way are removed too.
    """
    for leftover in run_dir.glob(".*.safetensors.tmp*"):
        leftover.unlink()
    for name, column, last in (("metrics.csv", "epoch", progress.epoch), (STEPS, "step", progress.step)):
        path = run_dir / name
        if not path.exists():
            continue
        with open(path, newline="") as stream:
            rows = list(csv.reader(stream))
        if not rows:
            continue
        position = rows[0].index(column)
        kept = [rows[0]] + [r for r in rows[1:] if len(r) == len(rows[0]) and int(r[position]) <= last]
        with open(path, "w", newline="") as stream:
            csv.writer(stream).writerows(kept)

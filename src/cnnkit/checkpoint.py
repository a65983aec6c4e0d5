"""Self-describing, atomic, safe checkpoints.

A checkpoint is one safetensors file: the weights, plus a JSON document in the file's
header metadata (key ``cnnkit``) holding the architecture, class names, preprocessing,
training config and library versions. Nothing in it can run code when loaded.
"""

from __future__ import annotations

import errno
import importlib.metadata
import json
import os
from pathlib import Path

import safetensors.torch
import torch
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import CHECKPOINT_FORMAT, CheckpointInfo
from cnnkit.models.registry import build
from cnnkit.safeload import load_tensors, read_header

METADATA_KEY = "cnnkit"
BEST, LAST = "best.safetensors", "last.safetensors"


def versions() -> dict[str, str]:

    from cnnkit import __version__

    return {"cnnkit": __version__, "torch": torch.__version__, "torchvision": importlib.metadata.version("torchvision")}


class CheckpointWriteError(CnnkitError):
    """A checkpoint could not be written (full disk, I/O error); the previous file is intact."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file, fsync, read back and compare, then rename.

    A crash or a full disk leaves the old file or the new one, never a mix; the old file
    is replaced only once the new one has been read back from disk byte for byte.
    """
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(temporary, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        if temporary.read_bytes() != data:
            raise OSError(errno.EIO, "written file reads back different bytes", str(temporary))
        os.replace(temporary, path)
    except OSError as error:
        raise CheckpointWriteError(
            f"could not write {path}: {error.strerror or error}; the previous {path.name} is intact"
        ) from None
    finally:
        if temporary.exists():
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def save_checkpoint(path: Path, model: nn.Module, info: CheckpointInfo) -> None:
    """Save weights and metadata atomically as one safetensors file."""
    tensors = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    write_atomic(path, safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(info.to_dict())}))


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint file or a run directory (its best checkpoint, else its last)."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (BEST, LAST):
            if (path / name).is_file():
                return path / name
        raise CnnkitError(f"{path} holds no checkpoint ({BEST} or {LAST}); give a run directory from `cnnkit train`")
    if not path.exists():
        raise CnnkitError(f"checkpoint not found: {path}; give a run directory or a .safetensors file")
    return path


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], CheckpointInfo]:
    """Read weights and metadata, refusing anything that is not a cnnkit checkpoint."""
    path = resolve_checkpoint(path)
    not_ours = f"{path} is not a cnnkit checkpoint; give a run directory or a .safetensors file written by cnnkit"
    if path.suffix.lower() != ".safetensors":
        raise CnnkitError(not_ours)
    try:
        _, header = read_header(path)
        tensors = load_tensors(path)
    except CnnkitError as error:
        raise CnnkitError(f"{not_ours} ({error})") from None
    try:
        values = json.loads(header[METADATA_KEY])
        if values.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {values.get('format')!r}")
        info = CheckpointInfo.from_dict(values)
    except (KeyError, ValueError, TypeError) as error:
        raise CnnkitError(f"{not_ours} (metadata: {error})") from None
    return tensors, info


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, CheckpointInfo]:
    """Rebuild the model a checkpoint describes and load its weights, in eval mode."""
    tensors, info = read_checkpoint(path)
    model = build(info.model)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as error:
        from cnnkit import __version__

        saved_by = info.extra.get("versions", {}).get("cnnkit")
        hint = (
            f"; it was saved by cnnkit {saved_by}, whose {info.model.name} differs from this cnnkit {__version__}'s: "
            f"retrain it, or load it with cnnkit {saved_by}"
            if saved_by and saved_by != __version__
            else ""
        )
        raise CnnkitError(
            f"{resolve_checkpoint(path)}: weights do not fit {info.model.name} "
            f"({' '.join(line.strip() for line in str(error).splitlines()[1:2])}){hint}"
        ) from None
    return model.to(device).eval(), info

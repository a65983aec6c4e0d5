"""Read weights without ever running code: validated safetensors, or ``.pt`` files through ``weights_only``.

A pickle (the format of ``torch.save``) can execute anything while it is loaded. cnnkit
therefore reads ``.safetensors`` files only after checking their header against the file
(a header longer than the file, tensors past its end or overlapping each other, a size
that does not match the shape), and ``.pt``/``.pth`` files only with
``torch.load(weights_only=True)``, with no fallback to a full unpickle. Weights that hold
NaN or infinity are refused too: they come from a diverged run and would predict garbage.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from cnnkit.errors import CnnkitError

# torch.load(weights_only=True) had a known bypass before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)

# Bytes per element of each safetensors dtype.
DTYPE_SIZES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}

# A header this large is not a weights file (safetensors itself caps it at 100 MB).
MAX_HEADER_BYTES = 100_000_000


def require_safe_torch(version: str = torch.__version__) -> None:
    """Refuse to read ``.pt`` files with a torch whose ``weights_only`` loader can be bypassed."""
    numbers = tuple(int(part) for part in version.split("+")[0].split(".")[:2] if part.isdigit())
    if numbers < MIN_TORCH:
        raise CnnkitError(
            f"torch {version} can run code hidden in .pt files even with weights_only=True; "
            f"upgrade to torch>={'.'.join(map(str, MIN_TORCH))} or use a .safetensors file"
        )


def read_header(path: str | Path) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Validate a safetensors file's header against the file; return (tensor entries, metadata).

    Raises:
        CnnkitError: the file is truncated or its header is malformed; the message says how.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as stream:
            prefix = stream.read(8)
            if len(prefix) < 8:
                raise CnnkitError(f"{path} is not a safetensors file: only {size} bytes, truncated or empty")
            (header_size,) = struct.unpack("<Q", prefix)
            if header_size > min(MAX_HEADER_BYTES, size - 8):
                raise CnnkitError(
                    f"{path} is truncated or malformed: its header claims {header_size:,} bytes "
                    f"but the file holds {size:,} bytes"
                )
            header = json.loads(stream.read(header_size))
    except OSError as error:
        raise CnnkitError(f"cannot read {path}: {error.strerror or error}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CnnkitError(f"{path} is not a safetensors file: its header is not JSON ({error})") from None
    if not isinstance(header, dict):
        raise CnnkitError(f"{path} is not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_size
    ranges = []
    for name, entry in header.items():
        try:
            begin, end = (int(v) for v in entry["data_offsets"])
            count = math.prod(int(n) for n in entry["shape"])
            expected = count * DTYPE_SIZES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise CnnkitError(f"{path}: tensor {name!r} has a malformed header entry {entry!r}") from None
        if not 0 <= begin <= end <= data_size:
            raise CnnkitError(
                f"{path} is truncated or malformed: tensor {name!r} spans bytes {begin}-{end} "
                f"but the data section holds {data_size:,} bytes"
            )
        if end - begin != expected:
            raise CnnkitError(f"{path}: tensor {name!r} has {end - begin} bytes but its shape needs {expected}")
        ranges.append((begin, end, name))
    ranges.sort()
    for (_, end, first), (begin, _, second) in itertools.pairwise(ranges):
        if begin < end:
            raise CnnkitError(f"{path} is malformed: tensors {first!r} and {second!r} overlap")
    return header, metadata


def check_finite(tensors: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CnnkitError(f"{path}: tensor {name!r} holds NaN or infinite values (a diverged run?)")


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or ``.pt``/``.pth`` weights file into CPU tensors, never running code.

    Args:
        path: A ``.safetensors`` file (validated before reading) or a ``.pt``/``.pth`` file
            holding a dict of tensors (read with ``torch.load(weights_only=True)``).

    Returns:
        Tensor name to tensor.

    Raises:
        CnnkitError: the file is missing, malformed, truncated, holds anything but tensors,
            holds NaN/infinite weights, or is a pickle that ``weights_only`` refuses.

    Example:
        >>> tensors = load_tensors("runs/train/best.safetensors")
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnkitError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        read_header(path)
        try:
            tensors = safetensors.torch.load_file(str(path), device="cpu")
        except Exception as error:  # safetensors raises its own error types for every malformed file
            raise CnnkitError(f"{path} is not a valid safetensors file ({str(error).splitlines()[0]})") from None
    elif suffix in (".pt", ".pth"):
        require_safe_torch()
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # the unpickler refuses anything but tensors and plain containers
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise CnnkitError(
                f"refused to load {path}: it is not a plain weights file ({first_line}); "
                "cnnkit never unpickles code; save the weights with safetensors instead"
            ) from None
        if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise CnnkitError(f"{path} does not hold a dict of tensors (a state_dict); save model.state_dict()")
        tensors = {str(key): value for key, value in loaded.items()}
    else:
        raise CnnkitError(f"{path}: weights must be a .safetensors, .pt or .pth file")
    check_finite(tensors, path)
    return tensors

"""Read a weights file without running code: safetensors, or a PyTorch state dict through ``weights_only``."""

from __future__ import annotations

from pathlib import Path

import torch

from cnnkit.errors import CnnkitError


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` file, or of a ``.pt``/``.pth`` state dict read with ``weights_only=True``.

    Args:
        path: The weights file.

    Returns:
        Parameter name to tensor, on the CPU.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise CnnkitError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            import safetensors.torch

            return safetensors.torch.load_file(str(path))
        tensors = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # both readers raise many error types for malformed files
        raise CnnkitError(f"cannot read weights {path}: {type(error).__name__}: {str(error).splitlines()[0]}") from None
    if not isinstance(tensors, dict) or not all(isinstance(v, torch.Tensor) for v in tensors.values()):
        raise CnnkitError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return tensors

"""How the arithmetic runs: precision (fp32, bf16, fp16), memory format, allocator and compilation, chosen per machine.

The automatic choices follow measurements, not folklore: bf16 autocast only pays on CPUs
with native bf16 instructions (AVX-512 BF16 or AMX); on an AVX2-only CPU it measured about
20x slower than fp32 for the default ConvNet, so it stays off there. channels_last measured
1.4-1.7x faster than the default layout for training steps on that CPU, so it is on, and
keeping freed memory in glibc's heap made the step another 1.16x faster.
"""

from __future__ import annotations

import contextlib
import ctypes
import platform
from dataclasses import asdict, dataclass

import torch
from torch import nn

from cnnkit.errors import CnnkitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers (malloc.h)


@dataclass(frozen=True)
class ComputeSettings:
    """The resolved settings of one run; recorded with it so its speed can be explained later."""

    device: str
    precision: str
    memory_format: str
    compile: bool
    threads: int
    cpu_capability: str
    allocator: str = "default"  # "reuse": glibc keeps freed memory for the next step (keep_freed_memory)

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        compiled = ", compiled" if self.compile else ""
        reuse = ", memory reuse" if self.allocator == "reuse" else ""
        return f"{self.precision}, {self.memory_format}{compiled}{reuse}, {self.threads} threads"


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CnnkitError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnkitError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    return device


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def choose_precision(device: torch.device, requested: str = "auto") -> str:
    if requested not in PRECISIONS:
        raise CnnkitError(f"unknown precision {requested!r}; use one of: {', '.join(PRECISIONS)}")
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise CnnkitError("fp16 training is for GPUs; on the CPU use --precision bf16 or fp32")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type == "cpu" and cpu_has_fast_bf16():
        return "bf16"
    return "fp32"


def choose_memory_format(device: torch.device, requested: str = "auto") -> str:
    if requested not in MEMORY_FORMATS:
        raise CnnkitError(f"unknown memory format {requested!r}; use one of: {', '.join(MEMORY_FORMATS)}")
    if requested != "auto":
        return requested
    # oneDNN's and cuDNN's NHWC convolution kernels: 1.4-1.7x faster training steps than NCHW on an
    # AVX2 CPU in fp32 (benchmarks/train_step.py), and the layout tensor cores want on GPUs.
    return "channels_last" if device.type in ("cpu", "cuda") else "contiguous"


def choose_allocator(device: torch.device) -> str:
    """``reuse`` for CPU training where the C library is glibc (the only malloc this tunes)."""
    glibc = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    return "reuse" if device.type == "cpu" and glibc else "default"


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed blocks of up to 32 MB for reuse instead of handing them back to the kernel.

    A training step allocates and frees the same activation buffers every time. By
    default glibc serves blocks above a moving threshold with fresh ``mmap`` calls and
    unmaps them when freed, so every step faults its activations back in page by page,
    each page zeroed by the kernel: with the default ConvNet on Fashion-MNIST that was a
    sixth of a step on a 2-core CPU. Serving blocks up to 32 MB (glibc's largest
    threshold) from the heap and trimming the heap only beyond 256 MB of free space made
    the step 1.16x faster. Blocks larger than 32 MB still come from ``mmap``: keeping those
    too (no ``mmap`` at all) was 4% faster still but doubled the peak memory of 200-pixel
    training, through fragmentation, and got it killed under a 1 GB limit.
    """
    libc = ctypes.CDLL(None)  # the C library already loaded into this process
    libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20)
    libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20)


def resolve(
    device: torch.device, precision: str = "auto", memory_format: str = "auto", compile: bool = False
) -> ComputeSettings:
    """Resolve ``auto`` choices for ``device`` into :class:`ComputeSettings`."""
    chosen = choose_precision(device, precision)
    return ComputeSettings(
        device=str(device),
        precision=chosen,
        memory_format=choose_memory_format(device, memory_format),
        compile=compile,
        threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        allocator=choose_allocator(device),
    )


def autocast(settings: ComputeSettings) -> contextlib.AbstractContextManager:
    """The autocast context for the forward pass and loss; a no-op in fp32."""
    if settings.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if settings.precision == "bf16" else torch.float16
    return torch.autocast(torch.device(settings.device).type, dtype=dtype)


def grad_scaler(settings: ComputeSettings) -> torch.amp.GradScaler:
    """A loss scaler, enabled only for fp16 (bf16 has fp32's range and needs none)."""
    return torch.amp.GradScaler(torch.device(settings.device).type, enabled=settings.precision == "fp16")


def prepare_model(model: nn.Module, settings: ComputeSettings) -> nn.Module:
    """Move to the device and memory format, tune the allocator, and compile when asked."""
    if settings.allocator == "reuse":
        keep_freed_memory()
    model = model.to(settings.device)
    if settings.memory_format == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    return torch.compile(model) if settings.compile else model


def prepare_inputs(images: torch.Tensor, settings: ComputeSettings) -> torch.Tensor:
    if settings.memory_format == "channels_last" and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images

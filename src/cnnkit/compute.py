"""How the arithmetic runs: precision (fp32, bf16, fp16), memory format, allocator and compilation, chosen per machine.

The automatic choices follow measurements, not folklore: bf16 autocast only pays on CPUs
whose native bf16 instructions (AVX-512 BF16 or AMX) measure clearly faster than fp32 on
this machine (:func:`bf16_speedup`); on an AVX2-only CPU it measured about 20x slower than
fp32 for the default ConvNet, so it stays off there. channels_last measured
1.4-1.7x faster than the default layout for training steps on that CPU, so it is on, and
keeping freed memory in glibc's heap made the step another 1.16x faster.

``auto`` never keeps a precision that fails. Where bf16 is fast, it is still not chosen
for a model with a convolution whose bf16 weight gradient the CPU computes wrongly
(:func:`bf16_gradient_hazards`), and a run on ``auto``'s bf16 switches to fp32 at its first
NaN or infinite step (:func:`fall_back`), repeating that step. An explicit ``--precision
bf16`` is kept as asked and stops at such a step like any other.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

from cnnkit.errors import CnnkitError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
MEMORY_FORMATS = ("auto", "contiguous", "channels_last")
# bf16 autocast adds casts around every kernel, so it must beat fp32 matrix products clearly to pay.
BF16_MIN_SPEEDUP = 1.3
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
    precision_requested: str = ""  # what was asked for: "auto" may fall back to fp32, an explicit choice never
    precision_note: str = ""  # why auto chose as it did, or when it switched

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        compiled = ", compiled" if self.compile else ""
        reuse = ", memory reuse" if self.allocator == "reuse" else ""
        note = f"; {self.precision_note}" if self.precision_note else ""
        return f"{self.precision}, {self.memory_format}{compiled}{reuse}, {self.threads} threads{note}"


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
    """True where the CPU has bf16 matrix instructions (AVX-512 BF16 or AMX) and they measure fast here.

    The instructions alone do not make bf16 pay: on a 2-core Xeon with AVX-512 BF16 and VNNI
    but no AMX, bf16 matrix products ran at 150 GFLOP/s against fp32's 272, and the default
    ConvNet's training step at 0.81x fp32's; an earlier CPU of the same family (with AMX)
    ran bf16 at 867 GFLOP/s and the step 2.26x faster. So ``auto`` asks :func:`bf16_speedup`.
    """
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if not any(getattr(torch.cpu, name, lambda: False)() for name in checks):
        return False
    return bf16_speedup() >= BF16_MIN_SPEEDUP


@functools.lru_cache(maxsize=1)
def bf16_speedup(size: int = 512, calls: int = 6) -> float:
    """bf16 over fp32 matrix-product throughput on this CPU, measured once per process (about 0.1 s).

    Best of ``calls`` timed products of two ``size`` x ``size`` matrices each, after one warm-up,
    so a moment of load from another process does not decide the choice.
    """

    def best_seconds(dtype: torch.dtype) -> float:
        numbers = torch.Generator().manual_seed(0)  # its own: the global RNG, seeded by a run, draws dropout
        a, b = (torch.randn(size, size, generator=numbers).to(dtype) for _ in range(2))
        torch.mm(a, b)
        times = []
        for _ in range(calls):
            start = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - start)
        return min(times)

    return best_seconds(torch.float32) / best_seconds(torch.bfloat16)


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


def bf16_gradient_hazards(model: nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Names of the convolutions in ``model`` whose bf16 weight gradient the CPU gets wrong, from one forward pass.

    Measured with torch 2.14 (oneDNN) on an AVX-512 BF16 Xeon: when a convolution pads its
    last spatial axis and its stride there is larger than its input there (a stride-2 3x3
    convolution on a 1-pixel map: resnet18's last stage and mobilenet_v2's on 8-pixel
    digits), the bf16 weight gradient was wrong in most random draws and NaN or infinite in
    a third of them, while fp32 was exact. A wrong but finite gradient trains silently
    badly, so no NaN check could catch every case. Cheaper shapes of the same kind (a
    2-pixel input, no padding) were right.

    Args:
        model: The network, in training or evaluation mode (restored afterwards).
        input_shape: One input without the batch axis, e.g. ``(C, H, W)``.
    """
    found: list[str] = []

    def check(name: str) -> Callable:
        def hook(module: nn.modules.conv._ConvNd, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            padded = not isinstance(module.padding, str) and module.padding[-1] > 0
            if padded and module.stride[-1] > inputs[0].shape[-1]:
                found.append(name)

        return hook

    convolutions = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)]
    handles = [module.register_forward_hook(check(name)) for name, module in convolutions]
    training = model.training
    parameter = next(model.parameters(), None)
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape, device=parameter.device if parameter is not None else "cpu"))
    finally:
        model.train(training)
        for handle in handles:
            handle.remove()
    return found


def resolve(
    device: torch.device,
    precision: str = "auto",
    memory_format: str = "auto",
    compile: bool = False,
    model: nn.Module | None = None,
    input_shape: tuple[int, ...] | None = None,
) -> ComputeSettings:
    """Resolve ``auto`` choices for ``device`` into :class:`ComputeSettings`.

    Given ``model`` and its ``input_shape`` (C, H, W), ``auto`` on the CPU checks it for
    :func:`bf16_gradient_hazards` before choosing bf16.
    """
    chosen = choose_precision(device, precision)
    note = ""
    probe = chosen == "bf16" and device.type == "cpu" and model is not None and input_shape is not None
    if hazards := bf16_gradient_hazards(model, input_shape) if probe else []:
        shown = ", ".join(hazards[:3]) + (f" and {len(hazards) - 3} more" if len(hazards) > 3 else "")
        problem = f"bf16 weight gradients of {shown} are wrong on this CPU (stride above a 1-pixel map)"
        if precision == "auto":
            chosen, note = "fp32", f"auto: fp32, because {problem}"
        else:
            note = f"bf16 as asked, although {problem}"
    if precision == "auto" and chosen == "bf16":
        note = "auto: bf16 with fp32 fall-back"
    return ComputeSettings(
        device=str(device),
        precision=chosen,
        memory_format=choose_memory_format(device, memory_format),
        compile=compile,
        threads=torch.get_num_threads(),
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        allocator=choose_allocator(device),
        precision_requested=precision,
        precision_note=note,
    )


def fall_back(settings: ComputeSettings, step: str) -> ComputeSettings | None:
    """The fp32 settings a run on ``auto``'s bf16 continues with after a NaN or infinite ``step``; else None.

    bf16 keeps fp32's range, so on the CPU such a step comes from a bf16 kernel rather than
    the learning rate (resnet18 on the digits stopped at step 1 this way); fp32 repeats it.
    """
    if settings.precision != "bf16" or settings.precision_requested != "auto":
        return None
    return replace(settings, precision="fp32", precision_note=f"auto: bf16 until {step}, then fp32")


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

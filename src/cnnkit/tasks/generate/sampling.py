"""Images from a trained generator: PNG files in class folders, the same bytes for the same seed.

What ``cnnkit generate RUN --num N --out DIR`` writes is a folder ``cnnkit train --data DIR``
reads (the ImageFolder layout), so synthetic images join a training set without a conversion
step. Where the numbers come from, and why:

- Noise: :func:`~cnnkit.models.gan.latent_noise` in blocks of :data:`BLOCK` images, each block
  seeded by a hash of (seed, class, block). A class's images therefore depend on neither the
  other classes generated nor ``num``: ``--class cat`` writes the files of ``cat/`` in a
  generation of every class, ``--num 10`` the first ten of ``--num 1000``, and the service's
  grid of ``count`` images is the first ``count`` files of ``cnnkit generate`` with the same seed.
- The network: the generator's EMA copy in eval mode (:meth:`ConditionalGAN.forward`), in
  float32, always :data:`BLOCK` images per forward pass (the last block is run whole and cut).
  The pass size is fixed because it changes the arithmetic: measured on this CPU, an untrained
  32 px dcgan's outputs at batch 7 and at batch 300 differ by up to 4e-6, enough to move a pixel
  that sits on a rounding boundary by one level, while within a batch of one size each image is
  computed alone (other rows do not change its bits). The same bytes need the same device and
  library versions: another device's arithmetic differs by rounding too.
- Pixels: :func:`~cnnkit.models.gan.to_uint8`, written as 8-bit grayscale PNG for a 1-channel
  model and RGB for a 3-channel one, in files named ``s<seed>_<index>.png`` that sort in
  generation order, into a hidden staging folder beside ``out`` that becomes ``out`` once the
  last file is written: a reader never sees half a generation, and a failure leaves none.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnkit.checkpoint import load_model, resolve_checkpoint
from cnnkit.compute import select_device
from cnnkit.config import COUNT, TrainConfig
from cnnkit.errors import CnnkitError, did_you_mean
from cnnkit.modelinfo import CheckpointInfo
from cnnkit.models.gan import ConditionalGAN, latent_noise, to_uint8
from cnnkit.tasks.generate import is_generation_run

# Images per forward pass, fixed so that the bytes do not depend on a batch size (module docstring). Small,
# so a grid of 16 costs one pass.
BLOCK = 16
SEEDS = next(spec.metadata["range"] for spec in fields(TrainConfig) if spec.name == "seed")  # training's seed range
INDEX_DIGITS = 5  # file numbers are zero-padded to at least this width, so names sort in generation order


def load_generator(run: str | Path, device: torch.device | str = "cpu") -> tuple[ConditionalGAN, CheckpointInfo]:
    """The trained generator of ``run`` (a run directory or checkpoint), in eval mode; other runs are refused."""
    path = resolve_checkpoint(run)
    if path.suffix.lower() == ".onnx":  # the noise is PyTorch's generator, so the files come from the run
        raise CnnkitError(f"{path} is an ONNX export; give the run it was exported from (its best.safetensors)")
    if not is_generation_run(path):
        raise CnnkitError(
            f"{path} is not a generator; give a run of `cnnkit train --task generate` (its best.safetensors)"
        )
    model, info = load_model(path, device)
    return model, info


def class_index(info: CheckpointInfo, class_name: str) -> int:
    """The label of ``class_name`` in the run, refused in one line that lists the run's classes."""
    if class_name in info.classes:
        return info.classes.index(class_name)
    shown = ", ".join(info.classes[:30]) + (f" and {len(info.classes) - 30} more" if len(info.classes) > 30 else "")
    raise CnnkitError(
        f"--class {class_name!r} is not a class of this run{did_you_mean(class_name, info.classes)}; "
        f"it generates {shown}"
    )


def class_folder(class_name: str) -> str:
    """The folder a class's images go in: its name, with path separators (``T-shirt/top``) made ``_``."""
    name = class_name.replace("/", "_").replace("\\", "_")
    return f"_{name}" if name.startswith(".") or name in ("", "..") else name  # a dot-folder is hidden from readers


def block_noise(latent_dim: int, label: int, block: int, seed: int) -> torch.Tensor:
    """The noise (BLOCK, latent_dim) of block ``block`` of class ``label`` under ``seed``, the same everywhere.

    Its seed is a hash of the three, so no two (seed, class, block) share noise.
    """
    digest = hashlib.sha256(f"cnnkit.generate/{seed}/{label}/{block}".encode()).digest()
    return latent_noise(BLOCK, latent_dim, int.from_bytes(digest[:8], "little"))


def class_noise(latent_dim: int, label: int, count: int, seed: int) -> torch.Tensor:
    """The noise (count, latent_dim) of the first ``count`` images of class ``label`` under ``seed``."""
    return torch.cat([block_noise(latent_dim, label, block, seed) for block in range(-(-count // BLOCK))])[:count]


@torch.no_grad()
def sample_blocks(model: ConditionalGAN, label: int, count: int, seed: int = 0) -> Iterator[torch.Tensor]:
    """The first ``count`` images of class ``label`` under ``seed``, one block at a time: uint8 (≤ BLOCK, C, H, W).

    Args:
        model: A generator in eval mode (:func:`load_generator`), on any device.
        label: The class index.
        count: How many images.
        seed: The noise seed, 0 or more. Defaults to 0.
    """
    device = next(model.parameters()).device
    labels = torch.full((BLOCK,), label, dtype=torch.int64, device=device)
    for start in range(0, count, BLOCK):
        noise = block_noise(model.latent_dim, label, start // BLOCK, seed)  # (BLOCK, latent_dim)
        yield to_uint8(model(noise.to(device), labels)).cpu()[: count - start]  # the whole block runs, then is cut


def sample_class(model: ConditionalGAN, label: int, count: int, seed: int = 0) -> torch.Tensor:
    """:func:`sample_blocks` as one uint8 tensor (count, C, H, W) on the CPU.

    Example:
        >>> model, info = load_generator("runs/train")
        >>> sample_class(model, info.classes.index("7"), 16, seed=3).shape
        torch.Size([16, 1, 8, 8])
    """
    return torch.cat(list(sample_blocks(model, label, count, seed)))


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of one uint8 image (C, H, W): grayscale for one channel, RGB for three."""
    pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
    stream = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(stream, format="PNG")
    return stream.getvalue()


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CnnkitError(f"--out {out} is a file; give a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise CnnkitError(
            f"--out {out} already holds files, and generated images never overwrite anything; "
            "give a new or empty folder"
        )


def generate_images(
    run: str | Path,
    num: int,
    out: str | Path,
    class_name: str | None = None,
    seed: int = 0,
    device: str = "auto",
) -> dict[str, int]:
    """Write ``num`` PNG images per class (or of one class) to ``out/<class>/``, ready for ``cnnkit train --data``.

    The same run, seed and device give the same files, byte for byte; a smaller ``num`` gives the first
    files of a larger one, and ``class_name`` the files of that class in a generation of all (module docstring).

    Args:
        run: A run directory of ``cnnkit train --task generate``, or its checkpoint.
        num: Images per class, 1 or more.
        out: A new or empty folder; it is created.
        class_name: Only this class. Defaults to None (every class of the run).
        seed: The noise seed, 0 or more. Defaults to 0.
        device: ``auto``, ``cpu``, ``cuda`` or ``mps``. Defaults to ``auto``.

    Returns:
        Images written per class name, in the run's class order.

    Raises:
        CnnkitError: ``num`` below 1, a negative seed, a class the run does not have, a run that is not a
            generator, an ``out`` that already holds files, or a failed write (a full disk); nothing is written
            then: the files appear in ``out`` all at once, after the last is written.

    Example:
        >>> generate_images("runs/train", 100, "synthetic", seed=3)
        {'0': 100, '1': 100, ...}
    """
    for flag, value, limits in (("--num", num, COUNT), ("--seed", seed, SEEDS)):
        if problem := limits.problem(value):
            raise CnnkitError(f"{flag} {problem}")
    out = Path(out).expanduser()
    _check_out(out)
    model, info = load_generator(run, select_device(device))
    labels = range(len(info.classes)) if class_name is None else [class_index(info, class_name)]
    folders = [class_folder(info.classes[label]) for label in labels]
    if len(set(folders)) < len(folders):
        raise CnnkitError(f"{run}: two class names give the same folder name ({', '.join(folders)}); rename one")
    width = max(INDEX_DIGITS, len(str(num - 1)))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.with_name(f".{out.name}.partial{os.getpid()}")  # the whole folder appears at once, or nothing
    staging.mkdir()
    try:
        written = {}
        for label, folder in zip(labels, folders):
            (staging / folder).mkdir()
            images = (image for block in sample_blocks(model, label, num, seed) for image in block.numpy())
            for index, image in enumerate(images):  # written block by block: memory stays flat for any num
                (staging / folder / f"s{seed}_{index:0{width}d}.png").write_bytes(encode_png(image))
            written[info.classes[label]] = num
        staging.replace(out)  # onto a missing or still empty folder; one that gained files meanwhile refuses
    except OSError as error:
        reason = error.strerror or error
        raise CnnkitError(f"could not write the images to {out}: {reason}; nothing was written") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # after a failure or Ctrl-C: no half-written folder stays
    return written

"""One GAN training step, timed: cnnkit's ``dcgan`` by width, precision and memory format, and the shipped example's.

Where ``benchmarks/gan.py`` times whole epochs, this isolates the step (both networks' forward,
backward and Adam update on one batch of random images, no data path), which is how the width
rule in ``cnnkit.tasks.generate.default_width`` and the bf16 check were measured. cnnkit's step
follows ``training/generate_epoch``: the discriminator on translated real and fake images with
hinge loss, then the generator through it, then the EMA; the example's is ``dcgan/main.py``'s
on its own 64 px networks (``benchmarks/gan.py``'s copies). Run it on an idle machine:

    python benchmarks/gan_step.py                          # width 64 and 32, fp32 and bf16, 32 px, torch threads
    python benchmarks/gan_step.py --widths 32 --precisions fp32 --formats contiguous
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
import time

import torch
from gan import (
    EXAMPLE_BETAS,
    EXAMPLE_LR,
    EXAMPLE_NZ,
    EXAMPLE_SIZE,
    example_discriminator,
    example_generator,
    shipped_step,
)
from torch.nn import functional as F

from cnnkit.models.gan import ConditionalGAN
from cnnkit.training.generate_epoch import translate


def cnnkit_step(gan: ConditionalGAN, optimizer, real, labels, precision: str, generator: torch.Generator) -> None:
    """One step of cnnkit's GAN recipe on ``real`` (B, C, H, W) in [-1, 1] (no clipping, no loss read-back)."""
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with cast:
        fake = gan.generator(torch.randn(len(real), gan.latent_dim), labels)
        real_scores = gan.discriminator(translate(real, generator), labels).float()
        fake_scores = gan.discriminator(translate(fake.detach(), generator), labels).float()
        d_loss = F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.step()
    gan.discriminator.requires_grad_(False)
    with cast:
        g_loss = -gan.discriminator(translate(fake, generator), labels).float().mean()
    optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer.step()
    gan.discriminator.requires_grad_(True)
    gan.update_ema(0.999)


def seconds_per_step(step, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - start) / repeats


def time_cnnkit(args: argparse.Namespace, width: int, precision: str, memory_format: str) -> float:
    """Seconds per step of a fresh ``dcgan`` of ``width`` in ``precision`` and ``memory_format``."""
    torch.manual_seed(0)
    gan = ConditionalGAN(10, args.channels, args.img_size, width=width)
    real = torch.rand(args.batch_size, args.channels, args.img_size, args.img_size) * 2 - 1  # (B, C, H, W)
    if memory_format == "channels_last":
        gan, real = gan.to(memory_format=torch.channels_last), real.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (args.batch_size,))
    optimizer = torch.optim.Adam(gan.parameters(), lr=1e-4, betas=(0.0, 0.9))
    step = functools.partial(cnnkit_step, gan, optimizer, real, labels, precision, torch.Generator().manual_seed(0))
    return seconds_per_step(step, 2, args.repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "bf16"), default=["fp32", "bf16"])
    parser.add_argument("--formats", nargs="+", choices=("channels_last", "contiguous"), default=["channels_last"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads, batch {args.batch_size}")
    for width, memory_format, precision in itertools.product(args.widths, args.formats, args.precisions):
        seconds = time_cnnkit(args, width, precision, memory_format)
        print(f"cnnkit dcgan width {width} at {args.img_size} px, {precision}, {memory_format}: {seconds:.3f} s/step")
    torch.manual_seed(0)
    networks = (example_generator(args.channels), example_discriminator(args.channels))
    optimizers = [torch.optim.Adam(n.parameters(), lr=EXAMPLE_LR, betas=EXAMPLE_BETAS) for n in networks[::-1]]  # D, G
    real = torch.rand(args.batch_size, args.channels, EXAMPLE_SIZE, EXAMPLE_SIZE) * 2 - 1
    step = functools.partial(shipped_step, networks, optimizers, real, None)
    seconds = seconds_per_step(step, 2, args.repeats)
    print(f"example as shipped (nz {EXAMPLE_NZ}, {EXAMPLE_SIZE} px), fp32, contiguous: {seconds:.3f} s/step")


if __name__ == "__main__":
    main()

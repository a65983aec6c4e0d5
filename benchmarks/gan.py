"""GAN epoch time: ``cnnkit train --task generate`` against the PyTorch examples' DCGAN loop, and quality per second.

Both sides train on the same training images (the cnnkit run's ``split.json``) with the same batch size:

- **example**: the training loop of github.com/pytorch/examples ``dcgan/main.py``. A torchvision
  dataset hands out one PIL image per item and the per-sample transforms make it a tensor
  (``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize(0.5, 0.5)``, as the example's folder
  and MNIST datasets do): for a built-in, the images in memory, read the way
  ``torchvision.datasets.MNIST.__getitem__`` reads them; for a folder, ``ImageFolder`` on the
  PNG/JPEG files. A ``DataLoader`` with ``--workers`` processes shuffles and batches them. Each
  step: the discriminator on a real batch and on a generated one with BCE loss (real 1, fake 0),
  one Adam step (lr 2e-4, betas 0.5/0.999, the example's), then the generator on the same fakes
  against label 1, one Adam step. fp32, default memory format. Its networks (``--example-networks``):

  - ``shipped`` (the default): the example's own, as ``main.py`` defines them and a user runs
    them: unconditional, ``nz`` 100, ``ngf`` = ``ndf`` = 64, images resized to its ``imageSize``
    64 (its networks are fixed at 64 px), ``weights_init`` (normal 0.02), ``Sigmoid`` + ``BCELoss``.
    This is the example as shipped against cnnkit as shipped; each side's networks are its own,
    so the quality figures below say what each recipe's seconds buy.
  - ``cnnkit``: cnnkit's ``dcgan`` on both sides, rebuilt from the cnnkit run's ``ModelSpec``
    (class-conditional; the discriminator returns logits, so ``BCEWithLogitsLoss``; each fake's
    class drawn uniformly; no ``weights_init``): the loops alone, same networks.

  The example's per-step print, its image dump every 100 steps and its per-epoch ``torch.save``
  are left out (which favours the example: cnnkit's epoch time includes its sample grid,
  checkpoints and quality figures).
- **cnnkit**: ``cnnkit train --task generate --data DATA`` in its own process, as a user runs it;
  the epoch times and quality figures are its run's ``metrics.csv``. cnnkit keeps its own recipe:
  hinge loss, TTUR learning rates, Adam betas 0/0.9, the EMA generator, its batch pipeline and its
  compute choices (``--precision auto``). The judge cnnkit trains before the first epoch is outside
  both epoch times; the script prints the whole command's wall time too.

After its epochs the example's generator is scored by the cnnkit run's judge on the same
validation images (its images resized to the judge's side by the judge's own rule; the shipped
generator sampled in training mode, as the example samples its own dumps; the example has no
EMA), so the quality the two recipes reach can be compared. The shipped generator is
unconditional: the judge's class accuracy of its images is chance (1 / classes) by construction.

Each side runs in a fresh process (the same ``--threads``), so settings one makes for its
process cannot help or hurt the other. Time it on an idle machine; on a shared one the seconds
are meaningless. Target (issue 17): cnnkit's epoch at least 2x faster.

    python benchmarks/gan.py --data fashion-mnist --epochs 5
    python benchmarks/gan.py --data digits --epochs 20
    python benchmarks/gan.py --data digits --epochs 20 --example-networks cnnkit   # the loops alone
    python benchmarks/gan.py --data digits --limit 512 --epochs 1      # a check (a folder of 512 PNGs)
    python benchmarks/gan.py --data fashion-mnist --device cuda       # both sides on a GPU
"""

from __future__ import annotations

import argparse
import csv
import functools
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from audio_pipeline import cpu_model
from PIL import Image
from scarce_folder import write_split
from torch import nn

from cnnkit.checkpoint import load_model, read_checkpoint
from cnnkit.data import load_data
from cnnkit.data.builtin import BUILTINS
from cnnkit.models import build
from cnnkit.tasks.generate import QUALITY_PER_CLASS, QUALITY_SEED
from cnnkit.tasks.generate.quality import NAMES, judge_images, measure_quality
from cnnkit.training.generate_session import QUALITY_KEYS

EXAMPLE_LR, EXAMPLE_BETAS = 2e-4, (0.5, 0.999)  # dcgan/main.py's defaults
EXAMPLE_NZ, EXAMPLE_WIDTH, EXAMPLE_SIZE = 100, 64, 64  # its --nz, --ngf and --ndf, --imageSize


def example_generator(channels: int) -> nn.Sequential:
    """dcgan/main.py's ``Generator``: noise (B, nz, 1, 1) -> (B, C, 64, 64), transposed convolutions 4 -> 64 px."""
    widths = [EXAMPLE_WIDTH * factor for factor in (8, 4, 2, 1)]
    layers: list[nn.Module] = [nn.ConvTranspose2d(EXAMPLE_NZ, widths[0], 4, 1, 0, bias=False)]
    for wide, narrow in itertools.pairwise(widths):
        layers += [nn.BatchNorm2d(wide), nn.ReLU(True), nn.ConvTranspose2d(wide, narrow, 4, 2, 1, bias=False)]
    layers += [nn.BatchNorm2d(widths[-1]), nn.ReLU(True), nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False)]
    return nn.Sequential(*layers, nn.Tanh())


def example_discriminator(channels: int) -> nn.Sequential:
    """dcgan/main.py's ``Discriminator``: (B, C, 64, 64) -> (B, 1, 1, 1) probabilities, strided convolutions."""
    widths = [EXAMPLE_WIDTH * factor for factor in (1, 2, 4, 8)]
    layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    for narrow, wide in itertools.pairwise(widths):
        layers += [nn.Conv2d(narrow, wide, 4, 2, 1, bias=False), nn.BatchNorm2d(wide), nn.LeakyReLU(0.2, True)]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Sigmoid())


def example_weights_init(module: nn.Module) -> None:
    """dcgan/main.py's ``weights_init``: convolutions N(0, 0.02), batch-norm gains N(1, 0.02) and zero biases."""
    if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Unconditional(nn.Module):
    """The shipped example's generator behind cnnkit's ``(noise, labels) -> images`` interface, for the judge.

    The labels are ignored (the example cannot be told a class); it samples in training mode,
    with the batch's statistics, as the example makes its own image dumps.
    """

    def __init__(self, generator: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.generator_ema, self.num_classes, self.latent_dim = generator, num_classes, EXAMPLE_NZ

    def forward(self, noise: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        self.generator_ema.train()
        return self.generator_ema(noise[:, :, None, None])


class ExampleImages(torch.utils.data.Dataset):
    """torchvision's MNIST-style dataset: uint8 images held in memory, one PIL image per item, then the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        pixels = self.images[index].numpy()  # (C, H, W)
        image = Image.fromarray(pixels[0], mode="L") if len(pixels) == 1 else Image.fromarray(pixels.transpose(1, 2, 0))
        return self.transform(image), int(self.labels[index])


def example_dataset(data: str, run_dir: Path, classes: list[str], img_size: int, channels: int):
    """The cnnkit run's training images (its ``split.json``) as the example's dataset with per-sample transforms."""
    import torchvision
    from torchvision import transforms

    gray = [transforms.Grayscale(1)] if channels == 1 else []  # ImageFolder's loader gives RGB
    resize = [transforms.Resize(img_size), transforms.CenterCrop(img_size), transforms.ToTensor()]
    transform = transforms.Compose([*gray, *resize, transforms.Normalize((0.5,) * channels, (0.5,) * channels)])
    train_sources = set(json.loads((run_dir / "split.json").read_text())["train"])
    if data in BUILTINS:  # at the dataset's own size: the example resizes each item
        train = load_data(data).train
        keep = torch.tensor([source in train_sources for source in train.sources])
        return ExampleImages(train.images[keep], train.labels[keep], transform)
    root = Path(data).resolve()
    folder = torchvision.datasets.ImageFolder(
        root, transform, is_valid_file=lambda path: Path(path).resolve().relative_to(root).as_posix() in train_sources
    )
    index = {name: classes.index(name) for name in folder.classes}  # the judge's class order, by name
    folder.target_transform = lambda target: index[folder.classes[target]]
    return folder


def shipped_step(networks: tuple[nn.Module, nn.Module], optimizers, real: torch.Tensor, _labels) -> None:
    """One step of dcgan/main.py on its own networks: D on real (1) and fake (0), then G on the same fakes (1)."""
    generator, discriminator = networks
    optimizer_d, optimizer_g = optimizers
    criterion, batch = nn.BCELoss(), len(real)
    real_target, fake_target = torch.ones(batch, device=real.device), torch.zeros(batch, device=real.device)
    discriminator.zero_grad()
    criterion(discriminator(real).view(-1), real_target).backward()
    fake = generator(torch.randn(batch, EXAMPLE_NZ, 1, 1, device=real.device))
    criterion(discriminator(fake.detach()).view(-1), fake_target).backward()
    optimizer_d.step()
    generator.zero_grad()
    criterion(discriminator(fake).view(-1), real_target).backward()  # fakes are "real" for G's loss
    optimizer_g.step()


def same_networks_step(networks, optimizers, real: torch.Tensor, labels: torch.Tensor, gan=None) -> None:
    """The same loop on cnnkit's conditional networks: logits, so BCE with logits; fakes of uniform classes."""
    generator, discriminator = networks
    optimizer_d, optimizer_g = optimizers
    criterion, batch, device = nn.BCEWithLogitsLoss(), len(real), real.device
    real_target, fake_target = torch.ones(batch, device=device), torch.zeros(batch, device=device)
    discriminator.zero_grad()
    criterion(discriminator(real, labels), real_target).backward()
    noise = torch.randn(batch, gan.latent_dim, device=device)
    fake_labels = torch.randint(gan.num_classes, (batch,), device=device)
    fake = generator(noise, fake_labels)
    criterion(discriminator(fake.detach(), fake_labels), fake_target).backward()
    optimizer_d.step()
    generator.zero_grad()
    criterion(discriminator(fake, fake_labels), real_target).backward()
    optimizer_g.step()


def example_epochs(args: argparse.Namespace) -> dict:
    """The example's loop on the cnnkit run's training images: seconds per epoch, then the judge's figures."""
    torch.set_num_threads(args.threads)
    run_dir = Path(args.reference)
    _, info = read_checkpoint(run_dir / "best.safetensors")  # its spec and classes; the example starts afresh
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    spec = info.model
    if args.example_networks == "shipped":
        generator, discriminator = example_generator(spec.in_channels), example_discriminator(spec.in_channels)
        generator.apply(example_weights_init), discriminator.apply(example_weights_init)
        generator, discriminator = generator.to(device), discriminator.to(device)
        scored, img_size, step = Unconditional(generator, len(info.classes)), EXAMPLE_SIZE, shipped_step
    else:
        gan = build(spec).to(device)
        generator, discriminator, scored, img_size = gan.generator, gan.discriminator, gan, spec.img_size
        step = functools.partial(same_networks_step, gan=gan)
    dataset = example_dataset(args.data, run_dir, info.classes, img_size, spec.in_channels)
    start, probe = time.perf_counter(), min(len(dataset), 256)
    for index in range(probe):
        dataset[index]
    item_seconds = (time.perf_counter() - start) / probe  # how much of the example's step is its data
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    optimizers = [
        torch.optim.Adam(network.parameters(), lr=EXAMPLE_LR, betas=EXAMPLE_BETAS)
        for network in (discriminator, generator)
    ]
    generator.train(), discriminator.train()
    seconds = []
    for _ in range(args.epochs):
        start = time.perf_counter()
        for real, labels in loader:  # (B, C, H, W) in [-1, 1], (B,)
            step((generator, discriminator), optimizers, real.to(device), labels.to(device))
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    if args.example_networks == "cnnkit":
        gan.generator_ema.load_state_dict(generator.state_dict())  # the example has no EMA: score what it trained
    judge, judge_info = load_model(run_dir / "judge" / "best.safetensors", device)
    val = load_data(args.data, img_size=spec.img_size, channels=spec.in_channels).val
    real_features = judge_images(judge, judge_info.preprocessing, val.images, device)[0]  # cnnkit caches them too
    figures = (judge, judge_info.preprocessing, val.images, val.labels, QUALITY_PER_CLASS, QUALITY_SEED, device)
    quality = measure_quality(scored, *figures, info.classes, real_features)  # what cnnkit's epochs are scored with
    cnnkit_gan, _ = load_model(run_dir / "best.safetensors", device)
    start = time.perf_counter()
    measure_quality(cnnkit_gan, *figures, info.classes, real_features)
    measured = time.perf_counter() - start  # what each cnnkit epoch spends on its figures
    parameters = sum(p.numel() for network in (generator, discriminator) for p in network.parameters())
    return {
        "seconds": seconds, "images": len(dataset), "item_seconds": item_seconds, "quality": quality.to_dict(),
        "quality_seconds": measured, "img_size": img_size, "parameters": parameters,
        "networks": args.example_networks,
    }  # fmt: skip


def write_folder(name: str, limit: int, folder: Path) -> Path:
    """The first ``limit`` training images of a built-in as PNG files in class folders (a check on little data)."""
    train = load_data(name).train
    write_split(train.slice(0, min(limit, len(train))), folder)
    return folder


def run_cnnkit(args: argparse.Namespace, data: str, out: Path, environment: dict) -> tuple[Path, float]:
    """``cnnkit train --task generate`` in its own process: its run directory and the command's wall time."""
    command = [sys.executable, "-m", "cnnkit", "train", "--task", "generate", "--data", data]
    command += ["--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--seed", str(args.seed)]
    command += ["--workers", str(args.workers), "--device", args.device, "--out", str(out), "--name", "gan"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"cnnkit train failed ({' '.join(command[1:])}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return out / "gan", wall


def run_example(args: argparse.Namespace, data: str, run_dir: Path, scratch: Path, environment: dict) -> dict:
    """:func:`example_epochs` in a fresh process of this script."""
    result = scratch / "example.json"
    command = [sys.executable, __file__, "--data", data, "--epochs", str(args.epochs), "--seed", str(args.seed)]
    command += ["--batch-size", str(args.batch_size), "--workers", str(args.workers), "--threads", str(args.threads)]
    command += ["--device", args.device, "--example-networks", args.example_networks]
    command += ["--reference", str(run_dir), "--json", str(result)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment)
    if done.returncode != 0:
        raise SystemExit(f"the example's loop failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(result.read_text())


def print_report(rows: list[dict], example: dict, wall: float) -> None:
    """Epoch times side by side, then cnnkit's quality per epoch against its training time."""
    theirs = example["seconds"]
    print("\nepoch  example s  cnnkit s  ratio (example / cnnkit)")
    for epoch, (a, row) in enumerate(zip(theirs, rows), start=1):
        b = float(row["seconds"])
        print(f"{epoch:>5}  {a:>9.2f}  {b:>8.2f}  {a / b:>5.2f}x")
    total_theirs, total_ours = sum(theirs), sum(float(row["seconds"]) for row in rows)
    print(f"total  {total_theirs:>9.2f}  {total_ours:>8.2f}  {total_theirs / total_ours:>5.2f}x   (target: >= 2x)")
    figures = example["quality_seconds"]
    training = total_ours - figures * len(rows)
    alone = f"{training / len(rows):.2f} s/epoch, {total_theirs / training:.2f}x" if training > 0 else "n/a"
    timed = f"{figures:.2f} s each (its best generator, timed on the example's side)"
    print(f"cnnkit's epochs include the quality figures, {timed}; without them: {alone}")
    print(f"cnnkit's whole command (data, judge, epochs, test): {wall:.1f} s")
    print(f"example: {1000 * example['item_seconds']:.2f} ms per item (PIL image, resize, to tensor) in one process")
    print("\nquality against training time, on the judge's features, against the validation images:")
    print("".join(f"  {key}: {NAMES[key]}\n" for key in QUALITY_KEYS), end="")
    print("side     epoch  seconds  " + "  ".join(f"{key:>14}" for key in QUALITY_KEYS))
    elapsed = 0.0
    for row in rows:  # cnnkit's metrics.csv
        elapsed += float(row["seconds"])
        figures = "  ".join(f"{float(row[key]):>14.4g}" for key in QUALITY_KEYS)
        print(f"cnnkit   {int(row['epoch']):>5}  {elapsed:>7.1f}  {figures}")
    figures = "  ".join(f"{example['quality'][key]:>14.4g}" for key in QUALITY_KEYS)
    chance = "; unconditional: its class accuracy is chance" if example["networks"] == "shipped" else ""
    print(f"example  {len(theirs):>5}  {total_theirs:>7.1f}  {figures}   (its generator; it has no EMA{chance})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="fashion-mnist", help="a built-in (digits, fashion-mnist) or a class folder")
    parser.add_argument("--limit", type=int, help="train both on the first N training images, written as PNG files")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="both sides (the example's and cnnkit's default)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader processes; cnnkit's too")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of each side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="both sides (default: cpu; cuda for a GPU check)")
    parser.add_argument(
        "--example-networks", choices=("shipped", "cnnkit"), default="shipped",
        help="the example's own networks at its 64 px (default), or cnnkit's dcgan on both sides (the loops alone)",
    )  # fmt: skip
    parser.add_argument("--out", type=Path, help="keep cnnkit's run directory here (default: a scratch folder)")
    parser.add_argument("--reference", help=argparse.SUPPRESS)  # internal: run the example's side on this run dir
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.epochs, args.batch_size, args.workers, args.threads, args.limit or 1) < 1:
        raise SystemExit("error: --epochs, --batch-size, --workers, --threads and --limit take 1 or more")
    if args.reference:
        Path(args.json).write_text(json.dumps(example_epochs(args)))
        return
    if args.data not in BUILTINS and not Path(args.data).is_dir():
        raise SystemExit(f"error: --data {args.data} is neither a built-in ({', '.join(BUILTINS)}) nor a folder")
    if args.out is not None and (args.out / "gan").exists():
        raise SystemExit(f"error: {args.out / 'gan'} exists; give another --out")
    if args.limit and args.data not in BUILTINS:
        raise SystemExit("error: --limit takes a built-in's first images; for a folder, pass a smaller folder")
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}  # cnnkit train takes torch's default threads
    cpu = f"{platform.processor() or platform.machine()} ({cpu_model()}), {os.cpu_count()} cores"
    print(f"{cpu}, {torch.backends.cpu.get_cpu_capability()}, {args.threads} torch threads, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        environment["CNNKIT_CACHE_DIR"] = str(scratch / "cache")  # a cold image cache, as a first run has
        data = str(write_folder(args.data, args.limit, scratch / "images")) if args.limit else args.data
        run_dir, wall = run_cnnkit(args, data, args.out or scratch / "runs", environment)
        with open(run_dir / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        example = run_example(args, data, run_dir, scratch, environment)
        setup = f"batch {args.batch_size}, {args.workers} DataLoader workers, {args.epochs} epochs"
        shape = f"{example['img_size']} px, {example['parameters'] / 1e6:.2f}M parameters (G + D)"
        print(f"example's networks: {args.example_networks} ({shape})")
        print(f"{example['images']} training images of {args.data}{' (PNG files)' if args.limit else ''}, {setup}")
        print_report(rows, example, wall)


if __name__ == "__main__":
    main()

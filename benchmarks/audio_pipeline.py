"""Audio training throughput: clips/s of whole training steps, cnnkit against the tutorials' hand-written loop.

A training step here is everything: the data (read, decode, resample, pad or crop, augment),
the log-mel features, forward, backward and the optimizer update. Both sides train the same
network (cnnkit's default audio model, ``bcresnet``, from the same initial weights) with the
same optimizer and schedule (``training/optim.build_optimizer`` at the audio defaults: batch
32, lr 3e-3; the tutorial side with PyTorch's default Adam kernel, cnnkit's fused), on the
same training files, with the same augmentation amounts:

- **tutorial**: the loop of the official PyTorch audio tutorials. A ``Dataset`` reads its WAV
  file in ``__getitem__`` (decoded, resampled and mixed down by cnnkit's own rule,
  ``data/wav.py``, so both sides see the same waveforms), draws that clip's time shift and gain,
  and computes its log-mel there (cnnkit's ``LogMel`` on one clip, as the tutorials call
  ``torchaudio.transforms.MelSpectrogram``; torchaudio itself is not used); a ``DataLoader``
  with ``--workers`` processes (default: one per core) batches them; the network takes those
  log-mels (its front end keeps only its per-band normalisation) and trains in fp32.
- **cnnkit**: what ``cnnkit train --data FOLDER`` does (``training.fit.prepare`` and
  ``training.loop.train_one_epoch``): every file decoded once into the memory-mapped waveform
  cache, batches gathered from it and augmented as whole tensors, the log-mel computed per
  batch inside the model, at the precision ``auto`` picks. Its first epoch includes building
  the cache from a cold start.

The background class is left out (``background=0``) so both sides train on exactly the same
files. The data: FSDD's recordings (8 kHz; ``--data-dir``, default the shared copy) linked into
class folders in a scratch folder, or ``--folder``, any folder of WAV class folders. Clips are
``cnnkit train``'s folder default, 1 s at 16 kHz, so every file is resampled; ``--sample-rate
8000`` measures FSDD without resampling. Time it on an idle machine; on a shared one the rates
are meaningless. Target (issue 16): cnnkit at least 5x the tutorial.

    python benchmarks/audio_pipeline.py --epochs 2               # FSDD's 2,500 recordings
    python benchmarks/audio_pipeline.py --folder WAV_CLASSES      # any folder of WAV class folders
    python benchmarks/audio_pipeline.py --clips 200 --epochs 1    # a check
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnnkit import compute
from cnnkit.config import TrainConfig
from cnnkit.data.audio import is_audio_folder
from cnnkit.data.audio_augment import AudioAugmentation
from cnnkit.data.speech import FSDD_NAME
from cnnkit.data.wav import AudioFormat, fit_length, read_wav, to_mono
from cnnkit.errors import CnnkitError
from cnnkit.models.frontend import LogMel
from cnnkit.models.registry import build
from cnnkit.training.fit import build_model, make_task, prepare, resolve_config
from cnnkit.training.loop import StepSettings, train_one_epoch
from cnnkit.training.optim import Optimisation, build_optimizer
from cnnkit.training.prepare import Prepared, audio_training, sampling_weights

SHARED_FSDD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fsdd"


def link_fsdd(data_dir: Path, folder: Path, clips: int | None) -> Path:
    """FSDD's recordings as symlinks in one folder per digit; ``clips`` of them, spread over digits and speakers."""
    recordings = data_dir / "recordings"
    found = [(m, p) for p in recordings.iterdir() if (m := FSDD_NAME.match(p.name))] if recordings.is_dir() else []
    if not found:
        raise SystemExit(f"no FSDD recordings in {recordings}; give --data-dir or --folder")
    found.sort(key=lambda item: (int(item[0].group(3)), item[0].group(2), item[0].group(1)))  # take, speaker, digit
    for match, path in found[:clips]:
        (folder / match.group(1)).mkdir(parents=True, exist_ok=True)
        (folder / match.group(1) / path.name).symlink_to(path.resolve())
    return folder


class ClipFeatures(torch.utils.data.Dataset):
    """The tutorials' dataset: each item reads and decodes its WAV file, augments it, and computes its log-mel.

    Args:
        root: Folder the file names are relative to.
        files: (relative path, label) of each clip.
        audio_format: The clip rule (rate, length, pad and crop), the one cnnkit trained with.
        features: Log-mel of one clip (1, 1, T) -> (1, 1, n_mels, frames), without normalisation.
        augmentation: Shift and gain amounts, drawn per clip.
    """

    def __init__(self, root, files, audio_format: AudioFormat, features: LogMel, augmentation: AudioAugmentation):
        self.root, self.files, self.format = Path(root), files, audio_format
        self.features, self.augmentation = features, augmentation
        self.generator: torch.Generator | None = None

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.generator is None:  # one stream per worker: torch.initial_seed() differs in each
            self.generator = torch.Generator().manual_seed(torch.initial_seed())
        path, label = self.files[index]
        samples, info = read_wav(self.root / path)
        clip, _ = fit_length(to_mono(samples, info.sample_rate, self.format), self.format)
        with torch.no_grad():
            wave = self.augmentation(torch.from_numpy(clip)[None, None], self.generator)  # (1, 1, T)
            return self.features(wave)[0], label  # (1, n_mels, frames)


class BandNorm(nn.Module):
    """The model's front end once the log-mels come from the dataset: its per-band running normalisation."""

    def __init__(self, frontend: LogMel) -> None:
        super().__init__()
        self.norm = frontend.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, mels, frames = x.shape  # (B, C, n_mels, frames)
        return self.norm(x.reshape(batch * channels, mels, frames)).reshape(batch, channels, mels, frames)


def tutorial_epochs(
    root: Path, data: Prepared, config: TrainConfig, epochs: int, workers: int
) -> tuple[list[float], float]:
    """Clips/s of each epoch of the tutorials' loop on cnnkit's training files, and the seconds one item takes.

    The item time (read to log-mel, in this process, before the loop) says how much of the
    tutorial's step is its data: its workers share the cores with the training step.
    """
    train, rule = data.splits.train, data.splits.audio_format
    files = list(zip(train.sources, train.labels.tolist()))
    torch.manual_seed(config.seed)  # the initial weights build_model gives cnnkit's side
    model = build(data.spec)
    frontend = model.frontend
    features = LogMel(
        frontend.sample_rate, frontend.n_fft, frontend.hop_length, frontend.n_mels, frontend.f_min, frontend.f_max,
        frontend.log_offset, normalize=False,
    )  # fmt: skip
    model.frontend = BandNorm(frontend)
    augmentation = data.augment.augmentation if data.augment else AudioAugmentation()
    dataset = ClipFeatures(root, files, rule, features, augmentation)
    start, probe = time.perf_counter(), min(len(dataset), 32)
    for index in range(probe):
        dataset[index]
    item_seconds = (time.perf_counter() - start) / probe
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=config.batch_size, shuffle=True, num_workers=workers, persistent_workers=workers > 0
    )
    optimizer, scheduler = build_optimizer(model, config, epochs * len(loader), fused=False)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    model.train()
    rates = []
    for _ in range(epochs):
        start, seen = time.perf_counter(), 0
        for logmels, labels in loader:
            loss = loss_fn(model(logmels), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(labels)
        rates.append(seen / (time.perf_counter() - start))
    return rates, item_seconds


def cnnkit_epochs(
    folder: Path, epochs: int, workers: int, sample_rate: int | None
) -> tuple[list[float], Prepared, TrainConfig]:
    """Clips/s of each epoch of cnnkit's training steps; the first includes preparing the data (the cache build)."""
    start = time.perf_counter()
    overrides = {"data": str(folder), "background": 0.0, "workers": workers, "sample_rate": sample_rate}
    config, _ = resolve_config(None, None, {**overrides, "epochs": epochs})  # the default audio model, as train's
    data = prepare(config, None, lambda *_: None)
    prepared = time.perf_counter() - start
    config = audio_training(config, data, None, {"epochs", "background"})  # a new audio run's batch size and lr
    device = torch.device("cpu")
    model, settings = build_model(config, data, device)
    train = data.splits.train
    steps_per_epoch = -(-len(train) // config.batch_size)
    optimisation = Optimisation(
        *build_optimizer(model, config, epochs * steps_per_epoch), compute.grad_scaler(settings)
    )
    steps = StepSettings(
        config.batch_size, sample_weights=sampling_weights(train.labels, config.sampler), augment=data.augment,
        compute=settings,
    )  # fmt: skip
    task = make_task(config, data, device)
    generator = torch.Generator().manual_seed(config.seed)
    rates = []
    for _ in range(epochs):
        with data.augment.masking(model, generator) if data.augment else contextlib.nullcontext():
            train_one_epoch(model, train, data.preprocessing, task, optimisation, device, generator, steps)
        rates.append(len(train) / (time.perf_counter() - start))
        start = time.perf_counter()
    augment = data.augment.describe() if data.augment else "none"
    print(f"cnnkit: {settings.describe()}; augment {augment}; data prepared (cache built) in {prepared:.1f} s")
    return rates, data, config


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it, or 'unknown'."""
    try:
        listing = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return next(
        (line.split(":", 1)[1].strip() for line in listing.splitlines() if line.startswith("Model name")), "unknown"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="a folder of WAV class folders (default: FSDD, linked)")
    parser.add_argument("--data-dir", type=Path, default=SHARED_FSDD, help="FSDD's folder (holding recordings/)")
    parser.add_argument("--clips", type=int, help="FSDD recordings to link (default: all)")
    parser.add_argument("--sample-rate", type=int, help="clip rate (default: cnnkit's folder default, 16000)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader and decoding processes")
    args = parser.parse_args()
    if args.workers < 1 or args.epochs < 1 or (args.clips is not None and args.clips < 1):
        raise SystemExit("error: --workers, --epochs and --clips take whole numbers of at least 1")
    if args.folder is not None and not is_audio_folder(args.folder):
        raise SystemExit(f"error: --folder {args.folder} is not a folder of WAV files in one subfolder per class")

    cpu = f"{platform.processor() or platform.machine()} ({cpu_model()}), {os.cpu_count()} cores"
    threads = f"{torch.get_num_threads()} torch threads"
    print(f"{cpu}, {torch.backends.cpu.get_cpu_capability()}, {threads}, torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or link_fsdd(args.data_dir, Path(scratch) / "wavs", args.clips)
        os.environ["CNNKIT_CACHE_DIR"] = str(Path(scratch) / "cache")  # a cold cache: the first epoch builds it
        try:
            ours, data, config = cnnkit_epochs(folder, args.epochs, args.workers, args.sample_rate)
        except CnnkitError as error:  # not a folder of WAV class folders, too few clips, ...: cnnkit's one line
            raise SystemExit(f"error: {error}") from None
        rule = data.splits.audio_format
        clips = f"{len(data.splits.train)} training clips of {rule.clip_seconds:g} s at {rule.sample_rate} Hz"
        setup = f"{len(data.splits.classes)} classes, batch {config.batch_size}, {args.workers} workers"
        print(f"{clips} from {folder}, {setup}")
        theirs, item_seconds = tutorial_epochs(folder, data, config, args.epochs, args.workers)
    print(f"tutorial: {1000 * item_seconds:.1f} ms per item (read, decode, resample, augment, log-mel) in one process")
    print("epoch  tutorial clips/s  cnnkit clips/s  ratio")
    for epoch, (a, b) in enumerate(zip(theirs, ours), start=1):
        note = "  (cnnkit: with the cache build and its setup)" if epoch == 1 else ""
        print(f"{epoch:>5}  {a:>16.0f}  {b:>14.0f}  {b / a:>5.1f}x{note}")


if __name__ == "__main__":
    main()

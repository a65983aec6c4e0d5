"""Augmentation of whole batches of waveforms (B, C, T), and SpecAugment masks on their log-mels (B, C, M, F).

The conventions of :mod:`cnnkit.data.augment`: every random number comes from one
``torch.Generator`` (so a seeded or resumed run draws the same stream), each operation
is vectorised over the batch, and it runs on the device the batch is on. Each random
operation is a thin wrapper that draws its amounts and calls a deterministic function of
them (``shift``, ``gain``, ``mix_noise``, ``resample``, ``mask_bands``), which the tests
check exactly.

The masks act on the spectrogram, which the model computes, so they are applied by a
forward hook on the model's front end (:meth:`AudioAugmentation.attach`) in training mode
only: evaluation, checkpoints and exports never see them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from cnnkit.data.augment import _uniform, parse_spec
from cnnkit.errors import CnnkitError


@dataclass(frozen=True)
class AudioAugmentation:
    """Which waveform augmentations and spectrogram masks to apply, and how strongly.

    Args:
        shift: Maximum time shift as a share of the clip, drawn in [-shift, shift]; the gap is silence. Defaults to 0.
        gain: Maximum gain in dB, drawn in [-gain, gain]. Defaults to 0.
        noise: Probability that a clip gets background noise mixed in. Defaults to 0.
        snr_min: Lowest signal-to-noise ratio of the mix in dB. Defaults to 5.
        snr_max: Highest signal-to-noise ratio in dB (drawn uniformly in dB between the two). Defaults to 20.
        pink: Probability that a clip's noise is pink (power falling as 1/f, as the background class's
            ``pink`` clips) rather than white, where no background recordings are mixed in. Defaults to 0.
        speed: Maximum relative speed change, drawn in [1 - speed, 1 + speed]: resampling, so pitch
            moves with it. Defaults to 0.
        time_masks: SpecAugment masks over time per clip. Defaults to 0.
        time_width: Widest time mask in frames. Defaults to 20 (0.2 s at a 10 ms hop).
        freq_masks: SpecAugment masks over frequency per clip. Defaults to 0.
        freq_width: Widest frequency mask in mel bands. Defaults to 7 (of 40).
    """

    shift: float = 0.0
    gain: float = 0.0
    noise: float = 0.0
    snr_min: float = 5.0
    snr_max: float = 20.0
    pink: float = 0.0
    speed: float = 0.0
    time_masks: int = 0
    time_width: int = 20
    freq_masks: int = 0
    freq_width: int = 7

    def __post_init__(self) -> None:
        values = asdict(self)
        problems = [f"{key}={value} is not a number" for key, value in values.items() if not math.isfinite(value)]
        problems += [f"{key}={values[key]} must be >= 0" for key in _KEYS if values[key] < 0]
        problems += [f"{key}={values[key]} is a probability in [0, 1]" for key in ("noise", "pink") if values[key] > 1]
        problems += [f"speed={self.speed} must be below 1"] if self.speed >= 1 else []
        problems += [f"snr_min={self.snr_min} is above snr_max={self.snr_max}"] if self.snr_min > self.snr_max else []
        if problems:
            raise CnnkitError(f"audio augmentation: {'; '.join(problems)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """The settings that act, e.g. ``shift=0.1, noise=0.8 at 5-20 dB, time_masks=2x20``."""
        parts = [f"{key}={getattr(self, key)}" for key in ("shift", "gain", "speed") if getattr(self, key)]
        if self.noise:
            parts.append(f"noise={self.noise} at {self.snr_min:g}-{self.snr_max:g} dB")
            parts += [f"pink={self.pink}"] if self.pink else []
        parts += [f"time_masks={self.time_masks}x{self.time_width}"] if self.time_masks else []
        parts += [f"freq_masks={self.freq_masks}x{self.freq_width}"] if self.freq_masks else []
        return ", ".join(parts) or "none"

    def __call__(
        self, waves: torch.Tensor, generator: torch.Generator, noise_bank: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Augment a batch of waveforms (B, C, T); returns float32 (B, C, T).

        Args:
            waves: The batch.
            generator: Draws every random amount.
            noise_bank: (N, L) background recordings to mix in; None mixes white noise. Defaults to None.
        """
        x = waves.float()
        if self.speed:
            x = random_resample(x, self.speed, generator)
        if self.shift:
            x = random_shift(x, self.shift, generator)
        if self.noise:
            x = random_noise(x, self.noise, self.snr_min, self.snr_max, generator, noise_bank, self.pink)
        if self.gain:
            x = random_gain(x, self.gain, generator)
        return x

    def mask(self, spectrograms: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """SpecAugment masks on log-mels (B, C, M, F): zero (the normalised mean) in random bands and frame spans."""
        x = spectrograms
        if self.freq_masks:
            x = random_masks(x, self.freq_masks, self.freq_width, dim=2, generator=generator)
        if self.time_masks:
            x = random_masks(x, self.time_masks, self.time_width, dim=3, generator=generator)
        return x

    def attach(self, frontend: nn.Module, generator: torch.Generator) -> RemovableHandle | None:
        """Mask the output of ``frontend`` (a model's log-mel module) in training mode; None when there are no masks.

        Example:
            >>> handle = augmentation.attach(model.frontend, generator)  # training steps now see masked log-mels
            >>> handle.remove()
        """
        if not (self.time_masks or self.freq_masks):
            return None

        def masked(module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
            return self.mask(output, generator) if module.training else None

        return frontend.register_forward_hook(masked)


@dataclass(frozen=True)
class AudioBatchAugmentation:
    """An :class:`AudioAugmentation` with its noise bank, called by the training loop as image augmentation is.

    Args:
        augmentation: What to apply.
        noise_bank: (N, L) background recordings to mix in; None mixes white noise. Defaults to None.
    """

    augmentation: AudioAugmentation
    noise_bank: torch.Tensor | None = None

    def __call__(
        self, waves: torch.Tensor, generator: torch.Generator, shard: tuple[int, int] = (0, 1)
    ) -> torch.Tensor:
        """Augment one training batch (B, C, T), one process's (``shard`` is the loop's ``(rank, world_size)``)."""
        if shard[1] != 1:  # the draws are per batch, not yet per global batch as image augmentation's are
            raise CnnkitError("audio trains in one process so far; leave out --devices")
        return self.augmentation(waves, generator, self.noise_bank)

    @contextlib.contextmanager
    def masking(self, model: nn.Module, generator: torch.Generator) -> Iterator[None]:
        """SpecAugment on ``model.frontend``'s output in training mode while inside (a model without one: nothing).

        The training loop's steps run inside; the batch-norm recomputation and validation after
        them run outside, so they see the log-mels unmasked.
        """
        frontend = getattr(model, "frontend", None)
        handle = None if frontend is None else self.augmentation.attach(frontend, generator)
        try:
            yield
        finally:
            if handle is not None:
                handle.remove()

    def to_dict(self) -> dict:
        white = "white and pink" if self.augmentation.pink else "white"
        return {**self.augmentation.to_dict(), "noise_from": white if self.noise_bank is None else "background"}

    def describe(self) -> str:
        """The settings that act, and where the noise comes from when it is mixed in."""
        described = self.augmentation.describe()
        if self.augmentation.noise:
            white = "white and pink noise" if self.augmentation.pink else "white noise"
            source = white if self.noise_bank is None else f"{len(self.noise_bank)} background recordings"
            described += f" ({source})"
        return described


def noise_bank(recordings: list[torch.Tensor]) -> torch.Tensor | None:
    """(N, L) background recordings, each cut to the shortest, for :func:`noise_excerpts`; None for none."""
    if not recordings:
        return None
    shortest = min(len(recording) for recording in recordings)
    return torch.stack([recording[:shortest].float() for recording in recordings])


def shift(x: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
    """Delay each clip of (B, C, T) by its (B,) integer ``samples`` (negative: earlier), filling with silence."""
    length = x.shape[-1]
    source = torch.arange(length, device=x.device) - samples.to(x.device)[:, None]  # (B, T) where each sample was
    inside = (source >= 0) & (source < length)
    moved = x.gather(2, source.clamp(0, length - 1)[:, None, :].expand_as(x))
    return torch.where(inside[:, None, :], moved, torch.zeros((), dtype=x.dtype, device=x.device))


def random_shift(x: torch.Tensor, share: float, generator: torch.Generator) -> torch.Tensor:
    """Shift each clip by up to ``share`` of its length, either way."""
    limit = round(share * x.shape[-1])
    samples = torch.randint(-limit, limit + 1, (len(x),), generator=generator, device=generator.device)
    return shift(x, samples)


def gain(x: torch.Tensor, decibels: torch.Tensor) -> torch.Tensor:
    """Scale each clip of (B, C, T) by its (B,) gain in dB: amplitude times 10^(dB / 20)."""
    return x * (10.0 ** (decibels.to(x.device) / 20.0))[:, None, None]


def random_gain(x: torch.Tensor, decibels: float, generator: torch.Generator) -> torch.Tensor:
    return gain(x, _uniform(len(x), -decibels, decibels, generator, x.device))


def mix_noise(x: torch.Tensor, noise: torch.Tensor, snr: torch.Tensor) -> torch.Tensor:
    """Add ``noise`` (B, C, T) to ``x`` (B, C, T), scaled per clip to the (B,) signal-to-noise ratios in dB.

    Powers are mean squares over the whole clip. A silent clip (a background example, say)
    or silent noise is left as it is: no scale gives it a ratio.
    """
    signal_power = x.square().mean(dim=(1, 2))
    noise_power = noise.square().mean(dim=(1, 2))
    wanted = signal_power / 10.0 ** (snr.to(x.device) / 10.0)  # the noise power that gives the ratio
    scale = torch.where(noise_power > 0, wanted / noise_power.clamp_min(1e-20), torch.zeros_like(wanted)).sqrt()
    return x + noise * scale[:, None, None]


def pink(white: torch.Tensor) -> torch.Tensor:
    """Shape white noise (B, T) in the spectrum so its power falls as 1/f (B, T), as ``background.pink_noise`` does.

    The level is left to :func:`mix_noise`, which scales each clip's noise to its ratio.
    """
    spectrum = torch.fft.rfft(white.float())
    frequency = torch.arange(spectrum.shape[-1], device=white.device, dtype=torch.float32)
    return torch.fft.irfft(spectrum / frequency.clamp_min(1.0).sqrt(), white.shape[-1])  # amplitude 1/sqrt(f)


def noise_excerpts(bank: torch.Tensor, batch: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """(batch, length) excerpts of the (N, L) recordings, each from a random recording at a random offset.

    Recordings shorter than ``length`` are repeated end to end first.
    """
    if bank.dim() != 2 or bank.shape[1] == 0 or len(bank) == 0:
        raise CnnkitError(f"noise bank of shape {tuple(bank.shape)}: expected (recordings, samples), both above 0")
    if bank.shape[1] < length:
        bank = bank.repeat(1, -(-length // bank.shape[1]))
    device = generator.device
    choice = torch.randint(0, len(bank), (batch,), generator=generator, device=device).to(bank.device)
    offset = (torch.rand(batch, generator=generator, device=device) * (bank.shape[1] - length + 1)).long()
    index = offset.to(bank.device)[:, None] + torch.arange(length, device=bank.device)  # (batch, length)
    return bank[choice[:, None], index]


def random_noise(
    x: torch.Tensor,
    probability: float,
    snr_min: float,
    snr_max: float,
    generator: torch.Generator,
    bank: torch.Tensor | None = None,
    pink_share: float = 0.0,
) -> torch.Tensor:
    """Mix background noise into a ``probability`` share of the clips, at SNRs drawn in [snr_min, snr_max] dB.

    Every channel of a clip gets the same excerpt; without a ``bank``, Gaussian noise: pink
    for a ``pink_share`` of the clips, else white (with no pink share, the draws of earlier runs).
    """
    batch, _, length = x.shape
    if bank is None:
        draws = torch.randn(batch, length, generator=generator, device=generator.device)
        if pink_share:
            coloured = _uniform(batch, 0, 1, generator, draws.device) < pink_share
            draws = torch.where(coloured[:, None], pink(draws), draws)
    else:
        draws = noise_excerpts(bank.float(), batch, length, generator)
    noise = draws.to(x.device)[:, None, :].expand_as(x)
    snr = _uniform(batch, snr_min, snr_max, generator, x.device)
    chosen = _uniform(batch, 0, 1, generator, x.device) < probability
    return torch.where(chosen[:, None, None], mix_noise(x, noise, snr), x)


def resample(x: torch.Tensor, factors: torch.Tensor) -> torch.Tensor:
    """Play each clip of (B, C, T) at its (B,) speed factor about its centre, keeping T samples.

    Output sample t reads the input at ``centre + factor * (t - centre)``, linearly
    interpolated: faster clips (factor > 1) come out shorter, with silence at both ends,
    and higher in pitch; slower ones lose their ends. Linear interpolation does not
    low-pass first, so speeding up by 10% aliases only what lies within 10% of the
    Nyquist frequency.
    """
    length = x.shape[-1]
    centre = (length - 1) / 2
    time = torch.arange(length, device=x.device, dtype=torch.float32)
    position = centre + factors.to(x.device).float()[:, None] * (time - centre)  # (B, T) in input samples
    grid_x = position * (2 / max(length - 1, 1)) - 1  # grid_sample's [-1, 1], align_corners=True
    grid = torch.stack([grid_x, torch.zeros_like(grid_x)], dim=-1)[:, None]  # (B, 1, T, 2)
    out = F.grid_sample(x[:, :, None, :], grid, mode="bilinear", padding_mode="zeros", align_corners=True)
    return out[:, :, 0, :]  # (B, C, T)


def random_resample(x: torch.Tensor, speed: float, generator: torch.Generator) -> torch.Tensor:
    return resample(x, _uniform(len(x), 1 - speed, 1 + speed, generator, x.device))


def mask_bands(x: torch.Tensor, starts: torch.Tensor, widths: torch.Tensor, dim: int) -> torch.Tensor:
    """Zero, along ``dim`` (2 frequency, 3 time) of (B, C, M, F), the spans [start, start + width) of each clip.

    ``starts`` and ``widths`` are (B, K): K spans per clip, which may overlap; a width of 0 masks nothing.
    """
    size = x.shape[dim]
    position = torch.arange(size, device=x.device)  # (S,)
    starts, widths = starts.to(x.device)[..., None], widths.to(x.device)[..., None]  # (B, K, 1)
    masked = ((position >= starts) & (position < starts + widths)).any(dim=1)  # (B, S)
    shape = [len(x), 1, 1, 1]
    shape[dim] = size
    return x.masked_fill(masked.view(shape), 0.0)


def random_masks(x: torch.Tensor, count: int, max_width: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` spans per clip along ``dim``, each of a width drawn in [0, max_width] at a uniform start."""
    size = x.shape[dim]
    widths = (_uniform(len(x) * count, 0, 1, generator, x.device) * (min(max_width, size) + 1)).long()
    starts = (_uniform(len(x) * count, 0, 1, generator, x.device) * (size - widths + 1)).long()
    return mask_bands(x, starts.view(-1, count), widths.view(-1, count), dim)


# The Speech Commands recipe of TensorFlow's tutorial (time shift 100 ms of a 1 s clip,
# background noise on 80% of the clips) with gain and SpecAugment masks (2 + 2) as in
# BC-ResNet's training; not tuned here. ``auto`` for data that brings background recordings (speech-commands).
AUTO_AUDIO_AUGMENTATION = "shift=0.1,gain=6,noise=0.8,time_masks=2,freq_masks=2"
# ``auto`` for data without them (WAV folders, spoken-digits). Shift and gain were chosen on validation carved from
# FSDD's training takes (benchmarks/spoken_digits.py --select; bcresnet, 20 epochs of batch 32 at lr 3e-3): val
# accuracy of 220 clips: none 99.1%, shift=0.1,gain=6 98.6%, with freq_masks=2 97.7%, with time_masks=2 too 95.9%, and
# the full recipe with white noise 79.1% (all before PreciseBN measured the batch norms on augmented clips, which the
# noise needs: see below). The noise is for spotting (benchmarks/spotting.py): FSDD's words end in digital zeros and
# the background clips never do, so a run without it learns "any noise floor means background"; white or pink (as
# the background class's noise clips), and down to -5 dB SNR over the clip, since FSDD's quietest speaker (theo,
# about -49 dBFS) lies 4 dB under the spotting benchmark's -45 dBFS noise. Chosen on the long recording of the
# validation words of the training takes at -45 dBFS (benchmarks/spotting.py --select, 12 epochs, loaded 2-core
# machine; F1, clean val accuracy of 242 clips): white at 10-40 dB 0.492, 92.6%; white or pink at -5-30 dB 0.546,
# 92.6%; at -10-30 dB 0.295, 84.7%; the run's white and pink recordings alike (0.522, 0.570). Measured at 20 epochs
# on the standard split: test accuracy 100.0% of 275 clips (with background; 96.7% with white noise at 10-40 dB and
# clean batch norms before), spotting F1 0.889 at -45 dBFS (0.780 before) and 0.965 at -60 (0.904). Gain +-20 dB
# rather than 6, for speakers recorded quieter or louder than the training ones: nested speaker validation on FSDD
# (george, the outer test speaker, absent; one other speaker held out; idle, seed 0, 20 epochs; words and background
# clips of the held-out speaker): theo (~20 dB quieter) 15.1% with gain=6 (407 of 500 words called background),
# 72.0% with gain=20; jackson 44.4% -> 66.4% (docs/benchmarks.md, "Spoken digits").
AUTO_AUDIO_WITHOUT_BACKGROUND = "shift=0.1,gain=20,noise=0.8,snr_min=-5,snr_max=30,pink=0.5"

_KEYS = tuple(f.name for f in fields(AudioAugmentation) if not f.name.startswith("snr"))
_INT_KEYS = tuple(f.name for f in fields(AudioAugmentation) if f.type == "int")


def parse_audio_augmentation(spec: str, background: bool = True) -> AudioAugmentation | None:
    """Turn ``--augment`` of an audio run into an :class:`AudioAugmentation`, or None for no augmentation.

    ``auto`` is :data:`AUTO_AUDIO_AUGMENTATION` for data with ``background`` recordings to mix in,
    else :data:`AUTO_AUDIO_WITHOUT_BACKGROUND`; otherwise a comma-separated list of
    ``key=value`` of the fields, e.g. ``shift=0.1,noise=0.8,snr_min=0,speed=0.1,time_masks=2``.

    Example:
        >>> parse_audio_augmentation("shift=0.1,gain=6").describe()
        'shift=0.1, gain=6.0'
    """
    readers = {f.name: int if f.name in _INT_KEYS else float for f in fields(AudioAugmentation)}
    example = "shift=0.1,gain=6,noise=0.8,snr_min=5,snr_max=20,speed=0.1,time_masks=2,time_width=20,"
    example += "freq_masks=2,freq_width=7"
    auto = AUTO_AUDIO_AUGMENTATION if background else AUTO_AUDIO_WITHOUT_BACKGROUND
    values = parse_spec(spec, auto, readers, "audio augmentation", example)
    return None if values is None else AudioAugmentation(**values)

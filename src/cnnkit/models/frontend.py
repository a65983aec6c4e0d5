"""The audio front end: waveforms (B, C, T) to log-mel spectrograms (B, C, n_mels, frames), inside the model.

It runs per batch on the training device and is part of the network, so a checkpoint or
an ONNX export takes waveforms and no caller has to reproduce the features. Its numbers:

- Frames are centred (the clip is zero-padded by ``n_fft // 2`` on both sides, librosa's
  default), so a clip of T samples gives ``1 + T // hop_length`` frames: 101 for 1 s at
  16 kHz with a 10 ms hop.
- A periodic Hann window and the power spectrum ``|X|^2``.
- The HTK mel scale, ``mel = 2595 log10(1 + f / 700)``, with triangular filters of peak 1
  (no area normalisation): the filterbank of TensorFlow's ``linear_to_mel_weight_matrix``,
  which the Speech Commands baselines (DS-CNN, TC-ResNet) were trained on.
- The natural log of the mel energies plus ``log_offset``. The log-mels agreed with
  librosa 0.11's ``melspectrogram(htk=True, norm=None, pad_mode="constant")`` to 3e-5 at
  8, 16 and 22.05 kHz (a scratch check; the tests compare with a NumPy reference).
- Optionally (``clip_mean``), the clip's own mean is subtracted from its log-mels first: one
  number (``"level"``: a gain cancels, since a gain adds a constant to every log-mel) or one per
  band (``"bands"``: a fixed microphone response cancels too, as cepstral mean subtraction does).
  The mean weighs each frame by its energy, so the zero padding of a short word counts for
  nothing (a plain mean over a 1 s clip holding a 0.4 s word would cancel only half a gain).
  Neither moves ``log_offset``'s floor, so digital silence shifts with the clip's level;
  ``"gain"`` is ``"level"`` with the floor scaled by the level too, so a gain cancels everywhere.
  It subtracts, it does not divide: a quiet window keeps its small spread, unlike speech.
  None of them is a default: on FSDD's held-out training speakers (the outer test speaker
  absent, seed 0) each lost 13 to 23 points to the running normalisation alone on at least
  one of the four, while winning on another (``benchmarks/spoken_digits.py --model-kwargs``).
- Running normalisation: a ``BatchNorm1d`` without learnable parameters over the mel
  bands, so each band is centred and scaled by statistics of the training set, kept in
  the checkpoint. It is not per utterance on purpose: per-utterance normalisation would
  stretch a window of quiet background to the loudness of speech, and spotting keywords
  in long audio must be able to tell the two apart.

The short-time Fourier transform has two kernels with the same numbers (tested equal to
1e-5): ``torch.stft`` (an FFT) in PyTorch, and in an ONNX export a 1-D convolution with
fixed windowed-DFT kernels, which every opset, exporter and runtime takes (the
TorchScript exporter cannot export ``torch.stft``). Each is the faster one where it runs:
64 one-second clips on one CPU thread took 24 ms with ``torch.stft`` and 55 ms as the
convolution in PyTorch, and 34 ms as the convolution and 73 ms as ONNX's STFT operator
in ONNX Runtime (best of 15, on a shared machine; ``n_fft`` 512, hop 160;
``benchmarks/logmel.py`` repeats it). The kernels
are buffers, not parameters, so the models' parameter counts are the papers'. Features
are computed in float32 even under bf16 autocast: a bf16 power spectrum keeps about
three significant digits.

Example:
    >>> frontend = LogMel()
    >>> frontend(torch.zeros(2, 1, 16000)).shape
    torch.Size([2, 1, 40, 101])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models.layers import batch_norm

CLIP_MEANS = ("none", "level", "gain", "bands")  # LogMel's clip_mean: what of a clip's own mean it subtracts


def hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """Hertz to mels on the HTK scale."""
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_mels, n_fft // 2 + 1) triangular HTK mel filters of peak 1, in float64.

    Filter m rises linearly from the centre frequency of filter m - 1 to its own and
    falls to that of m + 1; the n_mels + 2 edges are equally spaced in mels.
    """
    edges = mel_to_hz(torch.linspace(hz_to_mel(torch.tensor(f_min)), hz_to_mel(torch.tensor(f_max)), n_mels + 2))
    edges = edges.double()
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)  # (n_freq,) bin frequencies
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]  # (n_mels, 1) each
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


def dft_kernels(n_fft: int) -> torch.Tensor:
    """(2 * (n_fft // 2 + 1), 1, n_fft) periodic-Hann-windowed cosine then sine kernels, in float64.

    A convolution with them gives the real part and minus the imaginary part of each
    frame's DFT; the sign does not matter for the power.
    """
    time = torch.arange(n_fft, dtype=torch.float64)
    window = 0.5 - 0.5 * torch.cos(2 * math.pi * time / n_fft)  # periodic: the window of torch.hann_window
    angle = 2 * math.pi * torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None] * time / n_fft
    return torch.cat([torch.cos(angle) * window, torch.sin(angle) * window])[:, None, :]


def dft_power(x: torch.Tensor, kernels: torch.Tensor, hop_length: int) -> torch.Tensor:
    """(N, T) waveforms -> (N, n_freq, frames) power spectra of centred frames, as a convolution with ``kernels``.

    The same numbers as ``torch.stft(..., center=True, pad_mode="constant")``; the form an ONNX export takes.
    """
    n_fft = kernels.shape[-1]
    x = F.pad(x[:, None], (n_fft // 2, n_fft // 2))  # (N, 1, T + n_fft): zero-padded, centred frames
    real, imaginary = F.conv1d(x, kernels, stride=hop_length).chunk(2, dim=1)  # (N, n_freq, frames) each
    return real * real + imaginary * imaginary


class LogMel(nn.Module):
    """Log-mel spectrogram of a batch of waveforms, with running normalisation.

    Args:
        sample_rate: Of the waveforms, in Hz. Defaults to 16000.
        n_fft: Window and DFT length in samples. Defaults to 512 (32 ms at 16 kHz).
        hop_length: Samples between frames. Defaults to 160 (10 ms at 16 kHz).
        n_mels: Mel bands. Defaults to 40.
        f_min: Lowest filter edge in Hz. Defaults to 20.
        f_max: Highest filter edge in Hz. Defaults to None, half the sample rate.
        log_offset: Added to the mel energies before the log, so silence stays finite. Defaults to 1e-6.
        normalize: Normalise each band with running statistics (see the module docstring). Defaults to True.
        clip_mean: Subtract the clip's energy-weighted mean log-mel before that: ``"none"``, ``"level"`` (one
            number, a gain), ``"gain"`` (that number, ``log_offset`` following it) or ``"bands"`` (each
            band's). Defaults to ``"none"``, which checkpoints without the key were trained with.

    Shapes: (B, C, T) waveforms -> (B, C, n_mels, 1 + T // hop_length).
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int = 160,
        n_mels: int = 40,
        f_min: float = 20.0,
        f_max: float | None = None,
        log_offset: float = 1e-6,
        normalize: bool = True,
        clip_mean: str = "none",
    ) -> None:
        super().__init__()
        f_max = sample_rate / 2 if f_max is None else f_max
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise CnnkitError(
                f"mel filters from {f_min} to {f_max} Hz: need 0 <= f_min < f_max <= {sample_rate / 2} "
                f"(half the {sample_rate} Hz sample rate)"
            )
        if clip_mean not in CLIP_MEANS:
            raise CnnkitError(f"log-mel clip_mean={clip_mean!r}: choose one of {', '.join(CLIP_MEANS)}")
        if n_fft < 2 or hop_length < 1 or n_mels < 1:
            raise CnnkitError(f"log-mel n_fft={n_fft}, hop_length={hop_length}, n_mels={n_mels}: each must be >= 1")
        self.sample_rate, self.n_fft, self.hop_length, self.n_mels = sample_rate, n_fft, hop_length, n_mels
        self.f_min, self.f_max, self.log_offset, self.clip_mean = f_min, f_max, log_offset, clip_mean
        # buffers, not parameters: fixed, rebuilt from the arguments, so left out of the state dict
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)  # periodic
        self.register_buffer("dft", dft_kernels(n_fft).float(), persistent=False)
        self.register_buffer(
            "filters", mel_filterbank(sample_rate, n_fft, n_mels, f_min, f_max).float(), persistent=False
        )
        # normalisation only, no learnt scale and shift: the network's first layer learns those
        self.norm = batch_norm(n_mels, rank=1, affine=False) if normalize else nn.Identity()

    def frames(self, length: int) -> int:
        """Frames a clip of ``length`` samples gives."""
        return 1 + length // self.hop_length

    def forward(self, waves: torch.Tensor) -> torch.Tensor:
        if waves.dim() != 3:
            shape = list(waves.shape)
            raise CnnkitError(f"the log-mel front end takes waveforms (batch, channels, samples), not {shape}")
        batch, channels, length = waves.shape
        with torch.autocast(waves.device.type, enabled=False):
            x = waves.float().reshape(batch * channels, length)
            if torch.onnx.is_in_onnx_export():
                power = dft_power(x, self.dft, self.hop_length)
            else:
                spectrum = torch.stft(
                    x, self.n_fft, self.hop_length, window=self.window, pad_mode="constant", return_complex=True
                )
                power = spectrum.real.square() + spectrum.imag.square()  # (N, n_freq, frames)
            mel = torch.matmul(self.filters, power) + self.log_offset  # (N, n_mels, frames)
            logmel = self.norm(self.subtract_clip_mean(torch.log(mel), mel))
        return logmel.reshape(batch, channels, self.n_mels, logmel.shape[-1])  # (B, C, n_mels, frames)

    def subtract_clip_mean(self, logmel: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
        """(N, n_mels, frames) log-mels less their mean over the frames, each frame weighted by its energy."""
        if self.clip_mean == "none":
            return logmel
        energy = mel.sum(1, keepdim=True)  # (N, 1, frames); never 0: each mel carries log_offset
        mean = (logmel * energy).sum(2, keepdim=True) / energy.sum(2, keepdim=True)  # (N, n_mels, 1)
        if self.clip_mean == "bands":
            return logmel - mean
        level = mean.mean(1, keepdim=True)  # (N, 1, 1)
        if self.clip_mean == "level":
            return logmel - level
        return torch.log(mel + self.log_offset * (level.exp() - 1)) - level  # "gain": log_offset scaled by the level

    def extra_repr(self) -> str:
        return (
            f"sample_rate={self.sample_rate}, n_fft={self.n_fft}, hop_length={self.hop_length}, "
            f"n_mels={self.n_mels}, f_min={self.f_min}, f_max={self.f_max}, clip_mean={self.clip_mean}"
        )

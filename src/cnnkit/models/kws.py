"""Keyword-spotting networks on waveforms (B, C, T): BC-ResNet on log-mels, and M5 on the raw samples.

**BC-ResNet** (Kim, Chang, Lee and Sung, "Broadcasted Residual Learning for Efficient
Keyword Spotting", Interspeech 2021) is the default keyword spotter. Of the three compact
CNNs the field compares on Google Speech Commands (12 classes), it is the most accurate
per weight and per operation, as its paper reports:

| model | parameters | multiply-adds | Speech Commands v1 / v2 accuracy |
|---|---|---|---|
| DS-CNN-S (Zhang et al. 2017, "Hello Edge") | 38.6k | 5.4M | 94.4 / - |
| TC-ResNet8 (Choi et al. 2019) | 66k | 3.0M | 96.1 / - |
| BC-ResNet-1 | 9.2k | 3.6M | 96.6 / 96.9 |
| BC-ResNet-8 | 321k | 89.1M | 98.0 / 98.7 |

Its block runs a 2-D depthwise convolution over frequency, averages the frequencies
away, runs a 1-D depthwise convolution over time on what is left and broadcasts that back
over the frequencies as a residual: so the 2-D and 1-D halves are this package's one
rank-parametrized layer definition at rank 2 and at rank 1. The log-mel front end
(:class:`cnnkit.models.frontend.LogMel`) is the model's first module, so the model takes
waveforms. The layout follows the authors' code (Qualcomm-AI-research/bcresnet): a 5x5
stem of stride 2 in frequency, stages of 2, 2, 4 and 4 blocks with time dilations 1, 2, 4
and 8 and frequency strides in the second and third, sub-spectral normalisation over 5
frequency groups, then a depthwise 5x5, a 1x1 convolution and the classifier.

**M5** (Dai, Dai, Qu, Li and Das, "Very Deep Convolutional Neural Networks for Raw
Waveforms", ICASSP 2017) learns its own filterbank from the samples: an 80-wide first
convolution of stride 4, three 3-wide convolutions, max pooling by 4 between them and a
global average (0.5M parameters in the paper).

Example:
    >>> model = create_model("bcresnet", num_classes=12, in_channels=1, img_size=16000)
    >>> model(torch.zeros(2, 1, 16000)).shape
    torch.Size([2, 12])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnkit.errors import CnnkitError
from cnnkit.models.frontend import LogMel
from cnnkit.models.layers import batch_norm, conv, global_pool, max_pool
from cnnkit.models.network import Network
from cnnkit.models.registry import register_model

BLOCKS = (2, 2, 4, 4)  # BC-ResBlocks per stage
STRIDED_STAGES = (1, 2)  # stages whose first block halves the frequencies
SUB_BANDS = 5  # frequency groups of sub-spectral normalisation


class SubSpectralNorm(nn.Module):
    """Batch norm with separate statistics for each of ``sub_bands`` frequency groups (Chang et al. 2021).

    (B, C, F, T) is viewed as (B, C * S, F / S, T), so each channel has S sets of
    statistics, one per frequency band: low and high frequencies are scaled apart.
    """

    def __init__(self, channels: int, sub_bands: int) -> None:
        super().__init__()
        self.sub_bands = sub_bands
        self.norm = batch_norm(channels * sub_bands, rank=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, frequencies = x.shape[1:3]
        # (B, C, F, T) -> (B, C * S, F / S, T) and back, splitting and merging only the channel and frequency axes
        x = self.norm(x.unflatten(2, (self.sub_bands, frequencies // self.sub_bands)).flatten(1, 2))
        return x.unflatten(1, (channels, self.sub_bands)).flatten(2, 3)


class BCResBlock(nn.Module):
    """A broadcasted residual block: (B, C_in, F, T) -> (B, C_out, F / stride, T).

    f2, over frequency (2-D): [1x1 conv, BN, ReLU when the width changes], a 3x1
    depthwise conv and sub-spectral norm. f1, over time (1-D, on the frequency average):
    a 3-wide dilated depthwise conv, BN, SiLU, a 1x1 conv and channel dropout. The output
    is ReLU(f2 + f1 broadcast over frequency [+ the input, when the shapes agree]).
    """

    def __init__(
        self, in_channels: int, out_channels: int, frequencies: int, stride: int, dilation: int, dropout: float
    ) -> None:
        super().__init__()
        self.transition = in_channels != out_channels
        layers: list[nn.Module] = []
        if self.transition:
            layers += [conv(in_channels, out_channels, 1, bias=False), batch_norm(out_channels), nn.ReLU(inplace=True)]
        layers.append(conv(out_channels, out_channels, (3, 1), (stride, 1), (1, 0), groups=out_channels, bias=False))
        out_frequencies = (frequencies - 1) // stride + 1
        sub_bands = SUB_BANDS if out_frequencies % SUB_BANDS == 0 else 1  # plain batch norm when bands do not divide
        layers.append(SubSpectralNorm(out_channels, sub_bands))
        self.f2 = nn.Sequential(*layers)
        self.f1 = nn.Sequential(
            conv(
                out_channels,
                out_channels,
                3,
                padding=dilation,
                dilation=dilation,
                groups=out_channels,
                bias=False,
                rank=1,
            ),
            batch_norm(out_channels, rank=1),
            nn.SiLU(inplace=True),
            conv(out_channels, out_channels, 1, bias=False, rank=1),
            nn.Dropout1d(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frequency = self.f2(x)  # (B, C, F', T)
        time = self.f1(frequency.mean(2))  # (B, C, T): the frequency average, convolved over time
        out = frequency + time.unsqueeze(2)  # broadcast over the frequencies
        return F.relu(out if self.transition else out + x)


class BCResNet(Network):
    """BC-ResNet-``width`` on the log-mels of (B, C, T) waveforms; ``width`` is the paper's tau.

    Args:
        num_classes: Output classes.
        in_channels: Waveform channels (each gets its log-mel). Defaults to 1.
        width: Channel multiplier tau: stage widths 8, 12, 16, 20 times it. Defaults to 1 (BC-ResNet-1).
        dropout: Channel dropout in each block's time branch. Defaults to 0.1 (the paper's).
        **frontend: :class:`LogMel` arguments (``sample_rate``, ``n_mels``, ``n_fft``, ``hop_length``, ...).

    Shapes: (B, C, T) -> (B, num_classes) for any T of at least one hop.
    """

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 1, dropout: float = 0.1, **frontend):
        super().__init__()
        self.frontend = LogMel(**frontend)
        base = 8 * width
        widths = [2 * base, base, int(1.5 * base), 2 * base, int(2.5 * base)]  # stem, then the four stages
        frequencies = (self.frontend.n_mels - 1) // 2 + 1  # after the stem's stride 2
        layers: list[nn.Module] = [
            conv(in_channels, widths[0], 5, stride=(2, 1), padding=2, bias=False),
            batch_norm(widths[0]),
            nn.ReLU(inplace=True),
        ]
        for stage, blocks in enumerate(BLOCKS):
            for index in range(blocks):
                stride = 2 if stage in STRIDED_STAGES and index == 0 else 1
                in_width = widths[stage] if index == 0 else widths[stage + 1]
                layers.append(BCResBlock(in_width, widths[stage + 1], frequencies, stride, 2**stage, dropout))
                frequencies = (frequencies - 1) // stride + 1
        last, self.num_features = widths[-1], 4 * base
        layers += [
            # the remaining frequencies (5 for 40 mels) in one depthwise kernel; time padded to keep its length
            conv(last, last, (frequencies, 5), padding=(0, 2), groups=last, bias=False),
            conv(last, self.num_features, 1, bias=False),
            batch_norm(self.num_features),
            nn.ReLU(inplace=True),
        ]
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(global_pool("avg"), nn.Flatten(), nn.Linear(self.num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.frontend(x))  # (B, C, T) -> (B, num_features, 1, frames)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.head[-1]


class M5(Network):
    """M5 on raw (B, C, T) waveforms: four convolutions with batch norm, ReLU and max pooling by 4 between them.

    Args:
        num_classes: Output classes.
        in_channels: Waveform channels. Defaults to 1.
        widths: Channels of the four convolutions. Defaults to (128, 128, 256, 512), the paper's.
        stride: Of the 80-wide first convolution. Defaults to 4 (the paper's, at 8 kHz).

    Shapes: (B, C, T) -> (B, num_classes), for T of at least ``64 * stride`` samples (one value after the pools).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        widths: tuple[int, ...] = (128, 128, 256, 512),
        stride: int = 4,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            first = index == 0
            kernel, padding = (80, 38) if first else (3, 1)
            pooling = [max_pool(4, rank=1)] if index < len(widths) - 1 else []  # the last map is averaged instead
            layers += [
                conv(channels, width, kernel, stride=stride if first else 1, padding=padding, bias=False, rank=1),
                batch_norm(width, rank=1),
                nn.ReLU(inplace=True),
                *pooling,
            ]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head = nn.Sequential(global_pool("avg", rank=1), nn.Flatten(), nn.Linear(channels, num_classes))
        self.min_samples = 4 ** (len(widths) - 1) * stride  # one value left after the poolings

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < self.min_samples:
            raise CnnkitError(f"m5 needs clips of at least {self.min_samples} samples; got {x.shape[-1]}: pad them")
        return self.features(x)  # (B, num_features, T / (4 * stride * 16))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.head[-1]


@register_model(modality="audio")
def bcresnet(num_classes: int, in_channels: int = 1, img_size: int = 16000, **kwargs) -> BCResNet:
    """BC-ResNet-1 on 40 log-mels (9.2k parameters with 12 classes); any clip length.

    At any ``sample_rate`` (default 16000) the front end keeps the paper's 32 ms windows (``n_fft`` the
    nearest power of two) and 10 ms hops, unless ``n_fft`` or ``hop_length`` are given.
    """
    return BCResNet(num_classes, in_channels, **logmel_windows(kwargs))


def logmel_windows(kwargs: dict) -> dict:
    """Front-end arguments with the paper's 32 ms windows and 10 ms hops at their ``sample_rate``, unless given."""
    rate = kwargs.get("sample_rate", 16000)
    kwargs.setdefault("n_fft", 2 ** round(math.log2(0.032 * rate)))  # 512 at 16 kHz, 256 at 8 kHz
    kwargs.setdefault("hop_length", max(1, round(0.010 * rate)))  # 160 at 16 kHz, 80 at 8 kHz
    return kwargs


@register_model(modality="audio")
def m5(num_classes: int, in_channels: int = 1, img_size: int = 16000, sample_rate: int = 8000, **kwargs) -> M5:
    """M5 on raw waveforms (0.56M parameters with 10 classes); any clip of at least 256 samples at 8 kHz.

    The first stride is the paper's 4 at 8 kHz and grows with ``sample_rate`` (8 at 16 kHz), so its
    80-wide filters span the same 10 ms at any rate, unless ``stride`` is given.
    """
    if "widths" in kwargs:
        kwargs["widths"] = tuple(kwargs["widths"])  # JSON metadata stores tuples as lists
    kwargs.setdefault("stride", max(1, round(4 * sample_rate / 8000)))
    return M5(num_classes, in_channels, **kwargs)

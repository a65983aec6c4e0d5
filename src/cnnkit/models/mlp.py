"""The plain fully connected network (multilayer perceptron) that CNNs are compared with.

It flattens the image (or a (C, L) series, ``rank=1``) and learns one weight per pixel
per hidden unit: no weight sharing and no notion of neighbouring pixels, which is exactly
what ``cnnkit compare`` measures against convolution.

Three registered variants, one per kind of input:

- ``mlp``: images (two hidden layers of 512 and 256 units).
- ``mlp1d``: time series, the MLP baseline of Wang, Yan and Oates ("Time Series
  Classification from Scratch with Deep Neural Networks: A Strong Baseline", IJCNN 2017):
  three hidden layers of 500 ReLU units, dropout 0.1 on the input and 0.2, 0.2 and 0.3
  after the hidden layers. It reads a series of the training length (shorter ones are
  padded to it, as the run's data was).
- ``mlp_logmel``: audio, the same three layers on the flattened log-mel spectrogram of the
  keyword spotters' front end (40 bands, 32 ms windows, 10 ms hops), so it is compared with
  ``bcresnet`` on the very features that network sees.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.frontend import LogMel
from cnnkit.models.kws import logmel_windows
from cnnkit.models.network import Network
from cnnkit.models.registry import register_model

WANG_HIDDEN = (500, 500, 500)
WANG_DROPOUT = (0.2, 0.2, 0.3)  # after each hidden layer; 0.1 on the input (WANG_INPUT_DROPOUT)
WANG_INPUT_DROPOUT = 0.1


class MLP(Network):
    """Flatten, [input dropout], then ``Linear-ReLU-Dropout`` per hidden layer, then a linear classifier.

    Args:
        num_classes: Output classes.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side (a series' length); the first layer has ``in_channels * img_size**rank`` inputs.
            Defaults to 32.
        hidden: Width of each hidden layer. Defaults to (512, 256).
        dropout: Dropout after each hidden layer, one rate for all or one per layer. Defaults to 0.1.
        rank: Spatial dimensions of the input: 2 for (B, C, H, W) images, 1 for (B, C, L) series. Defaults to 2.
        input_dropout: Dropout on the flattened input (none when 0, so image checkpoints keep their layer
            names). Defaults to 0.
        in_features: The flattened input's size, when it is not ``in_channels * img_size**rank`` (a spectrogram).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        img_size: int = 32,
        hidden: tuple[int, ...] = (512, 256),
        dropout: float | tuple[float, ...] = 0.1,
        rank: int = 2,
        input_dropout: float = 0.0,
        in_features: int | None = None,
    ) -> None:
        super().__init__()
        rates = tuple(dropout) if isinstance(dropout, (tuple, list)) else (dropout,) * len(hidden)
        layers: list[nn.Module] = [nn.Flatten()] + ([nn.Dropout(input_dropout)] if input_dropout else [])
        width = in_features or in_channels * img_size**rank
        for units, rate in zip(hidden, rates, strict=True):
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(rate)]
            width = units
        self.features = nn.Sequential(*layers)
        self.num_features = width
        self.head = nn.Linear(width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, num_features)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.head


class LogMelMLP(MLP):
    """An MLP on the flattened log-mel spectrogram of (B, C, T) waveforms of ``img_size`` samples.

    Args:
        num_classes: Output classes.
        in_channels: Waveform channels. Defaults to 1.
        img_size: Samples per clip; the spectrogram has ``1 + img_size // hop_length`` frames. Defaults to 16000.
        **kwargs: :class:`MLP` arguments (``hidden``, ``dropout``, ``input_dropout``) and :class:`LogMel`
            arguments (``sample_rate``, ``n_mels``, ``n_fft``, ``hop_length``, ...).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, img_size: int = 16000, **kwargs) -> None:
        mlp_keys = ("hidden", "dropout", "input_dropout")
        mlp_kwargs = {key: kwargs.pop(key) for key in mlp_keys if key in kwargs}
        frontend = LogMel(**kwargs)
        super().__init__(
            num_classes, in_channels, img_size, in_features=in_channels * frontend.n_mels * frontend.frames(img_size),
            **mlp_kwargs,
        )  # fmt: skip
        self.frontend = frontend

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.frontend(x))  # (B, C, T) -> (B, C, n_mels, frames) -> (B, num_features)


def _lists_as_tuples(kwargs: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}  # JSON lists


@register_model
def mlp(num_classes: int, in_channels: int = 3, img_size: int = 32, **kwargs) -> MLP:
    """A two-hidden-layer perceptron (512 and 256 units) on the flattened image (or series, ``rank=1``)."""
    return MLP(num_classes, in_channels, img_size, **_lists_as_tuples(kwargs))


@register_model(modality="series")
def mlp1d(num_classes: int, in_channels: int = 1, img_size: int = 128, **kwargs) -> MLP:
    """Wang et al.'s MLP baseline on series of length ``img_size``: 3 x 500 ReLU units, dropout 0.1/0.2/0.2/0.3."""
    defaults = {"hidden": WANG_HIDDEN, "dropout": WANG_DROPOUT, "input_dropout": WANG_INPUT_DROPOUT, "rank": 1}
    return MLP(num_classes, in_channels, img_size, **{**defaults, **_lists_as_tuples(kwargs)})


@register_model(modality="audio")
def mlp_logmel(num_classes: int, in_channels: int = 1, img_size: int = 16000, **kwargs) -> LogMelMLP:
    """Wang et al.'s three 500-unit layers on the 40 log-mels of ``bcresnet``'s front end (32 ms windows)."""
    defaults = {"hidden": WANG_HIDDEN, "dropout": WANG_DROPOUT, "input_dropout": WANG_INPUT_DROPOUT}
    return LogMelMLP(num_classes, in_channels, img_size, **logmel_windows({**defaults, **_lists_as_tuples(kwargs)}))

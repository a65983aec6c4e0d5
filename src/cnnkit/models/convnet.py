"""The default CNN: conv-BN-ReLU stages with max pooling and a global-average-pool head.

It adapts to the input size: images larger than 64 pixels get strided stem layers, and
small images (8x8 digits, 28x28 MNIST) are pooled only while the map stays at least 4x4,
so the same network serves 8-pixel digits and 224-pixel photos.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnkit.models.registry import register_model


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ConvNet(nn.Module):
    """Stages of two 3x3 convolutions each; by default three, of widths ``width``, ``2*width``, ``4*width``.

    Stages beyond the third keep ``4*width`` channels, so ``cnnkit compare`` can add depth
    without the cost growing fourfold per stage.

    Args:
        num_classes: Output classes.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side, used to choose stem strides and pooling. Defaults to 32.
        width: Channels of the first stage. Defaults to 32.
        dropout: Dropout before the classifier. Defaults to 0.1.
        stages: Number of two-convolution stages. Defaults to 3.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        img_size: int = 32,
        width: int = 32,
        dropout: float = 0.1,
        stages: int = 3,
    ) -> None:
        super().__init__()
        stem: list[nn.Module] = [conv_bn_relu(in_channels, width)]
        size = img_size
        while size > 64:  # strided stem keeps large inputs cheap
            stem.append(conv_bn_relu(width, width, stride=2))
            size = math.ceil(size / 2)
        blocks: list[nn.Module] = []
        channels = width
        for index in range(stages):
            out_channels = width * 2 ** min(index, 2)
            blocks += [conv_bn_relu(channels, out_channels), conv_bn_relu(out_channels, out_channels)]
            if size >= 8:  # pool only while the map stays at least 4x4
                blocks.append(nn.MaxPool2d(2))
                size //= 2
            channels = out_channels
        self.features = nn.Sequential(*stem, *blocks)
        self.num_features = channels
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes)
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, C, H', W')

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.head[-1] = nn.Linear(self.num_features, num_classes)


@register_model
def convnet(num_classes: int, in_channels: int = 3, img_size: int = 32, **kwargs) -> ConvNet:
    """cnnkit's default CNN for small images (about 0.29M parameters at width 32)."""
    return ConvNet(num_classes, in_channels, img_size, **kwargs)

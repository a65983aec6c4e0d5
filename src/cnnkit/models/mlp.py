"""The plain fully connected network (multilayer perceptron) that CNNs are compared with.

It flattens the image (or a (C, L) series, ``rank=1``) and learns one weight per pixel
per hidden unit: no weight sharing and no notion of neighbouring pixels, which is exactly
what ``cnnkit compare`` measures against convolution.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnkit.models.network import Network
from cnnkit.models.registry import register_model


class MLP(Network):
    """Flatten, then ``Linear-ReLU-Dropout`` per hidden layer, then a linear classifier.

    Args:
        num_classes: Output classes.
        in_channels: Input channels. Defaults to 3.
        img_size: Input side (a series' length); the first layer has ``in_channels * img_size**rank`` inputs.
            Defaults to 32.
        hidden: Width of each hidden layer. Defaults to (512, 256).
        dropout: Dropout after each hidden layer. Defaults to 0.1.
        rank: Spatial dimensions of the input: 2 for (B, C, H, W) images, 1 for (B, C, L) series. Defaults to 2.
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        img_size: int = 32,
        hidden: tuple[int, ...] = (512, 256),
        dropout: float = 0.1,
        rank: int = 2,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_channels * img_size**rank
        for units in hidden:
            layers += [nn.Linear(width, units), nn.ReLU(inplace=True), nn.Dropout(dropout)]
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


@register_model
def mlp(num_classes: int, in_channels: int = 3, img_size: int = 32, **kwargs) -> MLP:
    """A two-hidden-layer perceptron (512 and 256 units) on the flattened image (or series, ``rank=1``)."""
    if "hidden" in kwargs:
        kwargs["hidden"] = tuple(kwargs["hidden"])  # JSON metadata stores tuples as lists
    return MLP(num_classes, in_channels, img_size, **kwargs)

"""Inference rewrites that keep the function: batch norm folded into the convolution across a max pooling.

The default ConvNet pools before its batch norm (cheaper training). Exporters fold a
batch norm only into a convolution right before it, so left alone the exported graph
would run batch norm as a separate op, and int8 quantization would have to quantize it
on its own (it cost 0.56 points on digits). A per-channel affine map ``s * y + t``
commutes with max pooling when ``s > 0``, and turns it into min pooling when ``s < 0``,
which is max pooling of the negated map. So each conv -> max-pool -> batch-norm -> ReLU
block becomes conv' -> ReLU -> max-pool (all scales positive) or
conv' -> max-pool -> sign -> ReLU, computing the same numbers up to float rounding.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class ChannelSign(nn.Module):
    """Multiply each channel by +1 or -1: undoes the negation that turned min pooling into max pooling."""

    def __init__(self, sign: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("sign", sign.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sign


def _is_pooled_block(block: nn.Module) -> bool:
    kinds = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.ReLU)
    return (
        isinstance(block, nn.Sequential)
        and len(block) == len(kinds)
        and all(isinstance(layer, kind) for layer, kind in zip(block, kinds))
    )


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[nn.Conv2d, torch.Tensor]:
    """The convolution times sign(s) * (s, t) of the batch norm, and that sign per channel."""
    scale = (norm.weight if norm.affine else 1.0) / torch.sqrt(norm.running_var + norm.eps)
    shift = (norm.bias if norm.affine else 0.0) - scale * norm.running_mean
    sign = torch.where(scale < 0, -1.0, 1.0)
    folded = copy.deepcopy(conv)
    folded.weight.copy_(conv.weight * (sign * scale).view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    folded.bias = nn.Parameter(sign * (scale * bias + shift))
    return folded, sign


def fold_pooled_batch_norms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode whose conv -> max-pool -> batch-norm -> ReLU blocks have no batch norm."""
    model = copy.deepcopy(model).eval()
    for block in model.modules():
        if not _is_pooled_block(block):
            continue
        conv, pool, norm, _ = block
        folded, sign = _fold(conv, norm)
        if bool((sign > 0).all()):
            layers = [folded, nn.ReLU(inplace=True), pool, nn.Identity()]  # ReLU commutes with max pooling
        else:
            layers = [folded, pool, ChannelSign(sign), nn.ReLU(inplace=True)]
        for index, layer in enumerate(layers):
            block[index] = layer
    return model

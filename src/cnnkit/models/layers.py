"""Convolution, pooling and batch norm parametrized by spatial rank: 1 for signals, 2 for images.

A network picks its rank once (``(B, C, L)`` time series and audio are rank 1,
``(B, C, H, W)`` images rank 2) and asks here for its layers, so 1-D and 2-D networks
share one definition (Keras' ``base_conv``). The modules are torch's own (``nn.Conv2d``
at rank 2, ``nn.Conv1d`` at rank 1), so state dicts, numerics and every tool that
recognises torch layers (summary, batch-norm folding, ONNX export) stay as they are.

Example:
    >>> block = conv_bn_relu(2, 8, pool=True, rank=1)
    >>> block(torch.zeros(4, 2, 100)).shape
    torch.Size([4, 8, 50])
"""

from __future__ import annotations

from torch import nn

from cnnkit.errors import CnnkitError

RANKS = (1, 2)
# kind -> its module class at rank 1 and at rank 2
_CLASSES: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "conv": (nn.Conv1d, nn.Conv2d),
    "max_pool": (nn.MaxPool1d, nn.MaxPool2d),
    "avg_pool": (nn.AvgPool1d, nn.AvgPool2d),
    "global_avg_pool": (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
    "global_max_pool": (nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d),
    "batch_norm": (nn.BatchNorm1d, nn.BatchNorm2d),
}


def layer_class(kind: str, rank: int) -> type[nn.Module]:
    """The torch module class of ``kind`` (a key of the table above) at spatial ``rank``."""
    if rank not in RANKS:
        raise CnnkitError(f"rank {rank}: cnnkit layers are 1-D (signals, (B, C, L)) or 2-D (images, (B, C, H, W))")
    return _CLASSES[kind][rank - 1]


def conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, ...],
    stride: int | tuple[int, ...] = 1,
    padding: int | tuple[int, ...] | str = 0,
    dilation: int | tuple[int, ...] = 1,
    groups: int = 1,
    bias: bool = True,
    rank: int = 2,
) -> nn.Module:
    """A convolution over ``rank`` spatial dimensions, with torch.nn's arguments (one int, or one per dimension).

    ``rank`` defaults to 2.

    ``padding="same"`` (stride 1) keeps the size for any kernel; an even one gets its extra
    step on the right, as Keras and TensorFlow pad.
    """
    return layer_class("conv", rank)(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)


def max_pool(kernel_size: int, stride: int | None = None, padding: int = 0, rank: int = 2) -> nn.Module:
    """Max pooling; ``stride`` defaults to the window, as in torch.nn; padding counts as minus infinity."""
    return layer_class("max_pool", rank)(kernel_size, stride, padding)


def avg_pool(kernel_size: int, stride: int | None = None, rank: int = 2) -> nn.Module:
    """Average pooling; ``stride`` defaults to the window, as in torch.nn."""
    return layer_class("avg_pool", rank)(kernel_size, stride)


def global_pool(kind: str = "avg", rank: int = 2) -> nn.Module:
    """Pool each channel's whole map to one value: ``(B, C, *spatial)`` -> ``(B, C, 1...)``; ``kind`` avg or max."""
    return layer_class(f"global_{kind}_pool", rank)(1)


def batch_norm(num_features: int, eps: float = 1e-5, rank: int = 2, affine: bool = True) -> nn.Module:
    """Batch norm over channels; rank 1's ``BatchNorm1d`` also normalises flat ``(B, F)`` features.

    ``affine=False`` normalises only (no learnt scale and shift), as the audio front end does.
    """
    return layer_class("batch_norm", rank)(num_features, eps, affine=affine)


def conv_bn_relu(
    in_channels: int, out_channels: int, stride: int = 1, pool: bool = False, rank: int = 2
) -> nn.Sequential:
    """A 3-wide convolution, batch norm and ReLU; with ``pool``, a 2-wide max pooling right after the convolution.

    Pooling before the normalisation (as in Keller Jordan's airbench) runs batch norm and
    ReLU on a quarter of the values (half in 1-D). On the 28x28 first stage those two were
    a quarter of a CPU training step; this order made the whole step 1.15x faster.
    :mod:`cnnkit.models.fold` relies on this conv -> pool -> norm -> ReLU order.
    """
    pooling = [max_pool(2, rank=rank)] if pool else []
    return nn.Sequential(
        conv(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, rank=rank),
        *pooling,
        batch_norm(out_channels, rank=rank),
        nn.ReLU(inplace=True),
    )


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, relu: bool = True, rank: int = 2) -> nn.Sequential:
    """A stride-1 convolution that keeps the size (``padding="same"``), batch norm and, with ``relu``, ReLU.

    The block of the time-series networks (FCN, ResNet and InceptionTime's shortcut). No
    convolution bias: the batch norm's shift replaces it.

    Example:
        >>> conv_bn(1, 128, 8, rank=1)(torch.zeros(2, 1, 150)).shape
        torch.Size([2, 128, 150])
    """
    activation = [nn.ReLU(inplace=True)] if relu else []
    return nn.Sequential(
        conv(in_channels, out_channels, kernel_size, padding="same", bias=False, rank=rank),
        batch_norm(out_channels, rank=rank),
        *activation,
    )

"""The classic architectures, from torchvision where it has them, behind one small interface.

Each model keeps torchvision's parameter names, so official ImageNet weights load
unchanged, and registers where those weights come from (:class:`TorchvisionWeights`).
Two adaptations make them work on any input:

- ``in_channels`` other than 3 adapts the first convolution with
  :func:`cnnkit.models.pretrained.adapt_input_conv` (RGB filters summed for grayscale),
  the same adapter that fits pretrained weights to grayscale data.
- Below ``SMALL_INPUT`` pixels the stem's first convolution stops striding (the network
  downsamples 16x instead of 32x), pools that would shrink the map below 2x2 are dropped,
  and AlexNet/VGG pool their last map to 1x1 instead of replicating it to 7x7 (which
  saves 100M classifier weights), so a 28x28 digit keeps a feature map instead of
  collapsing to nothing. Convolution weights keep their shapes, so pretrained weights
  still fit (the 7x7-pooled classifier weights are summed, see ``create_pretrained``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cnnkit.models.network import Network
from cnnkit.models.pretrained import TorchvisionWeights, adapt_input_conv
from cnnkit.models.registry import register_model

SMALL_INPUT = 64
# GoogLeNet and Inception v3 were trained in TensorFlow on (x - 0.5) / 0.5 inputs.
TENSORFLOW_INPUT = {"mean": (0.5,) * 3, "std": (0.5,) * 3}


def _torchvision(name: str) -> Callable[..., nn.Module]:
    """torchvision's builder ``name``, imported on use: ``torchvision.models`` imports torch._dynamo (1.3 s)."""
    import torchvision.models

    return getattr(torchvision.models, name)


def _side(size: int, module: nn.Module) -> int:
    kernel, stride, padding = (
        (v if isinstance(v, int) else v[0] for v in (module.kernel_size, module.stride, module.padding))
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d))
        else (1, 1, 0)
    )
    return (size + 2 * padding - kernel) // stride + 1


def drop_small_pools(features: nn.Sequential, size: int, min_size: int = 2) -> int:
    """Replace each max-pool that would leave less than ``min_size`` with an identity; returns the final side."""
    for index, module in enumerate(features):
        after = _side(size, module)
        if isinstance(module, nn.MaxPool2d) and after < min_size:
            features[index] = nn.Identity()
        else:
            size = after
    return size


class Classic(Network):
    """A classifier re-seated behind the shared interface (:class:`~cnnkit.models.network.Network`).

    Modules are registered under the names given (torchvision's), so the state dict is
    torchvision's and official weights load unchanged.

    Args:
        body: Feature extractor modules in forward order.
        pool: Global pooling applied before flattening.
        head: Modules applied to the flattened features, ending with the classifier.
        num_features: Channels of the feature map ``forward_features`` returns.
    """

    def __init__(self, body: dict[str, nn.Module], pool: nn.Module, head: dict[str, nn.Module], num_features: int):
        super().__init__()
        for name, module in body.items():
            self.add_module(name, module)
        self.avgpool = pool
        for name, module in head.items():
            self.add_module(name, module)
        self.body, self.head = list(body), list(head)
        self.num_features = num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.body:
            x = getattr(self, name)(x)
        return x  # (B, num_features, H', W')

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(x).flatten(1)
        for name in self.head:
            x = getattr(self, name)(x)
        return x  # (B, num_classes)

    def get_classifier(self) -> nn.Linear:
        return [m for name in self.head for m in getattr(self, name).modules() if isinstance(m, nn.Linear)][-1]


def _seat(net: nn.Module, body: list[str], head: list[str], num_features: int, in_channels: int, pool=None) -> Classic:
    modules = {name: getattr(net, name) for name in body}
    model = Classic(modules, pool or net.avgpool, {name: getattr(net, name) for name in head}, num_features)
    adapt_input_conv(model, in_channels)
    return model


def _small(img_size: int) -> bool:
    return img_size < SMALL_INPUT


@register_model
def lenet5(num_classes: int, in_channels: int = 3, img_size: int = 32) -> Classic:
    """LeNet-5 (LeCun et al. 1998): two 5x5 tanh convolutions with average pooling, then 120-84-K units.

    The first convolution pads by 2 (28x28 MNIST, as is usual today); below 20 pixels the
    second pads too, and an adaptive pool feeds the 5x5x16 map the original had at 32x32.
    """
    features = nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.Tanh(),
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5, padding=2 if img_size < 20 else 0),
        nn.Tanh(),
        nn.AvgPool2d(2),
    )
    classifier = nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84), nn.Tanh())
    classifier.append(nn.Linear(84, num_classes))
    return Classic({"features": features}, nn.AdaptiveAvgPool2d(5), {"classifier": classifier}, 16)


@register_model(pretrained=TorchvisionWeights())
def alexnet(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """AlexNet (Krizhevsky et al. 2012), torchvision's version; small inputs get a stride-1 first layer."""
    net = _torchvision("alexnet")(num_classes=num_classes)
    if _small(img_size):
        net.features[0].stride, net.features[0].padding = (1, 1), (5, 5)
    return _pool_small_maps(net, 256, in_channels, img_size)


def _pool_small_maps(net: nn.Module, num_features: int, in_channels: int, img_size: int) -> Classic:
    drop_small_pools(net.features, img_size)
    if _small(img_size):
        net.avgpool = nn.AdaptiveAvgPool2d(1)
        net.classifier[1 if isinstance(net.classifier[0], nn.Dropout) else 0] = nn.Linear(num_features, 4096)
    return _seat(net, ["features"], ["classifier"], num_features, in_channels)


def _vgg(builder, num_classes: int, in_channels: int, img_size: int) -> Classic:
    return _pool_small_maps(builder(num_classes=num_classes), 512, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights())
def vgg11(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """VGG-11 (Simonyan & Zisserman 2014, configuration A), torchvision's version."""
    return _vgg(_torchvision("vgg11"), num_classes, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights())
def vgg16(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """VGG-16 (configuration D), torchvision's version."""
    return _vgg(_torchvision("vgg16"), num_classes, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights(**TENSORFLOW_INPUT, drop=("aux1.", "aux2.")))
def googlenet(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """GoogLeNet / Inception v1 (Szegedy et al. 2014), torchvision's version without auxiliary heads."""
    net = _torchvision("googlenet")(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True)
    if _small(img_size):
        net.conv1.conv.stride = (1, 1)
    body = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2", "inception3a", "inception3b", "maxpool3"]
    body += [f"inception4{c}" for c in "abcde"] + ["maxpool4", "inception5a", "inception5b"]
    return _seat(net, body, ["dropout", "fc"], 1024, in_channels)


@register_model(pretrained=TorchvisionWeights(**TENSORFLOW_INPUT, drop=("AuxLogits.",)))
def inception_v3(num_classes: int, in_channels: int = 3, img_size: int = 299) -> Classic:
    """Inception v3 (Szegedy et al. 2015), torchvision's version without the auxiliary head.

    Its stem shrinks 299 pixels to 35 without padding; below 75 pixels (its smallest
    input) the stem convolutions pad and stop striding, and a stem pool is kept only
    while the map entering the Inception blocks stays at least 7x7 (the two reduction
    blocks then still leave 1x1).
    """
    inception = _torchvision("inception_v3")
    net = inception(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=True)
    if img_size < 75:
        net.Conv2d_1a_3x3.conv.stride = (1, 1)
        for layer in (net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_4a_3x3):
            layer.conv.padding = (1, 1)
        size = img_size
        for name in ("maxpool1", "maxpool2"):
            if _side(size, getattr(net, name)) < 7:
                setattr(net, name, nn.Identity())
            else:
                size = _side(size, getattr(net, name))
    body = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    body += ["maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d"]
    body += ["Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]
    return _seat(net, body, ["dropout", "fc"], 2048, in_channels)


def _resnet(builder, num_classes: int, in_channels: int, img_size: int) -> Classic:
    net = builder(num_classes=num_classes)
    if _small(img_size):
        net.conv1.stride = (1, 1)
    body = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return _seat(net, body, ["fc"], net.fc.in_features, in_channels)


@register_model(pretrained=TorchvisionWeights())
def resnet18(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """ResNet-18 (He et al. 2015), torchvision's version; small inputs get a stride-1 stem convolution."""
    return _resnet(_torchvision("resnet18"), num_classes, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights())
def resnet50(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """ResNet-50 with bottleneck blocks (torchvision's v1.5: stride on the 3x3 convolution)."""
    return _resnet(_torchvision("resnet50"), num_classes, in_channels, img_size)


def _mobilenet(net: nn.Module, num_features: int, in_channels: int, img_size: int) -> Classic:
    if _small(img_size):
        net.features[0][0].stride = (1, 1)
    return _seat(net, ["features"], ["classifier"], num_features, in_channels, pool=nn.AdaptiveAvgPool2d(1))


@register_model(pretrained=TorchvisionWeights())
def mobilenet_v2(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """MobileNet v2 (Sandler et al. 2018): inverted residuals with linear bottlenecks."""
    net = _torchvision("mobilenet_v2")(num_classes=num_classes)
    return _mobilenet(net, net.last_channel, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights())
def mobilenet_v3_small(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """MobileNet v3 small (Howard et al. 2019): searched blocks with squeeze-excitation and hard-swish."""
    net = _torchvision("mobilenet_v3_small")(num_classes=num_classes)
    return _mobilenet(net, net.classifier[0].in_features, in_channels, img_size)


@register_model(pretrained=TorchvisionWeights())
def mobilenet_v3_large(num_classes: int, in_channels: int = 3, img_size: int = 224) -> Classic:
    """MobileNet v3 large."""
    net = _torchvision("mobilenet_v3_large")(num_classes=num_classes)
    return _mobilenet(net, net.classifier[0].in_features, in_channels, img_size)

"""torchvision's detectors (FCOS, RetinaNet, SSDlite, Faster R-CNN) on EfficientNet-Lite0, with cnnkit's interface.

torchvision builds each architecture around any backbone; here the backbone is
EfficientNet-Lite0, with its offline ImageNet weights when ``pretrained_backbone`` (the
input then follows Lite0's preprocessing, ``(pixel - 127) / 128``). Nothing is downloaded.

What changes from torchvision's COCO recipes, and why:

- No resize and no normalisation inside: torchvision's ``GeneralizedRCNNTransform``
  rescales every image to 800 px and normalises with ImageNet statistics; cnnkit's data
  pipeline already resized and normalised by one rule for every model, so the detector
  sees the batch as given and its boxes come back in the input's pixel coordinates.
- Feature maps at strides 8, 16 and 32 (Lite0's 40-, 112- and 320-channel stages) with
  128-channel FPN levels instead of 256: the heads cost a quarter on a CPU.
- Anchors half torchvision's size: two strides per level (RetinaNet 16-25 px on P3 up to
  406 px on P7, Faster R-CNN 16-128 px on its four levels; torchvision starts at 32), and
  SSDlite's default boxes from 3 strides (24 px on a stride-8 map) instead of a fifth of
  the image. A 20-40 px object then overlaps an anchor by more than the 0.5 IoU the
  matchers ask for. FCOS has no anchor boxes; its levels take objects up to 8 strides
  (P3: 64 px), so 20-40 px boxes land on P3.
- ``img_size`` only sets SSDlite's default box scales (fractions of the image side); every
  detector runs at any input size.
- One score threshold for all, ``score_threshold`` (0.05, as COCO evaluation wants the
  low-scored tail; torchvision's defaults range from 0.01 to 0.2).
- Labels are cnnkit's 0..K-1 in and out; Faster R-CNN and SSD reserve class 0 for the
  background, so their labels are shifted by one inside.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection.ssdlite import SSDLiteHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from cnnkit.models.detector import MAX_DETECTIONS, Detections, Detector, Targets
from cnnkit.models.efficientnet_lite import EfficientNetLite
from cnnkit.models.layers import conv_bn_relu
from cnnkit.models.pretrained import IMAGENET_CLASSES, create_pretrained

# Lite0's block index ending each tapped stage -> (stride, channels): the last block at strides 8, 16 and 32.
LITE0_TAPS = {4: (8, 40), 10: (16, 112), 15: (32, 320)}
FPN_CHANNELS = 128
SSD_EXTRA_CHANNELS = (256, 128)  # two stride-2 layers after Lite0's stride 32: maps at strides 64 and 128


class FixedSizeTransform(GeneralizedRCNNTransform):
    """torchvision's batching and box post-processing without its resize and normalisation (the pipeline's job)."""

    def __init__(self, size_divisible: int = 32) -> None:
        super().__init__(
            min_size=1, max_size=1, image_mean=[0.0] * 3, image_std=[1.0] * 3, size_divisible=size_divisible
        )

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None):
        return image, target


def lite0_body(pretrained: bool, in_channels: int = 3) -> nn.Sequential:
    """Lite0's stem and blocks as one flat sequence (named stem, 0, 1, ...), ImageNet-trained when ``pretrained``."""
    if pretrained:
        network = create_pretrained("efficientnet_lite0", IMAGENET_CLASSES, in_channels)
    else:
        network = EfficientNetLite(1, in_channels)
    return nn.Sequential(OrderedDict([("stem", network.stem), *((str(i), b) for i, b in enumerate(network.blocks))]))


def lite0_fpn(pretrained: bool, in_channels: int, extra_blocks: nn.Module) -> BackboneWithFPN:
    """Lite0 -> FPN levels "0", "1", "2" (strides 8, 16, 32) plus ``extra_blocks``' coarser levels."""
    return BackboneWithFPN(
        lite0_body(pretrained, in_channels),
        return_layers={str(index): str(level) for level, index in enumerate(LITE0_TAPS)},
        in_channels_list=[channels for _, channels in LITE0_TAPS.values()],
        out_channels=FPN_CHANNELS,
        extra_blocks=extra_blocks,
    )


class SSDFeatures(nn.Module):
    """Lite0's stride-8, 16 and 32 maps and two extra stride-2 layers: the five maps SSDlite's head reads."""

    def __init__(self, pretrained: bool, in_channels: int = 3) -> None:
        super().__init__()
        self.body = lite0_body(pretrained, in_channels)[: max(LITE0_TAPS) + 2]  # up to the last tapped block
        channels = [channels for _, channels in LITE0_TAPS.values()]
        extras = []
        for out_channels in SSD_EXTRA_CHANNELS:
            extras.append(conv_bn_relu(channels[-1], out_channels, stride=2))
            channels.append(out_channels)
        self.extras = nn.ModuleList(extras)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        maps = []
        for index, block in enumerate(self.body):
            x = block(x)
            if index - 1 in LITE0_TAPS:  # body[0] is the stem, so block i is body[i + 1]
                maps.append(x)
        for extra in self.extras:
            maps.append(extra(maps[-1]))
        return OrderedDict((str(i), m) for i, m in enumerate(maps))


class TorchvisionDetector(Detector):
    """A torchvision detector behind cnnkit's interface: 0..K-1 labels, no internal resize.

    Args:
        detector: The torchvision model, built with ``num_classes + label_offset`` classes.
        num_classes: Object classes, without a background class.
        label_offset: 1 where the torchvision model keeps class 0 for the background, else 0.
    """

    backbone = "efficientnet_lite0"

    def __init__(self, detector: nn.Module, num_classes: int, label_offset: int = 0) -> None:
        super().__init__()
        detector.transform = FixedSizeTransform(getattr(detector.transform, "size_divisible", 32))
        self.detector, self.num_classes, self.label_offset = detector, num_classes, label_offset
        heads = [detector.rpn.head, detector.roi_heads.box_predictor] if hasattr(detector, "rpn") else [detector.head]
        for head in heads:
            head.register_forward_hook(_float32_outputs)

    @property
    def score_threshold(self) -> float:
        """The lowest score an eval detection keeps (Faster R-CNN applies it in its second stage)."""
        return float(getattr(self.detector, "roi_heads", self.detector).score_thresh)

    @property
    def max_detections(self) -> int:
        """Detections kept per image."""
        return int(getattr(self.detector, "roi_heads", self.detector).detections_per_img)

    def forward(self, images: torch.Tensor, targets: Targets | None = None) -> dict[str, torch.Tensor] | Detections:
        if self.training:
            checked = self.check_targets(images, targets)
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + self.label_offset} for t in checked]
            return self.detector(images, shifted)
        detections = self.detector(images)
        # float32 boxes even under bf16 autocast, where 8 mantissa bits would round a 320 px coordinate to 2 px
        return [
            {"boxes": d["boxes"].float(), "scores": d["scores"].float(), "labels": d["labels"] - self.label_offset}
            for d in detections
        ]


def _float32_outputs(module: nn.Module, inputs: tuple, outputs: Any) -> Any:
    """A head's outputs in float32: under bf16 autocast torchvision's box coders cast the anchors to the deltas'
    dtype, and in bf16 a 320 px anchor coordinate rounds by up to 1 px, a tenth of a 20 px box's IoU slack."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float()
    if isinstance(outputs, dict):
        return {key: _float32_outputs(module, inputs, value) for key, value in outputs.items()}
    return type(outputs)(_float32_outputs(module, inputs, value) for value in outputs)


def _anchor_sizes(levels: int) -> tuple[tuple[int, ...], ...]:
    """Two strides per level, in three octave scales as RetinaNet's (8-px P3 cells: 16, 20 and 25 px anchors)."""
    return tuple(tuple(round(16 * 2**level * 2 ** (step / 3)) for step in range(3)) for level in range(levels))


@dataclass(frozen=True)
class DetectorArgs:
    """The builder arguments every detector here takes (see :func:`build`)."""

    num_classes: int
    in_channels: int
    img_size: int
    pretrained_backbone: bool
    score_threshold: float


def fcos(args: DetectorArgs) -> nn.Module:
    """torchvision's FCOS (anchor-free, P3-P7) on EfficientNet-Lite0; ``pretrained_backbone``: ImageNet weights."""
    backbone = lite0_fpn(args.pretrained_backbone, args.in_channels, LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
    # torchvision's default "anchors": one per cell, of the level's stride
    return FCOS(backbone, args.num_classes, score_thresh=args.score_threshold, detections_per_img=MAX_DETECTIONS)


def retinanet(args: DetectorArgs) -> nn.Module:
    """torchvision's RetinaNet (focal loss, P3-P7) on EfficientNet-Lite0, anchors 16-406 px for small objects."""
    backbone = lite0_fpn(args.pretrained_backbone, args.in_channels, LastLevelP6P7(FPN_CHANNELS, FPN_CHANNELS))
    anchors = AnchorGenerator(_anchor_sizes(5), ((0.5, 1.0, 2.0),) * 5)
    head = RetinaNetHead(FPN_CHANNELS, anchors.num_anchors_per_location()[0], args.num_classes)
    return RetinaNet(
        backbone,
        args.num_classes,
        anchor_generator=anchors,
        head=head,
        score_thresh=args.score_threshold,
        detections_per_img=MAX_DETECTIONS,
    )


def ssdlite(args: DetectorArgs) -> nn.Module:
    """torchvision's SSDlite (depthwise heads) on EfficientNet-Lite0's strides 8-128; boxes from 24 px at 320."""
    backbone = SSDFeatures(args.pretrained_backbone, args.in_channels)
    strides = [stride for stride, _ in LITE0_TAPS.values()] + [64, 128]
    # a default box of 3 strides per map (24 px on the stride-8 map), as a fraction of the image side
    scales = [3 * stride / args.img_size for stride in strides] + [6 * strides[-1] / args.img_size]
    anchors = DefaultBoxGenerator([[2, 3]] * len(strides), scales=scales)
    norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)  # torchvision's SSDlite settings
    head = SSDLiteHead(backbone.out_channels, anchors.num_anchors_per_location(), args.num_classes + 1, norm)
    size = (args.img_size, args.img_size)
    return SSD(
        backbone,
        anchors,
        size,
        args.num_classes + 1,
        head=head,
        score_thresh=args.score_threshold,
        detections_per_img=MAX_DETECTIONS,
    )


def faster_rcnn(args: DetectorArgs) -> nn.Module:
    """torchvision's Faster R-CNN (two-stage, FPN) on EfficientNet-Lite0, with a 256-unit box head for CPUs."""
    backbone = lite0_fpn(args.pretrained_backbone, args.in_channels, LastLevelMaxPool())
    anchors = AnchorGenerator(tuple((16 * 2**level,) for level in range(4)), ((0.5, 1.0, 2.0),) * 4)
    pool = MultiScaleRoIAlign(["0", "1", "2"], output_size=7, sampling_ratio=2)
    representation = 256  # torchvision's 1024 would hold 6.4M of the weights on 128-channel levels
    return FasterRCNN(
        backbone,
        rpn_anchor_generator=anchors,
        box_roi_pool=pool,
        box_head=TwoMLPHead(FPN_CHANNELS * 7 * 7, representation),
        box_predictor=FastRCNNPredictor(representation, args.num_classes + 1),
        rpn_pre_nms_top_n_test=500,  # torchvision's low-resolution mobile recipe keeps fewer proposals on small images
        rpn_post_nms_top_n_test=300,
        box_score_thresh=args.score_threshold,
        box_detections_per_img=MAX_DETECTIONS,
    )


# name -> (architecture, label offset: 1 where the torchvision model keeps class 0 for the background)
ARCHITECTURES: dict[str, tuple[Callable[[DetectorArgs], nn.Module], int]] = {
    "fcos": (fcos, 0),
    "retinanet": (retinanet, 0),
    "ssdlite": (ssdlite, 1),
    "faster_rcnn": (faster_rcnn, 1),
}


def build(name: str, args: DetectorArgs) -> TorchvisionDetector:
    """The detector ``name`` of :data:`ARCHITECTURES`, wrapped in cnnkit's interface."""
    architecture, label_offset = ARCHITECTURES[name]
    return TorchvisionDetector(architecture(args), args.num_classes, label_offset)

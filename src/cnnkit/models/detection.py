"""Registers torchvision's detectors under cnnkit's names; they are built by :mod:`cnnkit.models.torchvision_detectors`.

The registry only needs names and descriptions. Importing torchvision's detection code
pulls in ``torch._dynamo`` (about 1.3 s), which every ``cnnkit`` command would otherwise
pay at start-up, so the architectures are imported when one of them is built.
"""

from __future__ import annotations

from cnnkit.models.detector import SCORE_THRESHOLD, Detector
from cnnkit.models.registry import register_model

# each on EfficientNet-Lite0 (``pretrained_backbone``: its ImageNet weights)
DESCRIPTIONS = {
    "fcos": "torchvision's FCOS (anchor-free, P3-P7) on EfficientNet-Lite0.",
    "retinanet": "torchvision's RetinaNet (focal loss, P3-P7) on EfficientNet-Lite0, anchors from 16 px.",
    "ssdlite": "torchvision's SSDlite (depthwise heads) on EfficientNet-Lite0's strides 8-128.",
    "faster_rcnn": "torchvision's Faster R-CNN (two-stage, FPN) on EfficientNet-Lite0, a 256-unit box head for CPUs.",
}


def _register(name: str) -> None:
    def builder(
        num_classes: int,
        in_channels: int = 3,
        img_size: int = 320,
        pretrained_backbone: bool = False,
        score_threshold: float = SCORE_THRESHOLD,
    ) -> Detector:
        from cnnkit.models.torchvision_detectors import DetectorArgs, build

        return build(name, DetectorArgs(num_classes, in_channels, img_size, pretrained_backbone, score_threshold))

    builder.__name__ = builder.__qualname__ = name  # the registry key
    builder.__doc__ = DESCRIPTIONS[name]
    register_model(task="detect")(builder)


for _name in DESCRIPTIONS:
    _register(_name)

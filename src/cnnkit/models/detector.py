"""Detectors: the interface every cnnkit detector shares, and ``boxnet``, cnnkit's compact one for small images.

Every detector (this one and torchvision's in :mod:`cnnkit.models.torchvision_detectors`) is called
the same way, as torchvision's are:

- ``model(images, targets)`` in training mode, with ``images`` a float (B, 3, H, W) batch
  already resized and normalised by the data pipeline and ``targets`` one dict per image,
  ``{"boxes": float (M, 4) [x1, y1, x2, y2] pixels, "labels": int64 (M,) in [0, K)}``,
  returns a dict of scalar losses; their sum is the step's loss.
- ``model(images)`` in eval mode returns one dict per image, ``{"boxes": (N, 4) xyxy,
  "scores": (N,) in [0, 1], "labels": (N,)}``, best first, boxes clipped to the image and
  in the input's pixel coordinates.

Input size rule: a detector never resizes or normalises (the data pipeline did both, by
one rule for every model); any H and W work, and multiples of 32 avoid padding in
torchvision's detectors.

``boxnet`` is an FCOS-style single-stage detector on one stride-4 map. Why these choices,
for 20-40 px objects on 64-320 px images and CPUs:

- stride 4: a 20 px box spans 5x5 cells, so several cells learn it and the regressed
  edges are at most 2 px from a cell centre; at stride 8 (FCOS's finest level) a 20 px
  box has 2-3 cells and a one-cell error costs a third of its IoU.
- receptive field: the stride-16 stage lets each stride-4 cell see 119 px (computed
  below, ``RECEPTIVE_FIELD``), about three times a 40 px box, enough to see where the
  object ends; the 64-channel top-down path (an FPN on one level) brings it down to stride 4.
- no anchors: each cell inside a box's centre region (within ``CENTRE_RADIUS`` cells of
  its centre) regresses its distances to the four edges, so no box sizes need tuning to
  the data; a cell inside two boxes learns the smaller one, as in FCOS.
- losses: sigmoid focal loss (the many empty cells would swamp a cross-entropy), GIoU on
  the boxes (scale-free, so 20 px and 200 px boxes weigh alike) and FCOS's centerness,
  which down-weights boxes regressed from cells near an object's edge at inference.
"""

from __future__ import annotations

import abc
import math

import torch
from torch import nn
from torch.nn import functional as F

from cnnkit.errors import CnnkitError
from cnnkit.models.layers import conv, conv_bn_relu
from cnnkit.models.registry import register_model

Targets = list[dict[str, torch.Tensor]]
Detections = list[dict[str, torch.Tensor]]

STRIDE = 4  # of the map boxnet predicts on
RECEPTIVE_FIELD = 119  # px one stride-4 cell sees before the head: 3 + 4 + 8 + 8 + 16 + 16 + 32 + 32 (3x3 convs)
CENTRE_RADIUS = 1.5  # cells around a box centre that learn it (FCOS's centre sampling)
SCORE_THRESHOLD = 0.05  # lowest score an eval detection keeps, every detector: COCO mAP counts the low tail
MAX_DETECTIONS = 100  # per image, every detector: COCO's maxDets
CANDIDATES = 1000  # best-scored cells and classes that NMS sees (FCOS's); NMS over all 19,200 at 320 px took 0.4 s
PRIOR = 0.01  # initial object probability of every cell (RetinaNet's), so the focal loss starts near its minimum


class Detector(nn.Module, abc.ABC):
    """A detector with cnnkit's interface (see the module docstring); subclasses set ``num_classes``.

    ``backbone`` is the registry name of the network the features come from, whose
    pretrained preprocessing (``cnnkit.models.pretrained.pretrained_preprocessing``)
    the input must follow when its weights are ImageNet's.
    """

    num_classes: int
    backbone: str

    @abc.abstractmethod
    def forward(self, images: torch.Tensor, targets: Targets | None = None) -> dict[str, torch.Tensor] | Detections:
        """Training: (B, 3, H, W) images and their targets -> losses; eval: images -> detections."""

    def check_targets(self, images: torch.Tensor, targets: Targets | None) -> Targets:
        """The training targets, refused in one line when they cannot be learnt from (which image, which box).

        The annotation readers already drop such boxes; this catches a caller that bypassed
        them (or a checkpoint of another class count) before a loss fails deep inside.
        """
        if targets is None or len(targets) != len(images):
            got = "none" if targets is None else len(targets)
            raise CnnkitError(f"a detector in training needs one target per image: {len(images)} images, {got} targets")
        for index, target in enumerate(targets):
            boxes, labels = target.get("boxes"), target.get("labels")
            shapes = {key: tuple(value.shape) for key, value in target.items() if isinstance(value, torch.Tensor)}
            if (
                boxes is None
                or labels is None
                or boxes.dim() != 2
                or boxes.shape[1] != 4
                or labels.shape != (len(boxes),)
            ):
                raise CnnkitError(f"target {index}: want 'boxes' (M, 4) and 'labels' (M,), got shapes {shapes}")
            bad = ~torch.isfinite(boxes).all(1) | (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            bad |= (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                box = int(torch.nonzero(bad)[0])
                raise CnnkitError(
                    f"target {index}, box {box}: {boxes[box].tolist()} label {int(labels[box])} is not a box of "
                    f"positive size with a label in 0..{self.num_classes - 1}; fix or drop it in the annotations"
                )
        return targets


class BoxNet(Detector):
    """cnnkit's compact single-stage detector: FCOS's head on one stride-4 map (why: the module docstring).

    Args:
        num_classes: Object classes (no background class).
        in_channels: Image channels. Defaults to 3.
        width: Channels of the top-down path and the head. Defaults to 64.
        score_threshold: Lowest score an eval detection keeps. Defaults to 0.05 (COCO evaluation's usual).
        nms_threshold: IoU above which a lower-scored box of the same class is suppressed. Defaults to 0.6.
        max_detections: Detections kept per image. Defaults to 100 (COCO's maxDets).

    Example:
        >>> model = BoxNet(num_classes=2).eval()
        >>> sorted(model(torch.zeros(1, 3, 64, 64))[0])
        ['boxes', 'labels', 'scores']
    """

    backbone = "boxnet"

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        width: int = 64,
        score_threshold: float = SCORE_THRESHOLD,
        nms_threshold: float = 0.6,
        max_detections: int = MAX_DETECTIONS,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.score_threshold, self.nms_threshold, self.max_detections = score_threshold, nms_threshold, max_detections
        # the convnet's block (3x3 conv, batch norm, ReLU); strides 4, 8 and 16 with 32, 64 and 128 channels
        self.stride4 = nn.Sequential(
            conv_bn_relu(in_channels, 16, stride=2), conv_bn_relu(16, 32, stride=2), conv_bn_relu(32, 32)
        )
        self.stride8 = nn.Sequential(conv_bn_relu(32, 64, stride=2), conv_bn_relu(64, 64))
        self.stride16 = nn.Sequential(conv_bn_relu(64, 128, stride=2), conv_bn_relu(128, 128), conv_bn_relu(128, 128))
        self.lateral = nn.ModuleList(conv(channels, width, 1) for channels in (32, 64, 128))
        self.head = conv_bn_relu(width, width)
        self.classes = conv(width, num_classes, 3, padding=1)
        self.box = conv(width, 4, 3, padding=1)  # log distances to the left, top, right, bottom edges, in strides
        self.centerness = conv(width, 1, 3, padding=1)
        nn.init.constant_(self.classes.bias, -math.log((1 - PRIOR) / PRIOR))

    def predict_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) images -> class logits (B, K, h, w), edge distances (B, 4, h, w) px, centerness (B, 1, h, w)."""
        c4 = self.stride4(images)
        c8 = self.stride8(c4)
        c16 = self.stride16(c8)
        p = self.lateral[2](c16)
        for lateral, features in ((self.lateral[1], c8), (self.lateral[0], c4)):  # top-down: 16 -> 8 -> 4
            p = lateral(features) + F.interpolate(p, size=features.shape[-2:], mode="nearest")
        p = self.head(p)  # (B, width, h, w), h = ceil(H / 4)
        distances = torch.exp(self.box(p).float().clamp(max=10.0)) * STRIDE  # clamp: exp stays finite in bf16 runs
        return self.classes(p), distances, self.centerness(p)

    def forward(self, images: torch.Tensor, targets: Targets | None = None) -> dict[str, torch.Tensor] | Detections:
        logits, distances, centerness = self.predict_maps(images)
        centres = cell_centres(logits.shape[-2:], images.device)  # (h*w, 2) x, y
        logits = logits.flatten(2).transpose(1, 2).float()  # (B, h*w, K)
        boxes = decode(centres, distances.flatten(2).transpose(1, 2))  # (B, h*w, 4)
        centerness = centerness.flatten(2).squeeze(1).float()  # (B, h*w)
        if self.training:
            return self.losses(logits, boxes, centerness, centres, self.check_targets(images, targets))
        return self.detect(logits, boxes, centerness, images.shape[-2:])

    def losses(
        self,
        logits: torch.Tensor,
        boxes: torch.Tensor,
        centerness: torch.Tensor,
        centres: torch.Tensor,
        targets: Targets,
    ) -> dict[str, torch.Tensor]:
        from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss  # see detect(): imported on use

        classes, box_losses, centre_losses, positives = [], [], [], 0
        for logit, box, centre_logit, target in zip(logits, boxes, centerness, targets):
            matched = assign(centres, target["boxes"].to(box))  # (h*w,) index of the box each cell learns, -1 none
            positive = matched >= 0
            wanted = torch.zeros_like(logit)
            wanted[positive, target["labels"][matched[positive]]] = 1.0
            classes.append(sigmoid_focal_loss(logit, wanted, reduction="sum"))
            truth = target["boxes"].to(box)[matched[positive]]  # (P, 4)
            centre_truth = centerness_of(centres[positive], truth)
            box_losses.append(generalized_box_iou_loss(box[positive], truth, reduction="sum"))
            centre_losses.append(
                F.binary_cross_entropy_with_logits(centre_logit[positive], centre_truth, reduction="sum")
            )
            positives += int(positive.sum())
        count = max(positives, 1)  # an image batch with no boxes still trains the classifier towards "nothing"
        return {
            "classification": torch.stack(classes).sum() / count,
            "box_regression": torch.stack(box_losses).sum() / count,
            "centerness": torch.stack(centre_losses).sum() / count,
        }

    def detect(
        self, logits: torch.Tensor, boxes: torch.Tensor, centerness: torch.Tensor, size: tuple[int, int]
    ) -> Detections:
        # torchvision.ops imports torch._dynamo (1.3 s), which commands that never run a detector should not pay
        from torchvision.ops import batched_nms, clip_boxes_to_image

        detections = []
        for logit, box, centre_logit in zip(logits, boxes, centerness):
            scores = ranking_scores(logit, centre_logit)  # (h*w, K)
            score, flat = scores.flatten().topk(min(CANDIDATES, scores.numel()))
            kept = score > self.score_threshold
            score, cell, label = score[kept], flat[kept] // self.num_classes, flat[kept] % self.num_classes
            kept_box = clip_boxes_to_image(box[cell], tuple(size))
            keep = batched_nms(kept_box, score, label, self.nms_threshold)[: self.max_detections]
            detections.append({"boxes": kept_box[keep], "scores": score[keep], "labels": label[keep]})
        return detections


def ranking_scores(logits: torch.Tensor, centerness: torch.Tensor) -> torch.Tensor:
    """FCOS's ranking score (..., N, K) of class logits (..., N, K) and centerness logits (..., N)."""
    return torch.sqrt(logits.sigmoid() * centerness.sigmoid()[..., None])


def cell_centres(size: torch.Size | tuple[int, int], device: torch.device) -> torch.Tensor:
    """(h*w, 2) pixel coordinates (x, y) of each stride-4 cell's centre, row by row."""
    ys, xs = torch.meshgrid(torch.arange(size[0], device=device), torch.arange(size[1], device=device), indexing="ij")
    return (torch.stack([xs, ys], -1).reshape(-1, 2).float() + 0.5) * STRIDE


def decode(centres: torch.Tensor, distances: torch.Tensor) -> torch.Tensor:
    """Cell centres (N, 2) and distances (..., N, 4) left, top, right, bottom -> boxes (..., N, 4) xyxy."""
    return torch.cat([centres - distances[..., :2], centres + distances[..., 2:]], -1)


def assign(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The box each cell learns: inside it and near its centre, the smallest when several qualify; -1 for none.

    Args:
        centres: (N, 2) cell centres, pixels.
        boxes: (M, 4) xyxy target boxes, pixels.

    Returns:
        (N,) int64 box index per cell.
    """
    if len(boxes) == 0:
        return torch.full((len(centres),), -1, dtype=torch.long, device=centres.device)
    x, y = centres[:, None, 0], centres[:, None, 1]  # (N, 1)
    inside = (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])  # (N, M)
    mid_x, mid_y = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    reach = CENTRE_RADIUS * STRIDE
    near = ((x - mid_x).abs() <= reach) & ((y - mid_y).abs() <= reach)
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).expand(len(centres), -1)
    area = torch.where(inside & near, area, torch.inf)
    smallest, index = area.min(1)
    # a box smaller than a cell holds no cell centre: its nearest cell learns it, so no box goes unlearnt
    index = torch.where(smallest.isinf(), -1, index)
    missing = torch.ones(len(boxes), dtype=torch.bool, device=boxes.device)
    missing[index[index >= 0]] = False
    if missing.any():
        mids = torch.stack([mid_x, mid_y], -1)[missing]  # (m, 2)
        index[torch.cdist(mids, centres).argmin(1)] = torch.nonzero(missing).squeeze(1)
    return index


def centerness_of(centres: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centerness in [0, 1] of (P, 2) cells for their (P, 4) boxes: 1 at the centre, 0 at an edge."""
    left_right = torch.stack([centres[:, 0] - boxes[:, 0], boxes[:, 2] - centres[:, 0]], -1).clamp(min=0)
    top_bottom = torch.stack([centres[:, 1] - boxes[:, 1], boxes[:, 3] - centres[:, 1]], -1).clamp(min=0)
    ratio = (left_right.min(-1).values / left_right.max(-1).values.clamp(min=1e-6)) * (
        top_bottom.min(-1).values / top_bottom.max(-1).values.clamp(min=1e-6)
    )
    return ratio.sqrt()


@register_model(task="detect")
def boxnet(num_classes: int, in_channels: int = 3, img_size: int = 320, **kwargs) -> BoxNet:
    """cnnkit's compact anchor-free detector for 20-40 px objects on small images and CPUs (0.5M parameters)."""
    return BoxNet(num_classes, in_channels, **kwargs)

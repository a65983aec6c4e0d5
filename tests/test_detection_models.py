"""Detectors (models/detector.py, detection.py): one interface, finite losses, well-formed boxes, small objects."""

from __future__ import annotations

import json
import socket

import pytest
import torch
from torchvision.ops import box_iou

from cnnkit.errors import CnnkitError
from cnnkit.models import ModelSpec, build, create_model, list_models, model_entry, register_model
from cnnkit.models.detector import BoxNet, assign, cell_centres
from cnnkit.models.pretrained import create_pretrained
from cnnkit.models.torchvision_detectors import lite0_body

DETECTORS = ["boxnet", "faster_rcnn", "fcos", "retinanet", "ssdlite"]
# parameters at 3 classes, and the range the test allows (a changed architecture should be a decision)
PARAMETERS = {"boxnet": (0.4e6, 0.6e6), "faster_rcnn": (4.5e6, 6e6), "fcos": (4.5e6, 5.5e6)}
PARAMETERS |= {"retinanet": (4.5e6, 5.5e6), "ssdlite": (3.5e6, 4.5e6)}
COLOURS = torch.tensor([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]])


def boxes_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two 96 px images: 20-40 px boxes on the first, none on the second (an image with nothing in it)."""
    images = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(0))
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 40.0, 38.0], [50.0, 50.0, 80.0, 90.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    return images, targets


def coloured_squares(size: int = 96) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Two noise images with one and two solid squares of 20-40 px, one colour per class."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, size, size, generator=generator) * 0.5 - 0.25
    placed = [[(8, 30, 28, 0)], [(12, 10, 40, 1), (56, 50, 32, 2)]]  # (x, y, side, class) per image
    targets = []
    for image, squares in zip(images, placed):
        for x, y, side, label in squares:
            image[:, y : y + side, x : x + side] = COLOURS[label][:, None, None]
        boxes = torch.tensor([[x, y, x + side, y + side] for x, y, side, _ in squares], dtype=torch.float32)
        targets.append({"boxes": boxes, "labels": torch.tensor([label for *_, label in squares])})
    return images, targets


def test_detectors_are_registered_apart_from_classifiers():
    assert list_models(task="detect") == DETECTORS
    assert not set(DETECTORS) & set(list_models()) and not set(DETECTORS) & set(list_models(modality="image"))
    assert {"boxnet", "convnet"} <= set(list_models(task=None))
    assert all(model_entry(name).task == "detect" and model_entry(name).modality == "image" for name in DETECTORS)
    with pytest.raises(ValueError, match="task 'segment'"):
        register_model(task="segment")


SLOW_TO_TRAIN = {"faster_rcnn"}  # over 1.5 s a step on a loaded CPU


TRAINED = [pytest.param(name, marks=pytest.mark.slow) if name in SLOW_TO_TRAIN else name for name in DETECTORS]


@pytest.mark.parametrize("name", TRAINED)
def test_detector_trains_on_a_tiny_batch_with_finite_losses_that_backpropagate(name, one_thread):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=96).train()
    images, targets = boxes_batch()
    losses = model(images, targets)
    assert losses and all(loss.dim() == 0 and torch.isfinite(loss) for loss in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_eval_returns_well_formed_boxes_inside_the_image(name, one_thread):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, img_size=96, score_threshold=0.0).eval()
    height, width = 72, 100  # not multiples of 32: torchvision pads, and boxes must stay inside the real image
    with torch.no_grad():
        detections = model(torch.randn(2, 3, height, width))
    assert len(detections) == 2
    for found in detections:
        boxes, scores, labels = found["boxes"], found["scores"], found["labels"]
        assert 0 < len(boxes) <= 100 and boxes.shape == (len(scores), 4) and labels.shape == scores.shape
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert ((scores >= 0) & (scores <= 1)).all() and (scores[:-1] >= scores[1:]).all()  # best first
        assert labels.dtype == torch.int64 and ((labels >= 0) & (labels < 3)).all()


@pytest.mark.parametrize("name", DETECTORS)
def test_detector_parameter_count_is_the_documented_size(name):
    low, high = PARAMETERS[name]
    assert low <= sum(p.numel() for p in create_model(name, num_classes=3).parameters()) <= high


@pytest.mark.parametrize("name", ["boxnet", "fcos"])
def test_detector_returns_float32_boxes_under_bf16_autocast(name, one_thread):
    model = create_model(name, num_classes=2, score_threshold=0.0).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        found = model(torch.randn(1, 3, 64, 64))[0]
    assert len(found["boxes"]) and found["boxes"].dtype == found["scores"].dtype == torch.float32


@pytest.mark.parametrize("name", ["faster_rcnn", "ssdlite"])
def test_torchvision_detector_heads_decode_boxes_from_float32_under_bf16_autocast(name, one_thread):
    model = create_model(name, num_classes=2, img_size=64).train()
    heads = [model.detector.rpn.head, model.detector.roi_heads.box_predictor] if name == "faster_rcnn" else []
    heads = heads or [model.detector.head]
    dtypes = []
    for head in heads:  # registered after the detector's own hook, so it sees what the box coder receives
        head.register_forward_hook(lambda module, inputs, outputs: dtypes.append(_tensors(outputs)) and None)
    images, targets = boxes_batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(
            images[:, :, :64, :64], [{"boxes": t["boxes"][:1] / 2, "labels": t["labels"][:1]} for t in targets]
        )
    assert {dtype for found in dtypes for dtype in found} == {torch.float32} and len(dtypes) == len(heads)
    assert all(torch.isfinite(loss) for loss in losses.values())


def _tensors(outputs) -> list[torch.dtype]:
    """The dtypes of every tensor in a head's (nested) outputs."""
    if isinstance(outputs, torch.Tensor):
        return [outputs.dtype]
    values = outputs.values() if isinstance(outputs, dict) else outputs
    return [dtype for value in values for dtype in _tensors(value)]


@pytest.mark.parametrize("name", ["boxnet", "ssdlite"])
def test_detector_refuses_targets_it_cannot_learn_from_in_one_line(name):
    model = create_model(name, num_classes=3, img_size=64).train()
    images = torch.zeros(1, 3, 64, 64)
    box = {"boxes": torch.tensor([[4.0, 4.0, 30.0, 30.0]]), "labels": torch.tensor([0])}
    cases = {
        "one target per image": [box, box],
        "'boxes' \\(M, 4\\)": [{"boxes": torch.zeros(4), "labels": torch.zeros(1, dtype=torch.long)}],
        "box 0.*label 3": [{**box, "labels": torch.tensor([3])}],
        "box 0.*positive size": [{**box, "boxes": torch.tensor([[30.0, 4.0, 4.0, 30.0]])}],
    }
    for message, targets in cases.items():
        with pytest.raises(CnnkitError, match=message) as error:
            model(images, targets)
        assert "\n" not in str(error.value)
    with pytest.raises(CnnkitError, match="1 images, none targets"):
        model(images)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["boxnet", "ssdlite"])
def test_detector_rebuilt_from_its_spec_gives_the_same_detections(name):
    spec = ModelSpec(name, num_classes=2, in_channels=3, img_size=64, kwargs={"score_threshold": 0.0})
    model, rebuilt = build(spec).eval(), build(spec).eval()
    rebuilt.load_state_dict(model.state_dict())
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        first, second = model(images)[0], rebuilt(images)[0]
    assert len(first["boxes"]) and all(torch.equal(first[key], second[key]) for key in first)


def test_torchvision_detector_feeds_the_batch_unresized_and_unnormalised():
    model = create_model("fcos", num_classes=2).eval()
    images = torch.rand(2, 3, 96, 128)
    batch, _ = model.detector.transform(images)
    assert torch.equal(batch.tensors, images) and batch.image_sizes == [(96, 128)] * 2


def test_faster_rcnn_and_ssdlite_report_cnnkit_labels_without_the_background_class(one_thread):
    for name in ("faster_rcnn", "ssdlite"):
        model = create_model(name, num_classes=1, img_size=64, score_threshold=0.0).eval()
        with torch.no_grad():
            labels = model(torch.randn(1, 3, 64, 64))[0]["labels"]
        assert len(labels) and (labels == 0).all(), name  # one class: label 0, never the background's 0 + 1


@pytest.mark.slow
def test_pretrained_backbone_loads_the_lite0_imagenet_weights_offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("the network is off in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    imagenet = create_pretrained("efficientnet_lite0", 1000)
    model = create_model("retinanet", num_classes=2, pretrained_backbone=True)
    body = model.detector.backbone.body
    assert torch.equal(body["stem"][0].weight, imagenet.stem[0].weight)
    assert torch.equal(body["15"].project[0].weight, imagenet.blocks[15].project[0].weight)
    assert not torch.equal(lite0_body(pretrained=False).stem[0].weight, imagenet.stem[0].weight)


def test_boxnet_assign_gives_a_shared_cell_to_the_smaller_box_and_every_box_a_cell():
    centres = cell_centres((8, 8), torch.device("cpu"))  # 32 px image, stride-4 cells centred at 2, 6, ...
    big, small, tiny = [0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 20.0, 20.0], [25.0, 1.0, 27.0, 3.0]
    index = assign(centres, torch.tensor([big, small, tiny]))
    at = {(float(x), float(y)): int(i) for (x, y), i in zip(centres, index)}
    assert at[(14.0, 14.0)] == 1  # inside both, near both centres: the smaller learns it
    assert (index == 2).sum() == 1  # a 2 px box holds no cell centre, yet its nearest cell learns it
    assert (index == 0).any() and (assign(centres, torch.zeros(0, 4)) == -1).all()


def test_boxnet_sees_three_times_a_40_px_box_at_stride_4():
    model = BoxNet(num_classes=1).eval()
    images = torch.randn(1, 3, 192, 192, generator=torch.Generator().manual_seed(0)).requires_grad_()
    logits, _, _ = model.predict_maps(images)
    assert logits.shape[-2:] == (48, 48)  # stride 4
    logits[0, 0, 24, 24].backward()  # the cell centred at 98 px
    ys, xs = torch.nonzero(images.grad.abs().sum((0, 1)), as_tuple=True)
    assert xs.max() - xs.min() + 1 >= 3 * 40 and ys.max() - ys.min() + 1 >= 3 * 40


@pytest.mark.slow
def test_boxnet_overfits_coloured_squares_of_20_to_40_px(one_thread):
    torch.manual_seed(0)
    images, targets = coloured_squares()
    model = create_model("boxnet", num_classes=3, img_size=96)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(120):  # reached IoU 0.8-0.95 on every box by step 100 when written
        loss = sum(model.train()(images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        detections = model.eval()(images)
    for found, target in zip(detections, targets):
        for box, label in zip(target["boxes"], target["labels"]):
            same_class = found["boxes"][found["labels"] == label]
            assert len(same_class) and box_iou(box[None], same_class).max() >= 0.5


@pytest.mark.slow
def test_models_command_lists_detectors_with_their_task_and_size(capsys):
    from cnnkit.cli.main import main

    assert main(["models", "--task", "detect", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == DETECTORS and {row["task"] for row in rows.values()} == {"detect"}
    for name, (low, high) in PARAMETERS.items():  # counted at 10 classes: the head grows a little
        assert low <= rows[name]["parameters"] <= high * 1.05
    assert main(["models", "--task", "detect"]) == 0
    table = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert (
        sorted(table) == DETECTORS and "detect" in table["fcos"] and f"{rows['fcos']['parameters']:,}" in table["fcos"]
    )


def test_summary_of_a_detector_name_lists_its_layers():
    from cnnkit.understand.summary import summarize_model

    summary = summarize_model("boxnet", img_size=64)
    assert summary.parameters == sum(p.numel() for p in create_model("boxnet", 10).parameters())
    assert summary.layers[-1].type == "Conv2d" and list(summary.input_shape) == [3, 64, 64]

"""Box-aware batch augmentation: boxes follow their pixels, stay inside the image, and a seed repeats a run."""

from __future__ import annotations

import pytest
import torch

from cnnkit.data.box_augment import (
    BoxAugmentation,
    BoxBatch,
    clip_boxes,
    hflip,
    parse_box_augmentation,
    zoom,
)
from cnnkit.errors import CnnkitError

SIZE = 64  # image side in pixels
pytestmark = pytest.mark.usefixtures("one_thread")  # two threads on a loaded machine spin 100x slower on tiny batches


def _painted(seed: int, batch: int = 6, count: int = 4) -> tuple[torch.Tensor, BoxBatch]:
    """Dark uint8 images (B, 3, 64, 64), each with up to ``count`` bright disjoint integer boxes, one per 16-px band."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 40, (batch, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    boxes, labels = [], []
    for i in range(batch):
        rows = []
        for band in range(int(torch.randint(0, count + 1, (), generator=generator))):
            x1, width, height = (int(v) for v in torch.randint(0, 30, (3,), generator=generator))
            y1 = band * 16
            box = [x1, y1, x1 + 6 + width, y1 + 4 + height % 12]
            images[i, :, box[1] : box[3], box[0] : box[2]] = 250
            rows.append(box)
        boxes.append(torch.tensor(rows, dtype=torch.float32).reshape(-1, 4))
        labels.append(torch.arange(len(rows)) % 3)
    return images, _batch(boxes, labels)


def _batch(boxes, labels) -> BoxBatch:
    return BoxBatch.from_targets([{"boxes": b, "labels": c} for b, c in zip(boxes, labels)])


def _assert_valid(boxes: BoxBatch, size: int = SIZE, min_size: float = 2.0) -> None:
    real = boxes.boxes[boxes.mask]
    assert (real >= 0).all() and (real <= size).all()
    assert (real[:, 2] - real[:, 0] >= min_size).all() and (real[:, 3] - real[:, 1] >= min_size).all()
    assert (boxes.boxes[~boxes.mask] == 0).all() and (boxes.labels[~boxes.mask] == -1).all()
    assert (boxes.labels[boxes.mask] >= 0).all()


def test_box_batch_round_trips_variable_lengths():
    boxes = [torch.tensor([[0.0, 0, 4, 4], [1, 1, 3, 5]]), torch.zeros(0, 4), torch.tensor([[2.0, 2, 9, 9]])]
    batch = _batch(boxes, [[1, 0], [], [2]])
    assert batch.boxes.shape == (3, 2, 4) and batch.mask.tolist() == [[True, True], [False, False], [True, False]]
    back = batch.to_targets()
    assert all(torch.equal(target["boxes"], b) for target, b in zip(back, boxes))
    assert [target["labels"].tolist() for target in back] == [[1, 0], [], [2]]
    with pytest.raises(CnnkitError, match="image 0 of the batch has 2 boxes but 1 labels"):
        _batch(boxes, [[1], [], [2]])


def test_hflip_twice_is_identity():
    images, boxes = _painted(0, batch=16)
    augmentation = BoxAugmentation(hflip=True)
    once = augmentation(images, boxes, torch.Generator().manual_seed(3))
    twice = augmentation(*once, torch.Generator().manual_seed(3))  # the same images flipped again
    assert not torch.equal(once[0], images.float())
    assert torch.equal(twice[0], images.float())
    assert (twice[1].boxes - boxes.boxes).abs().max() <= 1e-5  # W - (W - x) rounds in float32
    assert torch.equal(twice[1].mask, boxes.mask) and torch.equal(twice[1].labels, boxes.labels)


def test_hflip_mirrors_boxes():
    images = torch.zeros(2, 1, 4, 10, dtype=torch.uint8)
    images[:, :, :, 1:3] = 255  # columns 1-2 lit: the box [1, 0, 3, 4]
    boxes = _batch([torch.tensor([[1.0, 0, 3, 4]])] * 2, [[0], [0]])
    flipped, moved = hflip(images, boxes, torch.tensor([True, False]))
    assert moved.boxes[:, 0].tolist() == [[7.0, 0, 9, 4], [1.0, 0, 3, 4]]
    assert flipped[0, 0, 0].nonzero().flatten().tolist() == [7, 8] and torch.equal(flipped[1], images[1])


def test_zoom_crop_keeps_the_right_boxes():
    # Zoom 2 about the top-left corner: the view is the image's top-left quarter.
    images = torch.zeros(1, 1, SIZE, SIZE)
    inside, cut, mostly_out, outside = [4, 4, 12, 10], [24, 4, 40, 10], [30, 30, 60, 40], [40, 40, 60, 60]
    boxes = _batch([torch.tensor([inside, cut, mostly_out, outside], dtype=torch.float32)], [[0, 1, 2, 3]])
    _, kept = zoom(images, boxes, torch.tensor([2.0]), torch.zeros(1, 2))
    assert kept.mask.tolist() == [[True, True, False, False]]
    assert kept.boxes[0, :2].tolist() == [[8, 8, 24, 20], [48, 8, 64, 20]]  # doubled; the cut one clipped at x = 64
    assert kept.labels.tolist() == [[0, 1, -1, -1]]


def test_zoom_moves_pixels_and_boxes_alike_on_a_wide_image():
    images = torch.zeros(1, 1, 32, 64)
    images[:, :, 4:20, 8:40] = 255  # the box [8, 4, 40, 20]
    boxes = _batch([torch.tensor([[8.0, 4, 40, 20]])], [[0]])
    out, moved = zoom(images, boxes, torch.tensor([0.5]), torch.tensor([[16.0, 8.0]]))  # x -> x / 2 + (16, 8)
    assert moved.boxes[0, 0].tolist() == [20, 10, 36, 18]
    assert (out[0, 0, 11:17, 21:35] > 254).all() and (out[0, 0, 9:19, 16:19] < 1).all()
    # beyond the shrunken image, the image's mean colour
    assert (out[0, 0, :, :15] - images.mean()).abs().max() < 1e-3


def test_clip_boxes_drops_by_the_stated_rule():
    boxes = torch.tensor(
        [
            [-10.0, 0, 10, 10],  # half its area inside: kept, clipped
            [-31.0, 0, 9, 10],  # 22.5% inside: dropped
            [-30.0, 0, 10, 10],  # exactly 25% inside: kept
            [62.5, 0, 64, 10],  # 1.5 px wide: dropped
            [5.0, 5, 6, 40],  # 1 px wide from the start: dropped
        ]
    )
    clipped = clip_boxes(_batch([boxes], [[0, 1, 2, 3, 4]]), (SIZE, SIZE))
    assert clipped.mask.tolist() == [[True, False, True, False, False]]
    assert clipped.boxes[0, 0].tolist() == [0, 0, 10, 10]
    relaxed = clip_boxes(_batch([boxes], [[0, 1, 2, 3, 4]]), (SIZE, SIZE), min_visible=0.2, min_size=1)
    assert relaxed.mask.tolist() == [[True, True, True, True, True]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_augmentation_keeps_boxes_inside_the_image(seed):
    images, boxes = _painted(seed, batch=12)
    augmentation = BoxAugmentation(hflip=True, scale=0.5, crop=0.6, brightness=0.3)
    augmented, moved = augmentation(images, boxes, torch.Generator().manual_seed(seed))
    assert augmented.dtype == torch.float32 and augmented.shape == images.shape
    _assert_valid(moved)
    assert moved.mask.sum() < boxes.mask.sum()  # strong crops cut some boxes away


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_augmentation_moves_pixels_with_their_boxes(seed):
    images, boxes = _painted(seed, batch=12)
    augmented, moved = BoxAugmentation(hflip=True, scale=0.4, crop=0.4)(images, boxes, torch.Generator().manual_seed(9))
    checked = 0
    for image, target in zip(augmented, moved.to_targets()):
        for x1, y1, x2, y2 in target["boxes"].tolist():
            if x2 - x1 >= 5 and y2 - y1 >= 5:  # the interior, 2 px from the edges that bilinear blends
                inner = image[:, round(y1) + 2 : int(y2) - 2, round(x1) + 2 : int(x2) - 2]
                assert inner.numel() == 0 or inner.min() > 200
                checked += 1
    assert checked >= 10


def test_box_augmentation_colour_leaves_boxes_unchanged():
    images, boxes = _painted(4)
    augmented, after = BoxAugmentation(brightness=0.4, contrast=0.4, saturation=0.4)(
        images, boxes, torch.Generator().manual_seed(0)
    )
    assert not torch.equal(augmented, images.float())
    assert after is boxes


def test_box_augmentation_is_deterministic_and_resumes():
    images, boxes = _painted(5)
    augmentation = parse_box_augmentation("auto")
    generator = torch.Generator().manual_seed(11)
    first = augmentation(images, boxes, generator)
    state = generator.get_state()  # a checkpoint between two batches
    second = augmentation(images, boxes, generator)
    generator.set_state(state)
    resumed = augmentation(images, boxes, generator)
    again = augmentation(images, boxes, torch.Generator().manual_seed(11))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1].boxes, again[1].boxes)
    assert torch.equal(second[0], resumed[0]) and torch.equal(second[1].boxes, resumed[1].boxes)
    assert not torch.equal(first[0], second[0])


def test_box_augmentation_draws_the_same_numbers_whatever_the_boxes():
    # Resume replays the stream only if how many numbers a batch draws depends on the settings alone.
    augmentation = parse_box_augmentation("auto")
    states = []
    for seed in (0, 1):
        generator = torch.Generator().manual_seed(0)
        augmentation(*_painted(seed), generator)
        states.append(generator.get_state())
    assert torch.equal(states[0], states[1])


def test_parse_box_augmentation_reads_specs_and_rejects_bad_ones():
    parsed = parse_box_augmentation("hflip,scale=0.25,crop=0.3,min_visible=0.5")
    assert parsed == BoxAugmentation(hflip=True, scale=0.25, crop=0.3, min_visible=0.5)
    assert parsed.describe() == "hflip, scale=0.25, crop=0.3, min_visible=0.5"
    assert BoxAugmentation(**parsed.to_dict()) == parsed
    assert parse_box_augmentation("none") is None and BoxAugmentation().describe() == "none"
    with pytest.raises(CnnkitError, match="cannot read box augmentation 'rotate=5'"):
        parse_box_augmentation("hflip,rotate=5")
    with pytest.raises(CnnkitError, match=r"scale=1\.5 must be below 1"):
        parse_box_augmentation("scale=1.5")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_box_augmentation_on_the_gpu_matches_the_cpu():
    images, boxes = _painted(6)
    augmentation = parse_box_augmentation("auto")
    cpu = augmentation(images, boxes, torch.Generator().manual_seed(2))
    gpu = augmentation(images.cuda(), boxes.to("cuda"), torch.Generator().manual_seed(2))  # the CPU generator's stream
    assert (gpu[0].cpu() - cpu[0]).abs().max() <= 0.5
    both = gpu[1].mask.cpu() & cpu[1].mask  # a box at the drop rule's edge may fall either way by rounding
    assert (gpu[1].mask.cpu() != cpu[1].mask).sum() <= 1 and both.sum() >= 10
    assert (gpu[1].boxes.cpu()[both] - cpu[1].boxes[both]).abs().max() <= 1e-3

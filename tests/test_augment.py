import pytest
import torch

from cnnkit.data.augment import (
    Augmentation,
    affine,
    colour_jitter,
    random_affine,
    random_crop,
    random_erasing,
    random_hflip,
)


@pytest.fixture
def batch() -> torch.Tensor:
    return torch.randint(0, 256, (16, 3, 12, 12), generator=torch.Generator().manual_seed(1)).float()


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_crop_is_a_shifted_window_of_the_padded_image(batch):
    padding = 2
    out = random_crop(batch, padding, generator())
    padded = torch.nn.functional.pad(batch, (padding,) * 4, mode="replicate")
    shifts = set()
    for image, source in zip(out, padded):
        matches = [
            (dy, dx) for dy in range(5) for dx in range(5) if torch.equal(source[:, dy : dy + 12, dx : dx + 12], image)
        ]
        assert matches, "every output must be a window of its padded input"
        shifts.add(matches[0])
    assert len(shifts) > 3  # offsets differ per image


def test_random_hflip_flips_about_half(batch):
    out = random_hflip(batch, generator())
    flipped = [torch.equal(o, b.flip(2)) for o, b in zip(out, batch)]
    kept = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < len(batch)


def test_random_affine_with_no_range_is_identity(batch):
    torch.testing.assert_close(random_affine(batch, 0.0, 0.0, 0.0, generator()), batch, atol=1e-3, rtol=0)


@pytest.mark.parametrize("degrees", [90.0, 30.0, -45.0])
def test_affine_rotation_matches_torchvision(degrees):
    from torchvision.transforms.v2 import functional as TF

    image = torch.zeros(1, 1, 21, 21)
    image[0, 0, 10, 3:18] = 255.0  # a horizontal bar through the centre
    image[0, 0, 4:10, 14] = 255.0  # and a tick, so the direction of rotation matters
    ours = affine(image, torch.tensor([degrees]), torch.ones(1), torch.zeros(1, 2))
    reference = TF.rotate(image, degrees, interpolation=TF.InterpolationMode.BILINEAR)
    inner = (slice(None), slice(None), slice(3, 18), slice(3, 18))  # away from border handling differences
    assert (ours[inner] - reference[inner]).abs().mean() < 4.0  # of 255
    assert (ours[inner] - image[inner]).abs().mean() > 10.0


def test_affine_shift_moves_content_by_whole_pixels():
    image = torch.zeros(1, 1, 10, 10)
    image[0, 0, 5, 5] = 255.0
    shifted = affine(image, torch.zeros(1), torch.ones(1), torch.tensor([[0.2, -0.1]]))  # +2 px right, 1 px up
    assert shifted[0, 0, 4, 7].item() == pytest.approx(255.0, abs=1e-3)


def test_colour_jitter_stays_in_range_and_scales_brightness(batch):
    out = colour_jitter(batch, 0.3, 0.0, 0.0, generator())
    assert out.min() >= 0 and out.max() <= 255
    unclipped = (batch * 1.3 <= 255).all(dim=(1, 2, 3)) & (batch.flatten(1).sum(1) > 0)
    ratios = out[unclipped].flatten(1).sum(1) / batch[unclipped].flatten(1).sum(1)
    assert ((ratios >= 0.7 - 1e-4) & (ratios <= 1.3 + 1e-4)).all()


def test_random_erasing_blanks_one_rectangle_per_chosen_image(batch):
    assert torch.equal(random_erasing(batch, 0.0, generator()), batch)
    out = random_erasing(batch, 1.0, generator())
    changed = (out != batch).any(dim=1)  # (B, H, W)
    for mask in changed:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) and len(cols)
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].float().mean() > 0.5


def test_augmentation_is_repeatable_for_a_seed(batch):
    augment = Augmentation(crop_padding=2, hflip=True, rotate=10, scale=0.1, translate=0.1, brightness=0.2,
                           contrast=0.2, saturation=0.2, erasing=0.5)  # fmt: skip
    first, second = augment(batch, generator(5)), augment(batch, generator(5))
    assert torch.equal(first, second) and not torch.equal(first, augment(batch, generator(6)))
    assert first.shape == batch.shape and first.dtype == torch.float32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_batch_gets_the_same_augmentation_as_on_the_cpu():
    from cnnkit.data.augment import Augmentation

    images = torch.randint(0, 256, (16, 3, 24, 24), dtype=torch.uint8)
    augment = Augmentation(crop_padding=3, hflip=True, rotate=15, scale=0.1, translate=0.1, brightness=0.2,
                           contrast=0.2, saturation=0.2, erasing=0.5)  # fmt: skip
    on_cpu = augment(images, torch.Generator().manual_seed(0))
    on_gpu = augment(images.cuda(), torch.Generator().manual_seed(0)).cpu()
    differs = (on_cpu - on_gpu).abs() > 0.5  # same draws; float rounding may move an erased edge by a pixel
    assert differs.float().mean() < 1e-3


def test_crop_with_flip_in_one_gather_equals_a_crop_then_a_flip():
    from cnnkit.data.augment import random_crop, random_hflip

    images = torch.randint(0, 256, (32, 3, 12, 12), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    expected = random_hflip(random_crop(images, 2, generator), generator)
    together = random_crop(images, 2, torch.Generator().manual_seed(3), hflip=True)
    assert torch.equal(together, expected)

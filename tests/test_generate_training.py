"""The class-conditional GAN (``models/gan.py``) and its training (``cnnkit train --task generate``)."""

from __future__ import annotations

import pytest
import torch

from cnnkit.errors import CnnkitError
from cnnkit.models import create_model, list_models, model_entry
from cnnkit.models.gan import ConditionalGAN, from_uint8, latent_noise, to_uint8


@pytest.mark.parametrize(("channels", "img_size"), [(1, 8), (3, 32)])
def test_dcgan_shapes_follow_classes_channels_and_size(channels, img_size):
    gan = create_model("dcgan", num_classes=3, in_channels=channels, img_size=img_size, width=8).eval()
    noise, labels = latent_noise(4, gan.latent_dim, seed=0), torch.tensor([0, 1, 2, 0])
    images = gan(noise, labels)
    assert isinstance(gan, ConditionalGAN) and images.shape == (4, channels, img_size, img_size)
    assert images.dtype == torch.float32 and images.abs().max() <= 1.0
    assert gan.discriminator(images, labels).shape == (4,) and gan.generator(noise, labels).shape == images.shape
    assert (gan.num_classes, gan.channels, gan.img_size) == (3, channels, img_size)


def test_dcgan_is_registered_for_the_generate_task_only():
    assert list_models(task="generate") == ["dcgan"] and "dcgan" not in list_models()
    assert model_entry("dcgan").task == "generate"


def test_latent_noise_same_seed_same_images_and_other_seed_others():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8).eval()
    first, again, other = (latent_noise(3, gan.latent_dim, seed) for seed in (7, 7, 8))
    assert first.dtype == torch.float32 and torch.equal(first, again) and not torch.equal(first, other)
    labels = torch.tensor([0, 1, 1])
    with torch.no_grad():
        assert torch.equal(gan(first, labels), gan(again, labels))


def test_dcgan_forward_runs_the_ema_generator_which_stays_in_eval():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8).train()
    assert gan.generator.training and gan.discriminator.training and not gan.generator_ema.training
    with torch.no_grad():
        gan.generator_ema.to_image.bias.fill_(1e4)  # the EMA copy alone now saturates to +1
    assert torch.equal(gan(latent_noise(2, gan.latent_dim, 0), torch.tensor([0, 1])), torch.ones(2, 1, 8, 8))
    assert not any(parameter.requires_grad for parameter in gan.generator_ema.parameters())


def test_dcgan_update_ema_moves_towards_the_generator():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8)
    live, average = gan.generator.to_image.bias, gan.generator_ema.to_image.bias
    with torch.no_grad():
        live.fill_(1.0)
        average.fill_(0.0)
    gan.update_ema(decay=0.75)
    assert torch.allclose(average, torch.full_like(average, 0.25))


def test_uint8_round_trip_and_matches_the_run_preprocessing():
    from cnnkit.modelinfo import Preprocessing

    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_uint8(from_uint8(pixels)), pixels)
    assert torch.allclose(from_uint8(pixels), Preprocessing(16, 1, (0.5,), (0.5,)).normalize(pixels), atol=1e-6)
    assert torch.equal(to_uint8(torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0])), torch.tensor([0, 0, 128, 255, 255]))


@pytest.mark.parametrize("img_size", [28, 4, 256])
def test_dcgan_refuses_a_size_that_is_not_a_power_of_two_from_8_to_128(img_size):
    with pytest.raises(CnnkitError, match="power of two"):
        create_model("dcgan", num_classes=2, in_channels=1, img_size=img_size)


def test_dcgan_ema_statistics_are_measured_for_the_averaged_weights():
    gan = create_model("dcgan", num_classes=2, in_channels=1, img_size=8, width=8)
    noise, labels = latent_noise(32, gan.latent_dim, seed=3), torch.arange(32) % 2
    gan.recompute_ema_statistics(noise, labels, batch_size=32)
    norm = gan.generator_ema.first_norm.norm
    projected = gan.generator_ema.project(noise).unflatten(1, (-1, 4, 4))  # (32, C, 4, 4): what the norm saw
    assert torch.allclose(norm.running_mean, projected.mean(dim=(0, 2, 3)), atol=1e-5)
    assert not gan.generator_ema.training and norm.momentum == 0.1

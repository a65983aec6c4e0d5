"""Noise under keyword clips: pink as well as white, and batch norms measured on the noisy clips a run trained on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnkit.data.audio_augment import (
    AudioAugmentation,
    AudioBatchAugmentation,
    parse_audio_augmentation,
    pink,
    random_noise,
)
from cnnkit.data.background import pink_noise
from cnnkit.data.series import SeriesSet
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import AudioPreprocessing
from cnnkit.training.loop import recompute_batch_norm

pytestmark = pytest.mark.usefixtures("one_thread")


def _low_share(noise: torch.Tensor) -> torch.Tensor:
    """Share of each row's (B, T) power in the lowest eighth of the spectrum: 1/8 for white noise."""
    power = torch.fft.rfft(noise).abs().square()
    return power[:, : power.shape[1] // 8].sum(dim=1) / power.sum(dim=1)


def test_pink_shapes_white_noise_as_the_background_class_does():
    white = torch.randn(2, 4000, generator=torch.Generator().manual_seed(0))
    reference = pink_noise(4000, 1.0, np.random.default_rng(0))  # the background class's own pink clips
    shaped = pink(white)
    assert (_low_share(white) < 0.2).all() and (_low_share(shaped) > 0.6).all()
    assert abs(_low_share(shaped).mean().item() - _low_share(torch.from_numpy(reference)[None]).item()) < 0.1


def test_random_noise_mixes_pink_under_its_share_of_the_clips():
    x = torch.sin(torch.linspace(0, 2000, 4000)).repeat(200, 1, 1)  # a tone high in the spectrum
    added = (random_noise(x, 1.0, 0.0, 0.0, torch.Generator().manual_seed(0), pink_share=0.5) - x)[:, 0]
    pink_clips = (_low_share(added) > 0.4).float().mean().item()
    assert 0.35 < pink_clips < 0.65  # about half pink, the rest white (share near 1/8)
    white_only = random_noise(x, 1.0, 0.0, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(white_only, random_noise(x, 1.0, 0.0, 0.0, torch.Generator().manual_seed(0), pink_share=0.0))
    assert (_low_share((white_only - x)[:, 0]) < 0.2).all()  # no pink share: white, as runs before it drew


def test_audio_augmentation_pink_is_parsed_checked_and_described():
    augmentation = parse_audio_augmentation("noise=0.8,pink=0.5")
    assert augmentation.pink == 0.5 and "pink=0.5" in augmentation.describe()
    assert AudioAugmentation(**augmentation.to_dict()) == augmentation
    with pytest.raises(CnnkitError, match=r"pink=1\.5 is a probability"):
        parse_audio_augmentation("noise=0.8,pink=1.5")


def test_recompute_batch_norm_measures_an_audio_run_on_its_augmented_clips():
    clips = torch.sin(torch.linspace(0, 300, 400)).repeat(64, 1, 1) * 0.1  # (64, 1, 400), variance 0.005
    data = SeriesSet(clips, torch.full((64,), 400), torch.zeros(64, dtype=torch.long), ["tone"], [""] * 64)
    rule = AudioPreprocessing(8000, 400, "end", "centre")
    noisy = AudioBatchAugmentation(AudioAugmentation(noise=1.0, snr_min=0.0, snr_max=0.0))  # noise power = signal's
    norm = nn.BatchNorm1d(1)
    recompute_batch_norm(norm, data, rule, torch.device("cpu"), 16)
    clean = norm.running_var.item()
    recompute_batch_norm(norm, data, rule, torch.device("cpu"), 16, augment=noisy)
    assert clean == pytest.approx(0.005, rel=0.05) and norm.running_var.item() == pytest.approx(2 * clean, rel=0.1)

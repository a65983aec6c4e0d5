"""Batch augmentation of waveforms: each operation's effect measured, SpecAugment masks, determinism, parsing."""

from __future__ import annotations

import math

import pytest
import torch

from cnnkit.data.audio_augment import (
    AudioAugmentation,
    gain,
    mask_bands,
    mix_noise,
    noise_excerpts,
    parse_audio_augmentation,
    random_gain,
    random_masks,
    random_noise,
    random_shift,
    resample,
    shift,
)
from cnnkit.errors import CnnkitError

pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: two threads only spin on a loaded machine


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _db(power: torch.Tensor) -> torch.Tensor:
    return 10 * torch.log10(power)


def test_shift_moves_each_clip_by_its_samples_and_fills_silence():
    x = torch.zeros(3, 1, 100)
    x[:, :, 50] = 1.0  # an impulse in the middle of each clip
    moved = shift(x, torch.tensor([7, -20, 0]))
    assert moved[:, 0].argmax(dim=1).tolist() == [57, 30, 50] and torch.equal(moved.sum(dim=2), x.sum(dim=2))
    ramp = torch.arange(1.0, 11.0).view(1, 1, 10)
    assert shift(ramp, torch.tensor([3]))[0, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5, 6, 7]


def test_random_shift_moves_energy_within_the_limit():
    x = torch.zeros(64, 1, 1000)
    x[:, :, 500] = 1.0
    positions = random_shift(x, 0.1, _seeded())[:, 0].argmax(dim=1) - 500
    assert positions.abs().max() <= 100 and positions.unique().numel() > 20  # each clip its own shift


def test_gain_scales_the_rms_by_the_drawn_factor():
    x = torch.randn(4, 2, 800)
    decibels = torch.tensor([-6.0, 0.0, 3.0, 12.0])
    rms_ratio = gain(x, decibels).square().mean(dim=(1, 2)).sqrt() / x.square().mean(dim=(1, 2)).sqrt()
    torch.testing.assert_close(rms_ratio, 10 ** (decibels / 20))
    ratio = random_gain(x, 6.0, _seeded()) / x  # one factor per clip, within +-6 dB
    per_clip = ratio.flatten(1)
    torch.testing.assert_close(per_clip, per_clip[:, :1].expand_as(per_clip))
    assert (20 * per_clip[:, 0].log10()).abs().max() <= 6.0 + 1e-4


def test_noise_mixing_hits_the_target_snr_within_half_a_decibel():
    x = torch.sin(torch.linspace(0, 400, 16000)).repeat(6, 1, 1) * torch.linspace(0.1, 1, 6).view(6, 1, 1)
    noise = torch.randn(6, 1, 16000) * 3
    snr = torch.tensor([-5.0, 0.0, 5.0, 10.0, 20.0, 30.0])
    added = mix_noise(x, noise, snr) - x
    measured = _db(x.square().mean(dim=(1, 2)) / added.square().mean(dim=(1, 2)))
    assert (measured - snr).abs().max() < 0.5
    bank = torch.randn(3, 5000) * torch.tensor([[0.1], [1.0], [10.0]])  # recordings of any level and length
    mixed = random_noise(x, 1.0, 10.0, 10.0, _seeded(), bank)
    measured = _db(x.square().mean(dim=(1, 2)) / (mixed - x).square().mean(dim=(1, 2)))
    assert (measured - 10.0).abs().max() < 0.5


def test_noise_mixing_leaves_silence_and_unchosen_clips_alone():
    silent = torch.zeros(2, 1, 400)
    assert torch.equal(mix_noise(silent, torch.randn(2, 1, 400), torch.tensor([5.0, 5.0])), silent)
    x = torch.randn(200, 1, 400)
    mixed = random_noise(x, 0.25, 5.0, 20.0, _seeded())
    changed = (mixed != x).flatten(1).any(dim=1).float().mean()
    assert 0.1 < changed < 0.4  # about a quarter of the clips


def test_noise_excerpts_are_slices_of_the_bank_repeated_when_short():
    bank = torch.arange(30.0).view(3, 10)
    excerpts = noise_excerpts(bank, 16, 4, _seeded())
    starts = excerpts[:, 0]
    assert torch.equal(excerpts - starts[:, None], torch.arange(4.0).expand(16, 4))  # contiguous within a recording
    looped = noise_excerpts(torch.arange(3.0).view(1, 3), 4, 7, _seeded())
    assert all(torch.equal(row, torch.arange(row[0], row[0] + 7) % 3) for row in looped)
    with pytest.raises(CnnkitError, match="noise bank of shape"):
        noise_excerpts(torch.zeros(5), 2, 4, _seeded())


def _peak_frequency(x: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(x * torch.hann_window(len(x)))
    return spectrum.abs().argmax().item() * sample_rate / len(x)


@pytest.mark.parametrize("factor", [0.9, 1.0, 1.1])
def test_resample_moves_pitch_by_the_factor_and_keeps_the_length(factor):
    sample_rate, tone = 16000, 1000.0
    time = torch.arange(sample_rate) / sample_rate
    x = torch.sin(2 * math.pi * tone * time).view(1, 1, -1)
    played = resample(x, torch.tensor([factor]))
    assert played.shape == x.shape
    middle = played[0, 0, 4000:12000]  # the centre keeps its samples at every speed
    assert abs(_peak_frequency(middle, sample_rate) - factor * tone) <= 2  # 2 Hz bins of an 8000-sample window
    if factor > 1:
        assert played[0, 0, :500].abs().max() == 0  # a faster clip ends early, in silence at both ends


def test_mask_bands_zero_exactly_the_given_spans():
    x = torch.ones(2, 1, 8, 10)
    frequency = mask_bands(x, torch.tensor([[1, 5], [0, 0]]), torch.tensor([[2, 1], [0, 3]]), dim=2)
    assert (frequency[0, 0, :, 0] == 0).nonzero().flatten().tolist() == [1, 2, 5]
    assert (frequency[1, 0, :, 0] == 0).nonzero().flatten().tolist() == [0, 1, 2]
    assert torch.equal(frequency[..., :1].expand_as(frequency), frequency)  # whole bands, every frame
    time = mask_bands(x, torch.tensor([[4], [9]]), torch.tensor([[3], [5]]), dim=3)
    assert (time[0, 0, 0] == 0).nonzero().flatten().tolist() == [4, 5, 6] and time[1, 0, 0].tolist()[-1] == 0


def test_random_masks_cover_whole_bands_no_wider_than_allowed():
    x = torch.ones(32, 1, 40, 101)
    masked = random_masks(x, 1, 7, dim=2, generator=_seeded())
    zero_bands = (masked == 0).all(dim=3)[:, 0]  # (B, M): bands zero in every frame
    assert torch.equal((masked == 0).any(dim=3)[:, 0], zero_bands)
    widths = zero_bands.sum(dim=1)
    assert widths.max() <= 7 and widths.unique().numel() > 3
    masked = AudioAugmentation(time_masks=2, time_width=20).mask(x, _seeded())
    zero_frames = (masked == 0).all(dim=2)[:, 0].sum(dim=1)  # (B,) frames masked in every band
    assert torch.equal(zero_frames, (masked == 0).any(dim=2)[:, 0].sum(dim=1)) and zero_frames.max() <= 40


def test_audio_augmentation_is_repeatable_with_a_seeded_generator():
    augmentation = parse_audio_augmentation("shift=0.1,gain=6,noise=0.8,speed=0.1,time_masks=2,freq_masks=2")
    waves, bank = torch.randn(8, 1, 4000), torch.randn(2, 6000)
    first = augmentation(waves, _seeded(3), bank)
    assert torch.equal(first, augmentation(waves, _seeded(3), bank))
    assert not torch.equal(first, augmentation(waves, _seeded(4), bank))
    assert first.shape == waves.shape and first.dtype == torch.float32
    spectrograms = torch.randn(8, 1, 40, 26)
    assert torch.equal(augmentation.mask(spectrograms, _seeded(3)), augmentation.mask(spectrograms, _seeded(3)))


def test_attached_masks_act_in_training_mode_only():
    from cnnkit.models.frontend import LogMel

    frontend = LogMel()
    augmentation = AudioAugmentation(freq_masks=2, freq_width=10)
    handle = augmentation.attach(frontend, _seeded())
    waves = torch.randn(16, 1, 4000)
    masked_bands = (frontend(waves) == 0).all(dim=3).sum()
    assert masked_bands > 0 and not (frontend.eval()(waves) == 0).all(dim=3).any()
    handle.remove()
    assert not (frontend.train()(waves) == 0).all(dim=3).any()
    assert AudioAugmentation(gain=3).attach(frontend, _seeded()) is None  # nothing to mask, no hook


def test_parse_audio_augmentation_round_trips_and_describes():
    augmentation = parse_audio_augmentation("shift=0.1,noise=0.8,snr_min=0,time_masks=2")
    assert augmentation.describe() == "shift=0.1, noise=0.8 at 0-20 dB, time_masks=2x20"
    assert AudioAugmentation(**augmentation.to_dict()) == augmentation
    assert parse_audio_augmentation("none") is None and parse_audio_augmentation("auto").noise == 0.8
    assert AudioAugmentation().describe() == "none"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("pitch=2", "cannot read audio augmentation 'pitch=2'"),
        ("time_masks=two", "cannot read audio augmentation 'time_masks=two'"),
        ("noise=1.5", "noise=1.5 is a probability"),
        ("gain=-3", "gain=-3.0 must be >= 0"),
        ("speed=1", "speed=1.0 must be below 1"),
        ("snr_min=30", "snr_min=30.0 is above snr_max=20.0"),
        ("shift=nan", "shift=nan is not a number"),
    ],
)
def test_parse_audio_augmentation_refuses_bad_settings_in_one_line(spec, message):
    with pytest.raises(CnnkitError, match=message) as error:
        parse_audio_augmentation(spec)
    assert "\n" not in str(error.value)

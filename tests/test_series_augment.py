"""Series batch augmentation: window slicing and scaling checked against numpy, reproducible and padding-safe."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import cnnkit
from cnnkit.data.series_augment import (
    AUTO_SERIES_AUGMENTATION,
    SeriesAugmentation,
    parse_series_augmentation,
    scale,
    slice_windows,
)
from cnnkit.errors import CnnkitError


def test_slice_windows_matches_numpy_interpolation():
    x = torch.randn(3, 2, 50)
    starts = torch.tensor([0.0, 0.05, 0.2])
    sliced = slice_windows(x, starts, 0.8)
    steps = np.arange(50)
    for row, start in enumerate(starts.tolist()):
        positions = (start + 0.8 * np.linspace(0, 1, 50)) * 49
        for channel in range(2):
            expected = np.interp(positions, steps, x[row, channel].numpy())
            np.testing.assert_allclose(sliced[row, channel].numpy(), expected, atol=1e-4)


def test_slice_windows_of_the_whole_length_is_the_identity():
    x = torch.randn(2, 1, 17)
    torch.testing.assert_close(slice_windows(x, torch.zeros(2), 1.0), x)


def test_scale_multiplies_each_series_by_its_factor():
    x = torch.ones(2, 3, 4)
    scaled = scale(x, torch.tensor([0.5, 2.0]))
    assert scaled[0].eq(0.5).all() and scaled[1].eq(2.0).all()


def test_series_augmentation_repeats_with_the_seed_and_keeps_shape_and_padding():
    x = torch.randn(8, 2, 40)
    x[:, :, 30:] = 0  # padding after a length of 30
    augmentation = SeriesAugmentation(scale=0.2, jitter=0.1)
    first = augmentation(x, torch.Generator().manual_seed(1))
    again = augmentation(x, torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    assert first.shape == x.shape and first[:, :, 30:].eq(0).all() and not torch.equal(first, x)
    windowed = SeriesAugmentation(window=0.2)(x, torch.Generator().manual_seed(1))
    assert windowed.shape == x.shape and not torch.equal(windowed, x)


def test_series_augmentation_shards_take_their_own_draws_of_the_global_batch():
    x = torch.randn(4, 1, 20)
    augmentation = SeriesAugmentation(window=0.3, scale=0.3)
    whole = augmentation(x, torch.Generator().manual_seed(2))
    rank1 = augmentation(x[1::2], torch.Generator().manual_seed(2), (1, 2))
    torch.testing.assert_close(rank1, whole[1::2])


def test_parse_series_augmentation_reads_auto_none_and_lists():
    assert parse_series_augmentation("none") is None
    assert parse_series_augmentation("auto") is None and AUTO_SERIES_AUGMENTATION == "none"  # until one is measured
    assert parse_series_augmentation("window=0.2,jitter=0.05") == SeriesAugmentation(window=0.2, jitter=0.05)
    assert SeriesAugmentation().describe() == "none"


@pytest.mark.parametrize(
    ("spec", "says"), [("hflip", "cannot read series augmentation 'hflip'"), ("window=1.5", "window=1.5: use")]
)
def test_parse_series_augmentation_refuses_bad_lists_in_one_line(spec, says):
    with pytest.raises(CnnkitError, match=says):
        parse_series_augmentation(spec)


@pytest.mark.slow
def test_train_series_with_augmentation_records_it_and_changes_the_steps(tmp_path):
    rng = np.random.default_rng(0)
    waves = [np.sin(np.linspace(0, 6, 32) * (1 + i % 2)) + 0.1 * rng.standard_normal(32) for i in range(24)]
    rows = [[1 + i % 2, *wave] for i, wave in enumerate(waves)]  # two classes: one and two cycles
    for split in ("TRAIN", "TEST"):
        (tmp_path / f"Tiny_{split}.tsv").write_text("".join("\t".join(f"{v:g}" for v in row) + "\n" for row in rows))
    common = dict(data=str(tmp_path), model="fcn", epochs=1, batch_size=8, out=str(tmp_path / "runs"), verbose=False)
    plain = cnnkit.train(name="plain", augment="none", **common)
    augmented = cnnkit.train(name="augmented", augment="window=0.2,scale=0.2", **common)
    recorded = json.loads((augmented.dir / "environment.json").read_text())["compute"]["augment"]
    assert recorded == {"window": 0.2, "scale": 0.2, "jitter": 0.0}
    weights = [load_file(run.dir / "last.safetensors") for run in (plain, augmented)]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0] if key.endswith("weight"))

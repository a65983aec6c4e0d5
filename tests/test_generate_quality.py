"""The quality figures of a generator: each checked against a closed form or a direct computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from cnnkit.data.decode import resize_image, to_array
from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import create_model
from cnnkit.tasks.generate.quality import (
    NAMES,
    Quality,
    fit_to_judge,
    frechet_distance,
    kernel_distance,
    measure_quality,
    precision_recall,
)


def gaussian_sample(mean: np.ndarray, covariance: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` points whose sample mean and (unbiased) covariance are exactly ``mean`` and ``covariance``."""
    points = np.random.default_rng(seed).normal(size=(count, len(mean)))
    points -= points.mean(0)
    whitened = points @ np.linalg.inv(np.linalg.cholesky(np.cov(points, rowvar=False))).T  # sample covariance I
    return whitened @ np.linalg.cholesky(covariance).T + mean


def test_frechet_distance_matches_closed_form_of_two_gaussians():
    rng = np.random.default_rng(0)
    mean_a, mean_b = rng.normal(size=6), rng.normal(size=6)
    root_a, root_b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    cov_a, cov_b = root_a @ root_a.T + np.eye(6), root_b @ root_b.T + 0.1 * np.eye(6)  # they do not commute
    closed_form = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a + cov_b - 2 * scipy.linalg.sqrtm(cov_a @ cov_b).real)
    real, fake = gaussian_sample(mean_a, cov_a, 300, seed=1), gaussian_sample(mean_b, cov_b, 200, seed=2)
    assert frechet_distance(real, fake) == pytest.approx(closed_form, rel=1e-9)
    variances_a, variances_b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])  # diagonal: |√a - √b|² per axis
    real = gaussian_sample(np.zeros(3), np.diag(variances_a), 50, seed=3)
    fake = gaussian_sample(np.ones(3), np.diag(variances_b), 80, seed=4)
    assert frechet_distance(real, fake) == pytest.approx(3 + 1 + 1, rel=1e-9)


def test_frechet_distance_zero_for_identical_sets_and_symmetric():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(40, 8)), rng.normal(size=(25, 8)) * 2 + 1
    assert frechet_distance(real, real) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(real, fake) == pytest.approx(frechet_distance(fake, real), rel=1e-12)
    as_float32 = torch.from_numpy(real).float()  # torch and float32 inputs are read as float64
    assert frechet_distance(as_float32, fake) == pytest.approx(frechet_distance(real, fake), rel=1e-5)


def test_frechet_distance_exact_with_fewer_images_than_dimensions():
    real = np.random.default_rng(0).normal(size=(7, 64))
    real[:, :10] = 0.0  # rank-deficient twice over: 7 points in 64 dimensions, 10 of them constant
    shift = np.linspace(-1, 1, 64)
    # Same covariance, so the covariance terms cancel exactly and only the mean gap is left.
    assert frechet_distance(real, real + shift) == pytest.approx(float(np.sum(shift**2)), rel=1e-9)
    assert math.isfinite(frechet_distance(real, np.random.default_rng(1).normal(size=(3, 64))))


def test_frechet_distance_refuses_too_few_or_mismatched_features():
    with pytest.raises(CnnkitError, match="N >= 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(CnnkitError, match="differ in width"):
        frechet_distance(np.zeros((5, 4)), np.zeros((5, 3)))
    with pytest.raises(CnnkitError, match="NaN"):
        frechet_distance(np.full((5, 4), np.nan), np.zeros((5, 4)))


def test_kernel_distance_equals_direct_unbiased_mmd_on_whole_sets():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.3
    kernel = lambda a, b: (a @ b.T / 5 + 1) ** 3  # noqa: E731
    off_diagonal = lambda k: (k.sum() - np.trace(k)) / (30 * 29)  # noqa: E731
    direct = off_diagonal(kernel(real, real)) + off_diagonal(kernel(fake, fake)) - 2 * kernel(real, fake).mean()
    mean, std = kernel_distance(real, fake, subsets=3, subset_size=30)  # every subset is the whole set
    assert mean == pytest.approx(direct, rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kernel_distance_near_zero_for_one_distribution_and_positive_when_shifted():
    rng = np.random.default_rng(0)
    real, same, shifted = rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)), rng.normal(size=(1000, 8)) + 0.5
    near, near_std = kernel_distance(real, same, subsets=20, subset_size=500)
    far, _ = kernel_distance(real, shifted, subsets=20, subset_size=500)
    # About -0.002 ± 0.005 against about 1.07: a margin no rounding or seed can cross.
    assert abs(near) < 0.05 and 0 < near_std < 0.05
    assert far > 0.5


def test_precision_recall_of_identical_and_of_far_apart_sets():
    points = np.random.default_rng(0).normal(size=(60, 4))
    assert precision_recall(points, points) == (1.0, 1.0)
    assert precision_recall(points, points + 1000.0) == (0.0, 0.0)


def test_precision_recall_of_fakes_covering_half_the_modes():
    rng = np.random.default_rng(0)
    modes = [rng.normal(scale=0.1, size=(25, 3)) + 100.0 * centre for centre in np.eye(4)[:, :3]]  # 4 far clusters
    real = np.concatenate(modes)
    fake = np.concatenate(modes[:2])  # copies of two modes: all inside the real manifold, half of it covered
    assert precision_recall(real, fake) == (1.0, 0.5)


def test_fit_to_judge_matches_the_data_packages_resize_rule():
    rng = np.random.default_rng(0)
    for source, target, channels in ((8, 16, 1), (32, 8, 3), (28, 32, 1)):
        images = rng.integers(0, 256, (3, channels, source, source), dtype=np.uint8)
        pictures = [Image.fromarray(img[0] if channels == 1 else img.transpose(1, 2, 0)) for img in images]
        expected = np.stack([to_array(resize_image(picture, target), channels) for picture in pictures])
        resized = fit_to_judge(torch.from_numpy(images), Preprocessing(target, channels, (0.5,), (0.5,)))
        assert resized.dtype == torch.uint8 and resized.shape == (3, channels, target, target)
        assert np.abs(resized.numpy().astype(int) - expected).max() <= 1  # equal up to rounding


def test_measure_quality_of_untrained_dcgan_is_finite_and_repeatable():
    torch.manual_seed(0)
    generator = create_model("dcgan", num_classes=3, in_channels=1, img_size=8, latent_dim=16, width=8)
    judge = create_model("convnet", num_classes=3, in_channels=1, img_size=16).eval()  # another side: resized
    preprocessing = Preprocessing(16, 1, (0.5,), (0.5,))
    real = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(3).repeat(8)
    measure = lambda: measure_quality(  # noqa: E731
        generator, judge, preprocessing, real, labels, per_class=5, seed=0, device="cpu", class_names=["a", "b", "c"]
    )
    quality = measure()
    assert isinstance(quality, Quality) and quality == measure()  # fixed noise: the same figures
    figures = quality.to_dict()
    assert set(figures) == {"frechet", "kid", "kid_std", "precision", "recall", "class_accuracy", "per_class_accuracy"}
    assert all(math.isfinite(figures[key]) for key in figures if key != "per_class_accuracy")
    assert set(quality.per_class_accuracy) == {"a", "b", "c"} and 0 <= quality.class_accuracy <= 1
    assert quality.frechet > 0 and 0 <= quality.precision <= 1 and 0 <= quality.recall <= 1
    assert NAMES["frechet"] in quality.describe() and "FID" not in quality.describe()
    tiny = measure_quality(generator, judge, preprocessing, real[:2], labels[:2], per_class=1, seed=0, device="cpu")
    assert math.isfinite(tiny.frechet) and 0 <= tiny.recall <= 1  # precision and recall with k cut to 1
    with pytest.raises(CnnkitError, match="per_class"):
        measure_quality(generator, judge, preprocessing, real, labels, per_class=0, seed=0, device="cpu")
    other_judge = create_model("convnet", num_classes=4, in_channels=1, img_size=8)
    with pytest.raises(CnnkitError, match="judge tells 4 classes"):
        measure_quality(generator, other_judge, preprocessing, real, labels, per_class=2, seed=0, device="cpu")
    with pytest.raises(CnnkitError, match="at least 2 real"):
        measure_quality(generator, judge, preprocessing, real[:1], labels[:1], per_class=2, seed=0, device="cpu")

"""How good a generator's images are, measured on the features of a cnnkit classifier (the judge).

Inception weights are not available offline, so the field's figures are computed on the
features of a classifier trained on the same real images (``Network.forward_embedding``, the
input of its classifier). They are named for what they are, never "FID" or "KID", because a
number on other features cannot be compared with published ones:

- the Fréchet distance between Gaussians fitted to the real and the generated features
  (Heusel et al. 2017): how far apart the two distributions are, lower is better;
- the kernel distance: the unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (x·y / D + 1)³, averaged over random subsets (Bińkowski et al. 2018); unbiased,
  so it is near 0 (and may be slightly negative) when the sets come from one distribution;
- precision and recall (Kynkäänniemi et al. 2019): each set's manifold is the union of balls
  around its points reaching each point's k-th nearest neighbour; precision is the share of
  generated images inside the real manifold (fidelity), recall the share of real images inside
  the generated one (coverage, which mode collapse lowers);
- class accuracy: the judge's top-1 on each generated image against the class it was asked for.

All distances are computed in float64 and in blocks of :data:`BLOCK_VALUES` values, so tens of
thousands of features need about a hundred megabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from cnnkit.errors import CnnkitError
from cnnkit.modelinfo import Preprocessing
from cnnkit.models.gan import ConditionalGAN, latent_noise, to_uint8
from cnnkit.tasks.classify.evaluate import predict_logits

NEIGHBOURS = 3  # k of precision and recall: Kynkäänniemi et al.'s choice
BLOCK_VALUES = 1 << 22  # distances or kernel values per block (32 MB as float64; a few such live at once)
NAMES = {
    "frechet": "Fréchet distance on the judge's features",
    "kid": "kernel distance (unbiased MMD², cubic kernel) on the judge's features",
    "precision": "precision (generated images inside the real manifold)",
    "recall": "recall (real images inside the generated manifold)",
    "class_accuracy": "judge's class accuracy on the generated images",
}  # what each figure is, for every output that shows one

Features = np.ndarray | torch.Tensor  # (N, D)


def _as_float64(features: Features, name: str, least: int) -> torch.Tensor:
    values = torch.as_tensor(features).detach().to("cpu", torch.float64)
    if values.ndim != 2 or len(values) < least:
        raise CnnkitError(f"{name} features must be (N, D) with N >= {least}; got shape {tuple(values.shape)}")
    if not torch.isfinite(values).all():
        raise CnnkitError(f"{name} features hold NaN or infinite values; the judge or the generator diverged")
    return values


def _root_factor(features: torch.Tensor) -> torch.Tensor:
    """A matrix F with F.T @ F equal to the covariance of ``features`` (N, D): (min(N, D), D)."""
    centred = (features - features.mean(0)) / math.sqrt(len(features) - 1)  # (N, D), F.T F = covariance
    if len(centred) <= centred.shape[1]:
        return centred
    return torch.linalg.qr(centred, mode="r").R  # (D, D): R.T R = centred.T centred, exact without forming it


def frechet_distance(real: Features, fake: Features) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features.

    ``|μ1 - μ2|² + tr(S1) + tr(S2) - 2 tr((S1 S2)^½)``. The square-root term is taken without
    a matrix square root: with any factors F1.T F1 = S1 and F2.T F2 = S2, the eigenvalues of
    S1 S2 are the squared singular values of F1 F2.T, so ``tr((S1 S2)^½)`` is that product's
    nuclear norm. Singular values are real and never negative, so this cannot return NaN or a
    complex part the way ``scipy.linalg.sqrtm(S1 @ S2)`` does on the non-symmetric, often
    singular product, and it needs no ``eps`` added to the diagonal: fewer images than feature
    dimensions (rank-deficient covariances) are exact. The factors are the centred features
    themselves when N <= D, else the R of their QR decomposition, so the SVD is at most
    min(N, D) square.

    Args:
        real: Features (N, D), N >= 2.
        fake: Features (M, D), M >= 2.

    Returns:
        The distance, >= 0; 0 for identical sets, symmetric in its arguments.

    Example:
        >>> round(frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [3.0]])), 6)
        1.0
    """
    real, fake = _as_float64(real, "real", 2), _as_float64(fake, "generated", 2)
    if real.shape[1] != fake.shape[1]:
        raise CnnkitError(f"real and generated features differ in width: {real.shape[1]} and {fake.shape[1]}")
    factor_real, factor_fake = _root_factor(real), _root_factor(fake)
    root_trace = torch.linalg.svdvals(factor_real @ factor_fake.T).sum()
    mean_gap = (real.mean(0) - fake.mean(0)).square().sum()
    distance = mean_gap + factor_real.square().sum() + factor_fake.square().sum() - 2 * root_trace
    return max(0.0, float(distance))  # identical sets give 0 up to rounding, which may be -1e-13


def _kernel_block_sums(rows: torch.Tensor, columns: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """For each subset s, each row i's kernel sum over the columns in s: (N_rows, S) = K (N_rows, N_cols) @ members."""
    width = rows.shape[1]
    block = max(1, BLOCK_VALUES // max(1, len(columns)))
    sums = [
        ((rows[start : start + block] @ columns.T) / width + 1).pow(3) @ members  # (b, N_cols) @ (N_cols, S)
        for start in range(0, len(rows), block)
    ]
    return torch.cat(sums)


def kernel_distance(
    real: Features, fake: Features, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """The kernel distance: unbiased MMD² with the cubic polynomial kernel, mean and std over random subsets.

    As Bińkowski et al. (2018) and torch-fidelity compute KID: each subset draws
    ``subset_size`` features of each set without replacement; its estimate is
    ``mean K(x, x') + mean K(y, y') - 2 mean K(x, y)``, the first two over distinct pairs; the
    result is the mean and the (population) standard deviation of the ``subsets`` estimates.
    Every subset is a column of 0/1 membership, so all of them come from one pass over the
    kernel matrices in blocks (each kernel value is computed once, not once per subset).

    Args:
        real: Features (N, D), N >= 2.
        fake: Features (M, D), M >= 2.
        subsets: How many random subsets. Defaults to 100.
        subset_size: Features of each set per subset, cut to the smaller set. Defaults to 1000.
        seed: Seed of the subset draws. Defaults to 0.

    Returns:
        (mean, std) of the estimates; near 0 when both sets come from one distribution.

    Example:
        >>> same = np.random.default_rng(0).normal(size=(400, 8))
        >>> abs(kernel_distance(same[:200], same[200:], subsets=10)[0]) < 0.05
        True
    """
    real, fake = _as_float64(real, "real", 2), _as_float64(fake, "generated", 2)
    if subsets < 1:
        raise CnnkitError(f"kernel distance needs at least 1 subset; got {subsets}")
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise CnnkitError(f"kernel distance needs subsets of at least 2 features; got subset_size {subset_size}")
    rng = np.random.default_rng(seed)

    def members(count: int) -> torch.Tensor:  # (count, subsets): 1 where a feature is in a subset
        chosen = np.zeros((count, subsets))
        for column in range(subsets):
            chosen[rng.choice(count, size, replace=False), column] = 1.0
        return torch.from_numpy(chosen)

    in_real, in_fake = members(len(real)), members(len(fake))
    diagonal_real = ((real.square().sum(1) / real.shape[1] + 1) ** 3) @ in_real  # (S,) k(x, x) over each subset
    diagonal_fake = ((fake.square().sum(1) / fake.shape[1] + 1) ** 3) @ in_fake
    real_real = (in_real * _kernel_block_sums(real, real, in_real)).sum(0) - diagonal_real  # (S,)
    fake_fake = (in_fake * _kernel_block_sums(fake, fake, in_fake)).sum(0) - diagonal_fake
    real_fake = (in_real * _kernel_block_sums(real, fake, in_fake)).sum(0)
    estimates = (real_real + fake_fake) / (size * (size - 1)) - 2 * real_fake / size**2
    return float(estimates.mean()), float(estimates.std(correction=0))


def _squared_distances(queries: torch.Tensor, points: torch.Tensor, start: int, block: int) -> torch.Tensor:
    rows = queries[start : start + block]
    squared = rows.square().sum(1, keepdim=True) + points.square().sum(1) - 2 * rows @ points.T  # (b, M)
    return squared.clamp_(min=0)  # rounding may leave -1e-12 where two points coincide


def _radii(points: torch.Tensor, k: int) -> torch.Tensor:
    """Squared distance (N,) from each of ``points`` (N, D) to its k-th nearest other point."""
    block = max(1, BLOCK_VALUES // len(points))
    radii = []
    for start in range(0, len(points), block):
        squared = _squared_distances(points, points, start, block)
        rows = torch.arange(len(squared))
        squared[rows, rows + start] = math.inf  # a point is not its own neighbour
        radii.append(squared.topk(k, dim=1, largest=False).values[:, -1])
    return torch.cat(radii)


def _inside(queries: torch.Tensor, points: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of ``queries`` within some point's radius: inside the manifold of ``points``."""
    block = max(1, BLOCK_VALUES // len(points))
    inside = sum(
        int((_squared_distances(queries, points, start, block) <= radii).any(1).sum())
        for start in range(0, len(queries), block)
    )
    return inside / len(queries)


def precision_recall(real: Features, fake: Features, k: int = NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall of generated features against real ones (Kynkäänniemi et al. 2019).

    Args:
        real: Features (N, D), N > k.
        fake: Features (M, D), M > k.
        k: The neighbour whose distance is each point's radius. Defaults to 3, the paper's choice.

    Returns:
        (precision, recall), each in [0, 1]: the share of generated features inside the real
        manifold, and the share of real features inside the generated one.

    Example:
        >>> points = np.random.default_rng(0).normal(size=(50, 4))
        >>> precision_recall(points, points)
        (1.0, 1.0)
    """
    if k < 1:
        raise CnnkitError(f"precision and recall need k >= 1; got {k}")
    real, fake = _as_float64(real, "real", k + 1), _as_float64(fake, "generated", k + 1)
    precision = _inside(fake, real, _radii(real, k))
    recall = _inside(real, fake, _radii(fake, k))
    return precision, recall


@dataclass(frozen=True)
class Quality:
    """The quality figures of one generator on the judge's features (see the module docstring).

    Attributes:
        frechet: Fréchet distance on the judge's features, lower is better.
        kid: Kernel distance (unbiased MMD², cubic kernel), mean over subsets, lower is better.
        kid_std: Its standard deviation over the subsets.
        precision: Share of generated images inside the real manifold, in [0, 1].
        recall: Share of real images inside the generated manifold, in [0, 1].
        class_accuracy: The judge's top-1 accuracy on the generated images against their intended class.
        per_class_accuracy: That accuracy for each class, by class name.
    """

    frechet: float
    kid: float
    kid_std: float
    precision: float
    recall: float
    class_accuracy: float
    per_class_accuracy: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        """One line naming each figure for what it is."""
        return (
            f"{NAMES['frechet']} {self.frechet:.4g}, kernel distance {self.kid:.4g} ± {self.kid_std:.2g}, "
            f"precision {self.precision:.3f}, recall {self.recall:.3f}, "
            f"{NAMES['class_accuracy']} {self.class_accuracy:.2%}"
        )


class JudgeOutputs(nn.Module):
    """The judge's features and logits side by side: (B, C, H, W) -> (B, D + K), from one forward pass."""

    def __init__(self, judge: nn.Module) -> None:
        super().__init__()
        self.judge = judge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.judge.forward_embedding(x)  # (B, D): what enters the classifier
        return torch.cat([features, self.judge.get_classifier()(features)], dim=1)  # (B, D + K)


def fit_to_judge(images: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """uint8 images (N, C, S, S) at the judge's input side, resized by the data package's rule for square images.

    For a square image, ``data.decode.resize_image``'s crop, squash and pad rules are one and
    the same PIL bilinear resize, antialiased when shrinking; ``F.interpolate`` with
    ``antialias=True`` is that filter (equal up to rounding), on whole batches.
    """
    if images.shape[1] != preprocessing.channels:
        raise CnnkitError(
            f"the judge reads {preprocessing.channels}-channel images but these have {images.shape[1]}; "
            "train the judge on the generator's data"
        )
    if images.shape[-1] == images.shape[-2] == preprocessing.img_size:
        return images
    side = (preprocessing.img_size, preprocessing.img_size)
    resized = functional.interpolate(images.float(), size=side, mode="bilinear", antialias=True, align_corners=False)
    return resized.round_().clamp_(0, 255).to(torch.uint8)


def judge_images(
    judge: nn.Module, preprocessing: Preprocessing, images: torch.Tensor, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's features (N, D) as float64 and its top-1 classes (N,) for uint8 images (N, C, H, W), on the CPU."""
    classes = judge.get_classifier().out_features
    with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):  # fp32 whatever training runs in
        outputs = predict_logits(JudgeOutputs(judge), fit_to_judge(images, preprocessing), preprocessing, device)
    return outputs[:, :-classes].double(), outputs[:, -classes:].argmax(1)


def generate_uint8(
    generator: ConditionalGAN, labels: torch.Tensor, seed: int, device: torch.device, batch_size: int = 256
) -> torch.Tensor:
    """uint8 images (N, C, H, W) on the CPU from the generator's EMA copy, one per label, noise from ``seed``.

    ``generator(...)`` runs the EMA copy, which stays in eval mode, so the training mode of the
    rest is left as it is.
    """
    noise = latent_noise(len(labels), generator.latent_dim, seed)  # (N, latent_dim)
    images = []
    with torch.no_grad(), torch.autocast(torch.device(device).type, enabled=False):
        for start in range(0, len(labels), batch_size):
            batch = slice(start, start + batch_size)
            images.append(to_uint8(generator(noise[batch].to(device), labels[batch].to(device))).cpu())
    return torch.cat(images)


def measure_quality(
    generator: ConditionalGAN,
    judge: nn.Module,
    judge_preprocessing: Preprocessing,
    real_images: torch.Tensor,
    real_labels: torch.Tensor,
    per_class: int,
    seed: int,
    device: torch.device | str,
    class_names: Sequence[str] | None = None,
    real_features: torch.Tensor | None = None,
) -> Quality:
    """The quality figures of ``per_class`` generated images of each class against ``real_images``.

    The generated images are quantised to uint8 first (:func:`~cnnkit.models.gan.to_uint8`),
    so the figures describe the PNG files ``cnnkit generate`` writes, and they come from fixed
    noise (``latent_noise(seed)``), so two epochs differ only by their weights.

    Args:
        generator: The conditional GAN; its EMA generator (``forward``) makes the images. Its
            train/eval mode is left as it is. Must be on ``device``.
        judge: A cnnkit classifier (``Network``) trained on the real images, on ``device``.
        judge_preprocessing: The judge's preprocessing; images of another side are resized to it.
        real_images: uint8 (N, C, H, W), e.g. the validation split; N >= 2 (precision and recall
            use k = 3 neighbours, fewer when a set has no more than 3 images).
        real_labels: Their classes (N,); only their count per class is reported, the figures
            compare the whole sets.
        per_class: Generated images per class (>= 1; at least 2 in all).
        seed: Seed of the noise and of the kernel distance's subsets.
        device: Where the generator and judge run.
        class_names: Names for ``per_class_accuracy``. Defaults to the class indices as strings.
        real_features: The judge's features of ``real_images`` (N, D), as :func:`judge_images`
            returns them, for a caller that measures against the same images each epoch.
            Defaults to computing them.

    Returns:
        A :class:`Quality`.
    """
    classes = generator.num_classes
    names = list(class_names) if class_names is not None else [str(index) for index in range(classes)]
    if len(names) != classes:
        raise CnnkitError(f"{len(names)} class names for a generator of {classes} classes")
    if per_class < 1:
        raise CnnkitError(f"per_class must be at least 1; got {per_class}")
    if judge.get_classifier().out_features != classes:
        raise CnnkitError(
            f"the judge tells {judge.get_classifier().out_features} classes apart but the generator makes {classes}; "
            "use a judge trained on the generator's data"
        )
    if len(real_images) != len(real_labels):
        raise CnnkitError(f"{len(real_images)} real images but {len(real_labels)} labels")
    if len(real_images) < 2 or classes * per_class < 2:
        raise CnnkitError(
            f"the quality figures compare at least 2 real and 2 generated images, not {len(real_images)} and "
            f"{classes * per_class}; give more data or a larger --val-split"
        )
    device = torch.device(device)
    labels = torch.arange(classes).repeat_interleave(per_class)  # (classes * per_class,)
    fake_features, predicted = judge_images(
        judge, judge_preprocessing, generate_uint8(generator, labels, seed, device), device
    )
    if real_features is None:
        real_features, _ = judge_images(judge, judge_preprocessing, real_images, device)
    correct = (predicted == labels).double()  # (M,)
    kid, kid_std = kernel_distance(real_features, fake_features, seed=seed)
    neighbours = min(NEIGHBOURS, len(real_features) - 1, len(fake_features) - 1)  # a tiny split cannot have 3
    precision, recall = precision_recall(real_features, fake_features, k=neighbours)
    return Quality(
        frechet=frechet_distance(real_features, fake_features),
        kid=kid,
        kid_std=kid_std,
        precision=precision,
        recall=recall,
        class_accuracy=float(correct.mean()),
        per_class_accuracy={name: float(correct[labels == index].mean()) for index, name in enumerate(names)},
    )

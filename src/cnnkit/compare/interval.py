"""Confidence intervals for a mean over a few seeds: Student's t, computed exactly, no SciPy.

A study that repeats a training over 2 to 10 seeds has too few values for the normal
approximation: with 3 seeds the 95% interval is 4.30 standard errors wide on each side,
not 1.96. The t distribution's CDF has a closed form for whole degrees of freedom
(Abramowitz and Stegun 26.7.3-4), so the quantile is found by bisection on it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import fmean, stdev

CONFIDENCE = 0.95


def _central_share(t: float, df: int) -> float:
    """P(-t < T < t) for Student's t with ``df`` degrees of freedom (A&S 26.7.3 for odd, 26.7.4 for even)."""
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2:
        term, total = math.cos(theta), 0.0  # cos θ, (2/3) cos³ θ, (2·4)/(3·5) cos⁵ θ, ... up to cos^(df-2) θ
        for j in range(1, (df - 1) // 2 + 1):
            total += term
            term *= cos2 * (2 * j) / (2 * j + 1)
        return 2 / math.pi * (theta + math.sin(theta) * total)
    term, total = 1.0, 0.0  # 1, (1/2) cos² θ, (1·3)/(2·4) cos⁴ θ, ... up to cos^(df-2) θ
    for j in range(1, df // 2 + 1):
        total += term
        term *= cos2 * (2 * j - 1) / (2 * j)
    return math.sin(theta) * total


def t_quantile(confidence: float, df: int) -> float:
    """The t with P(-t < T < t) = ``confidence``: the half-width of a two-sided interval in standard errors.

    Example:
        >>> round(t_quantile(0.95, 2), 4)
        4.3027
    """
    if df < 1 or not 0 < confidence < 1:
        raise ValueError(f"t_quantile needs df >= 1 and 0 < confidence < 1, not df={df}, confidence={confidence}")
    low, high = 0.0, 1.0
    while _central_share(high, df) < confidence:
        high *= 2
    for _ in range(100):  # halves the bracket to below a double's resolution
        middle = (low + high) / 2
        low, high = (middle, high) if _central_share(middle, df) < confidence else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over ``count`` values and its two-sided ``confidence`` interval [``low``, ``high``]."""

    mean: float
    low: float
    high: float
    count: int
    confidence: float = CONFIDENCE

    @property
    def spans_zero(self) -> bool:
        """Whether zero lies inside the interval: the sign of the mean is not established."""
        return self.low <= 0.0 <= self.high

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def mean_interval(values: list[float], confidence: float = CONFIDENCE) -> Interval:
    """The mean of ``values`` with its Student-t confidence interval (sample standard deviation, n - 1).

    For paired measurements (two arms trained on the same seeds) pass the per-seed
    differences: the seed-to-seed spread they share cancels.

    Raises:
        ValueError: fewer than two values (no spread, so no interval).

    Example:
        >>> mean_interval([0.70, 0.72, 0.74]).to_dict()["high"]  # 0.72 + 4.3027 * 0.02 / sqrt(3)
        0.76968...
    """
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least two values, got {len(values)}")
    centre = fmean(values)
    half = t_quantile(confidence, len(values) - 1) * stdev(values) / math.sqrt(len(values))
    return Interval(centre, centre - half, centre + half, len(values), confidence)

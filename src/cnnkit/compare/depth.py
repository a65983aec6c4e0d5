"""Widths that give ConvNets of 1 to 4 stages one parameter count, so ``cnnkit compare`` measures depth, not size.

Adding stages at fixed widths also adds parameters: on the 8x8 digits a one-stage net
of 16 channels has 2.7k, the default three-stage net 104k. A gap between them says
nothing about depth. Here every depth gets the default widths scaled by one factor,
chosen so its parameter count comes within :data:`TOLERANCE` of the default network's.
Where a depth cannot get there with at most :data:`MAX_WIDTH` channels per layer (a
one-stage net on 28x28 images averages its 14x14 map, so its parameters grow by only
about 21 per channel and 95k would need 4,500 channels), it is left out rather than
compared at another size.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from cnnkit.models.convnet import ConvNet

STAGES = (1, 2, 3, 4)  # ConvNet stages (one convolution each by default)
_DEFAULTS = inspect.signature(ConvNet).parameters
DEFAULT_WIDTHS: tuple[int, ...] = _DEFAULTS["widths"].default  # (16, 64, 128): the network the study trains
DEFAULT_STAGES: int = _DEFAULTS["stages"].default
TOLERANCE = 0.15  # each depth's parameters within ±15% of the target
# 1,024 channels of a 28x28 first stage take 3.2 MB per image; an evaluation batch of 256 then needs 0.8 GB.
MAX_WIDTH = 1024
_SEARCH_STEPS = 48  # halvings of the scale factor's log-range: far finer than one channel


@dataclass
class DepthPlan:
    """The networks of the depth study: for each depth its widths and parameters, or why it is left out.

    Attributes:
        target: Parameters of the default network, which every depth is matched to.
        widths: Stages -> channels of each stage, for the depths within tolerance.
        parameters: Stages -> parameters of that network.
        left_out: Stages -> the closest parameter count reachable with at most ``MAX_WIDTH`` channels.
    """

    target: int
    widths: dict[int, tuple[int, ...]] = field(default_factory=dict)
    parameters: dict[int, int] = field(default_factory=dict)
    left_out: dict[int, int] = field(default_factory=dict)


def scaled_widths(stages: int, scale: float, max_width: int = MAX_WIDTH) -> tuple[int, ...]:
    """The default widths times ``scale``, one per stage (stages past the defaults keep the last width)."""
    base = [DEFAULT_WIDTHS[min(index, len(DEFAULT_WIDTHS) - 1)] for index in range(stages)]
    return tuple(min(max_width, max(1, round(scale * width))) for width in base)


def closest_widths(
    count: Callable[[int, tuple[int, ...]], int], stages: int, target: int, max_width: int = MAX_WIDTH
) -> tuple[tuple[int, ...], int]:
    """Widths of a ``stages``-stage network whose parameter count, ``count(stages, widths)``, is nearest ``target``.

    Parameters grow with the scale factor, so bisection on its logarithm finds the
    crossing; the unscaled defaults are tried first, so the default depth keeps them exactly.
    """
    tried: dict[tuple[int, ...], int] = {}

    def parameters(scale: float) -> int:
        widths = scaled_widths(stages, scale, max_width)
        if widths not in tried:
            tried[widths] = count(stages, widths)
        return tried[widths]

    low, high = 1 / max(DEFAULT_WIDTHS), float(max_width)  # every width 1, every width capped
    parameters(1.0)
    for _ in range(_SEARCH_STEPS):
        middle = (low * high) ** 0.5
        if parameters(middle) < target:
            low = middle
        else:
            high = middle
    parameters(low), parameters(high)
    return min(tried.items(), key=lambda item: abs(item[1] - target))  # dicts keep order: ties go to the defaults


def plan_depths(
    count: Callable[[int, tuple[int, ...]], int],
    stages: tuple[int, ...] = STAGES,
    tolerance: float = TOLERANCE,
    max_width: int = MAX_WIDTH,
) -> DepthPlan:
    """Match every depth in ``stages`` to the default network's parameter count.

    Args:
        count: Parameters of the ConvNet with a given number of stages and widths, as the study builds it.
        stages: Depths to plan. Defaults to 1, 2, 3 and 4.
        tolerance: Largest relative difference from the target. Defaults to 0.15.
        max_width: Most channels of any layer. Defaults to 1024.

    Example:
        >>> plan = plan_depths(lambda stages, widths: sum(widths))  # a stand-in for a parameter count
        >>> plan.target, plan.widths[3]
        (208, (16, 64, 128))
    """
    plan = DepthPlan(count(DEFAULT_STAGES, DEFAULT_WIDTHS))
    for depth in stages:
        widths, parameters = closest_widths(count, depth, plan.target, max_width)
        if abs(parameters - plan.target) <= tolerance * plan.target:
            plan.widths[depth], plan.parameters[depth] = widths, parameters
        else:
            plan.left_out[depth] = parameters
    return plan

"""Timing a callable: seconds per call after warm-up, and images per second."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

WARMUP_CALLS = 20


def timed_calls(fn: Callable, batch, seconds: float, min_calls: int = 1) -> np.ndarray:
    """Seconds per call of ``fn(batch)``, calling it for about ``seconds`` (and at least ``min_calls`` times)."""
    durations = []
    deadline = time.perf_counter() + seconds
    while len(durations) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        fn(batch)
        durations.append(time.perf_counter() - start)
    return np.array(durations)


def throughput(fn: Callable, batch, seconds: float = 1.0) -> float:
    """Images per second of ``fn`` on a uint8 batch tensor (B, C, H, W), after warm-up calls."""
    timed_calls(fn, batch, 0.0, WARMUP_CALLS)
    return len(batch) / float(np.median(timed_calls(fn, batch, seconds, min_calls=20)))

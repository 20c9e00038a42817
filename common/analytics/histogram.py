"""Dwell times as a histogram: fixed bins (so any buckets add up) and quantiles estimated from them."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence

__all__ = ["DWELL_BOUNDS_S", "bin_index", "quantile"]

# Upper bounds (seconds, inclusive) of the bins: a glance, a pause, a wait, a visit, a stay.
DWELL_BOUNDS_S: tuple[float, ...] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, math.inf)


def bin_index(seconds: float) -> int:
    """The bin a dwell of ``seconds`` falls in.

    >>> bin_index(0.3), bin_index(2), bin_index(2.5), bin_index(10_000)
    (0, 1, 2, 11)
    """
    return bisect.bisect_left(DWELL_BOUNDS_S, max(0.0, seconds))


def quantile(counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of the dwells binned as ``counts``, interpolated linearly within its bin
    (as Prometheus' ``histogram_quantile``: the last, open bin answers its lower bound). None when empty.

    >>> quantile([0, 0, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0.5)  # ten dwells of 2-5 s
    3.5
    >>> quantile([0] * 11 + [4], 0.9)
    1800.0
    """
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            lower = DWELL_BOUNDS_S[index - 1] if index else 0.0
            upper = DWELL_BOUNDS_S[index]
            if math.isinf(upper):
                return float(lower)
            return float(lower + (upper - lower) * (rank - below) / count)
        below += count
    return float(DWELL_BOUNDS_S[-2])

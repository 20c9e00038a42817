"""Counts over time: the series rules keeps beside its running totals, and the read-only view of them.

Rules writes through :class:`SeriesWriter` on the connection of its count store (a line crossing's
series row commits in the same transaction as its running total, so the two always agree); the console
and reports read through :class:`SeriesReader`, which cannot write.
"""

from common.analytics.histogram import DWELL_BOUNDS_S
from common.analytics.reader import SeriesReader
from common.analytics.series import (
    BUCKETS,
    CROWD_LABEL,
    KIND_METRICS,
    METRICS,
    CorruptSeries,
    Metric,
    Point,
    SeriesKey,
)
from common.analytics.store import SeriesWriter

__all__ = [
    "BUCKETS",
    "CROWD_LABEL",
    "DWELL_BOUNDS_S",
    "KIND_METRICS",
    "METRICS",
    "CorruptSeries",
    "Metric",
    "Point",
    "SeriesKey",
    "SeriesReader",
    "SeriesWriter",
]

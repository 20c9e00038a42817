"""What a series is: its kinds and metrics, the buckets it is read in, and how its rows are keyed.

A series is one rule of one camera for one label (a crowd rule's is :data:`CROWD_LABEL`). Its rows hold
integer *fields*: sums (crossings in and out, occupancy's sum and samples, one per dwell bin) that add up
when buckets merge, and maxima (occupancy, crowd) that take the larger.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Literal, NamedTuple

__all__ = [
    "BUCKETS",
    "CROWD_LABEL",
    "FIELD_CROWD_MAX",
    "FIELD_DWELL_BIN",
    "FIELD_IN",
    "FIELD_OCCUPANCY_MAX",
    "FIELD_OCCUPANCY_SAMPLES",
    "FIELD_OCCUPANCY_SUM",
    "FIELD_OUT",
    "KIND_METRICS",
    "MAX_FIELDS",
    "METRICS",
    "CorruptSeries",
    "Kind",
    "Metric",
    "Point",
    "SeriesKey",
    "kind_of",
]

Kind = Literal["line", "zone", "dwell", "crowd"]
Metric = Literal[
    "in", "out", "occupancy_mean", "occupancy_max", "crowd_max", "dwell_count", "dwell_p50_s", "dwell_p90_s"
]
KIND_METRICS: dict[str, tuple[Metric, ...]] = {
    "line": ("in", "out"),
    "zone": ("occupancy_mean", "occupancy_max"),
    "dwell": ("dwell_count", "dwell_p50_s", "dwell_p90_s"),
    "crowd": ("crowd_max",),
}
METRICS: tuple[Metric, ...] = tuple(metric for metrics in KIND_METRICS.values() for metric in metrics)
BUCKETS: tuple[int, ...] = (900, 3600, 86400)  # 15 minutes, an hour, a day: UTC, aligned to the epoch
CROWD_LABEL = "all"  # a crowd rule counts every class it wants together

FIELD_IN = 0
FIELD_OUT = 1
FIELD_OCCUPANCY_SUM = 2  # the samples' sum: a mean over any bucket is sum / samples
FIELD_OCCUPANCY_SAMPLES = 3
FIELD_OCCUPANCY_MAX = 4
FIELD_CROWD_MAX = 5
FIELD_DWELL_BIN = 16  # + the bin's index in DWELL_BOUNDS_S
MAX_FIELDS = (FIELD_OCCUPANCY_MAX, FIELD_CROWD_MAX)  # merged by max, every other field by sum


class CorruptSeries(sqlite3.DatabaseError, ValueError):
    """``rules.sqlite`` holds what rules never writes (a heatmap that inflates past its grid, a grid of no
    configurable size, a value that is not a count): refused before it is allocated or answered. Its message
    names the table and the series, never a path. A ``sqlite3.DatabaseError``, as a damaged file is (a console
    maps both to 503); a ``ValueError`` too."""


class Point(NamedTuple):
    """One bucket of a series: its start (UTC epoch ns) and its value."""

    start_ns: int
    value: float


@dataclass(frozen=True)
class SeriesKey:
    """A series the store holds: which rule of which camera, for which label, and what can be asked of it."""

    camera: str
    rule: str
    kind: Kind
    label: str
    metrics: tuple[Metric, ...]


def kind_of(metric: str) -> Kind:
    """The kind of rule whose series answer ``metric``.

    >>> kind_of("occupancy_max")
    'zone'
    """
    for kind, metrics in KIND_METRICS.items():
        if metric in metrics:
            return kind  # type: ignore[return-value]
    raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")

"""The Analytics API's questions, checked before anything is read: which camera, rule, label and metrics,
over which range, in which buckets. Everything that arrives in a query string is bounded here (names by the
contracts' pattern, ranges by days and points), so that the handlers pass only checked values to SQLite (and
those as parameters); a question that does not check is a :class:`QueryError`, answered 400 with its message.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import time
from collections.abc import Mapping

from common.analytics.series import BUCKETS, KIND_METRICS, METRICS
from contracts.messages import LABEL_PATTERN, NAME_PATTERN

__all__ = [
    "ADDITIVE",
    "MAX_POINTS",
    "MAX_RANGE_DAYS",
    "QueryError",
    "Range",
    "bucket_of",
    "metrics_of",
    "name_of",
    "range_of",
    "time_of",
]

MAX_RANGE_DAYS = 400  # a year and a month: what the hour and day rows keep by default (analytics.retention_days)
MAX_POINTS = 5000  # buckets in one answer: 52 days of 15 minutes, 208 days of hours
DEFAULT_RANGE_S = 86400  # without from: the day before `to`
# Metrics whose labels add up (crossings, objects that left): "all labels" is their sum. A zone's mean
# or peak per label, a percentile, do not add up: those need a label (unless the rule has one).
ADDITIVE = frozenset({"in", "out", "dwell_count"})
_NAME = re.compile(NAME_PATTERN)
_LABEL = re.compile(LABEL_PATTERN)  # labels may hold spaces ("traffic light")
_EPOCH_S = re.compile(r"[0-9]{1,10}(\.[0-9]{1,9})?")
_MAX_EPOCH_S = 7_258_118_400  # 2200-01-01: nanoseconds stay within SQLite's 64 bits


class QueryError(ValueError):
    """A question the API refuses: its message says which parameter and what it takes."""


@dataclasses.dataclass(frozen=True)
class Range:
    """Whole buckets from ``start_s`` (inclusive) to ``end_s`` (exclusive), in UTC epoch seconds."""

    start_s: int
    end_s: int
    bucket_s: int

    @property
    def starts(self) -> range:
        """Each bucket's start, in seconds."""
        return range(self.start_s, self.end_s, self.bucket_s)

    @property
    def start_ns(self) -> int:
        return self.start_s * 10**9

    @property
    def end_ns(self) -> int:
        return self.end_s * 10**9


def name_of(query: Mapping[str, str], key: str, *, required: bool = True) -> str | None:
    """A camera, rule or label as the contracts name them; absent (or empty) is None where not required.

    >>> name_of({"camera": "hall"}, "camera")
    'hall'
    >>> name_of({"camera": "../etc"}, "camera")
    Traceback (most recent call last):
    ...
    services.console.analytics_query.QueryError: camera: not a name ([A-Za-z0-9_][A-Za-z0-9_.-]{0,63}): '../etc'
    """
    value = query.get(key, "")
    if not value:
        if required:
            raise QueryError(f"{key}: required")
        return None
    if not _NAME.fullmatch(value):
        raise QueryError(f"{key}: not a name ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,63}}): {value[:64]!r}")
    return value


def label_of(query: Mapping[str, str]) -> str | None:
    """A class label as the contracts allow it (spaces too), or None for all labels.

    >>> label_of({"label": "traffic light"}), label_of({})
    ('traffic light', None)
    """
    value = query.get("label", "")
    if not value:
        return None
    if not _LABEL.fullmatch(value):
        raise QueryError(f"label: not a label ([A-Za-z0-9_][A-Za-z0-9_. -]{{0,63}}): {value[:64]!r}")
    return value


def time_of(text: str, key: str) -> float:
    """Seconds since 1970 from epoch seconds or ISO 8601 (a time without an offset is UTC).

    >>> time_of("1800000000", "from"), time_of("2027-01-15T08:00:00Z", "to")
    (1800000000.0, 1800000000.0)
    """
    problem = QueryError(f"{key}: not an ISO 8601 time or seconds since 1970 (up to 2200): {text[:40]!r}")
    if _EPOCH_S.fullmatch(text):
        seconds = float(text)
    else:
        if len(text) > 40:
            raise problem
        try:
            when = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise problem from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=dt.timezone.utc)
        seconds = when.timestamp()
    if not 0 <= seconds < _MAX_EPOCH_S:
        raise problem
    return seconds


def bucket_of(query: Mapping[str, str], default: int = 3600) -> int:
    """The bucket in seconds: 900 (15 minutes), 3600 (an hour) or 86400 (a UTC day)."""
    text = query.get("bucket", "") or str(default)
    if not text.isdigit() or int(text) not in BUCKETS:
        raise QueryError(f"bucket: one of {', '.join(map(str, BUCKETS))} (seconds), not {text[:20]!r}")
    return int(text)


def range_of(
    query: Mapping[str, str], bucket_s: int, now_s: float | None = None, *, max_points: int | None = MAX_POINTS
) -> Range:
    """``from`` and ``to`` widened to whole buckets (UTC epoch aligned, so a bucket is always the same
    bucket); ``to`` defaults to now, ``from`` to a day before ``to``. At most MAX_RANGE_DAYS days and
    ``max_points`` buckets (None: a histogram or a heatmap, one answer for the whole range).

    >>> r = range_of({"from": "2027-01-15T08:20:00Z", "to": "2027-01-15T10:05:00Z"}, 3600)
    >>> [dt.datetime.fromtimestamp(s, dt.timezone.utc).strftime("%H:%M") for s in r.starts]
    ['08:00', '09:00', '10:00']
    """
    end = time_of(query["to"], "to") if query.get("to") else time.time() if now_s is None else now_s
    start = time_of(query["from"], "from") if query.get("from") else end - DEFAULT_RANGE_S
    if start >= end:
        raise QueryError("from: must be before to")
    if end - start > MAX_RANGE_DAYS * 86400:
        raise QueryError(f"from, to: at most {MAX_RANGE_DAYS} days apart")
    start_s = math.floor(start / bucket_s) * bucket_s
    end_s = math.ceil(end / bucket_s) * bucket_s
    if max_points is not None and (end_s - start_s) // bucket_s > max_points:
        raise QueryError(
            f"from, to, bucket: {(end_s - start_s) // bucket_s} buckets; at most {max_points} in one answer "
            "(choose a larger bucket or a shorter range)"
        )
    return Range(start_s, end_s, bucket_s)


def metrics_of(query: Mapping[str, str], kind: str) -> tuple[str, ...]:
    """The metrics asked for (``metric=in,out``), each one a ``kind`` rule keeps; default all of them.

    >>> metrics_of({"metric": "in,out"}, "line")
    ('in', 'out')
    >>> metrics_of({}, "zone")
    ('occupancy_mean', 'occupancy_max')
    """
    kept = KIND_METRICS.get(kind, ())
    text = query.get("metric", "")
    if not text:
        return tuple(kept)
    asked = tuple(dict.fromkeys(text.split(",")))  # in order, each once
    for metric in asked:
        if metric not in METRICS:
            raise QueryError(f"metric: one of {', '.join(METRICS)} (comma-separated), not {metric[:40]!r}")
        if metric not in kept:
            raise QueryError(f"metric: a {kind} rule keeps {', '.join(kept)}, not {metric}")
    return asked

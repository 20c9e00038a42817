"""The reading side of the series: read-only (the console, reports), from the finest rows still kept.

A bucket is answered from minute rows while they are kept (``analytics.minute_days``), from hour rows
before that, and from day rows before those (``common.analytics.schema``); buckets are UTC, aligned to
the epoch, and only those holding data are returned. A 15-minute bucket needs minutes: older than
``minute_days`` it is not answered.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from urllib.parse import quote

import numpy as np
import numpy.typing as npt

from common.analytics.heatmap import MAX_BLOB, check_grid_size, decode_grid, regrid
from common.analytics.histogram import DWELL_BOUNDS_S, quantile
from common.analytics.schema import LEVELS, read_meta
from common.analytics.series import (
    FIELD_CROWD_MAX,
    FIELD_DWELL_BIN,
    FIELD_IN,
    FIELD_OCCUPANCY_MAX,
    FIELD_OCCUPANCY_SAMPLES,
    FIELD_OCCUPANCY_SUM,
    FIELD_OUT,
    KIND_METRICS,
    MAX_FIELDS,
    CorruptSeries,
    Point,
    SeriesKey,
    kind_of,
)

__all__ = ["MAX_BUCKETS", "CorruptSeries", "SeriesReader"]

log = logging.getLogger(__name__)

MAX_BUCKETS = 100_000  # points one answer may hold: a year of 15-minute buckets is 35,040
DEFAULT_GRID = (36, 64)  # rows, columns: a heatmap with no data yet
_DWELL_FIELDS = tuple(FIELD_DWELL_BIN + index for index in range(len(DWELL_BOUNDS_S)))
_FIELDS: dict[str, tuple[int, ...]] = {
    "in": (FIELD_IN,),
    "out": (FIELD_OUT,),
    "occupancy_mean": (FIELD_OCCUPANCY_SUM, FIELD_OCCUPANCY_SAMPLES),
    "occupancy_max": (FIELD_OCCUPANCY_MAX,),
    "crowd_max": (FIELD_CROWD_MAX,),
    "dwell_count": _DWELL_FIELDS,
    "dwell_p50_s": _DWELL_FIELDS,
    "dwell_p90_s": _DWELL_FIELDS,
}
Fields = dict[int, dict[int, int]]  # bucket start (s) -> field -> value


class SeriesReader:
    """Reads ``rules.sqlite`` opened read-only (``file:...?mode=ro``): it cannot write, and a file not
    there yet reads as no series. Each call opens its own connection, so any thread may call.

    A file that holds what rules never writes (a heatmap bomb, a grid of no configurable size, a value that
    is not a count) raises :class:`CorruptSeries` (a ``sqlite3.DatabaseError``), naming the table and series.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._unknown_kinds: set[str] = set()  # logged once each

    def catalog(self) -> list[SeriesKey]:
        """Every series kept, by camera, rule, kind and label; rows of a kind this version does not know
        (or not of text) are skipped."""
        with self._open() as db:
            if db is None:
                return []
            try:
                rows = db.execute("SELECT camera, rule, kind, label FROM series_keys ORDER BY 1, 2, 3, 4").fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return []
                raise
        keys = []
        for camera, rule, kind, label in rows:
            if not all(isinstance(part, str) for part in (camera, rule, kind, label)) or kind not in KIND_METRICS:
                unknown = str(kind)[:40]
                if unknown not in self._unknown_kinds and len(self._unknown_kinds) < 16:
                    self._unknown_kinds.add(unknown)
                    log.warning("series_keys holds a series of an unknown kind, skipped", extra={"kind": unknown})
                continue
            keys.append(SeriesKey(camera, rule, kind, label, KIND_METRICS[kind]))  # type: ignore[arg-type]
        return keys

    def series(
        self, camera: str, rule: str, label: str, metric: str, start_ns: int, end_ns: int, bucket_s: int
    ) -> list[Point]:
        """``metric`` of one series in buckets of ``bucket_s`` (a multiple of 60; 900, 3600, 86400 in the
        console) over [start_ns, end_ns), the first bucket the one holding ``start_ns``; only buckets with
        data. Raises ValueError for an unknown metric, a bad bucket or a range of over MAX_BUCKETS."""
        kind = kind_of(metric)
        if bucket_s < 60 or bucket_s % 60:
            raise ValueError(f"bucket_s must be a positive multiple of 60, got {bucket_s}")
        first_s, end_s = _range_s(start_ns, end_ns)
        first_s -= first_s % bucket_s
        if (end_s - first_s) // bucket_s > MAX_BUCKETS:
            raise ValueError(f"{start_ns}..{end_ns} in buckets of {bucket_s} s is over {MAX_BUCKETS} points")
        with self._open() as db:
            series = None if db is None else _series_id(db, camera, rule, kind, label)
            if db is None or series is None:
                return []
            buckets = _fields(db, series, _FIELDS[metric], first_s, end_s, bucket_s)
        points = []
        for start_s in sorted(buckets):
            value = _value(metric, buckets[start_s])
            if value is not None:
                points.append(Point(start_s * 10**9, value))
        return points

    def dwell_histogram(
        self, camera: str, rule: str, label: str, start_ns: int, end_ns: int
    ) -> list[tuple[float, int]]:
        """(upper bound in s, dwells) per bin over the range (the last bound is ``inf``): minutes where kept,
        whole hours and days before."""
        first_s, end_s = _range_s(start_ns, end_ns)
        first_s -= first_s % 60  # the minute holding start_ns, as series() would
        with self._open() as db:
            series = None if db is None else _series_id(db, camera, rule, "dwell", label)
            buckets = {} if db is None or series is None else _fields(db, series, _DWELL_FIELDS, first_s, end_s, None)
        counts = _dwell_counts(buckets.get(0, {}))
        return list(zip(DWELL_BOUNDS_S, counts, strict=True))

    def heatmap(self, camera: str, label: str | None, start_ns: int, end_ns: int) -> npt.NDArray[np.float64]:
        """Anchor points per cell (rows x columns, 36 x 64 by default) of ``label`` (None: every label)
        over the hours that start in [start_ns, end_ns) or hold start_ns; older than ``minute_days``, over
        the whole days that do (hourly heatmaps are kept as long as minutes, daily ones as hours)."""
        first_s, end_s = _range_s(start_ns, end_ns)
        queries = []
        for table, size in (("series_heat", 3600), ("series_heat_day", 86400)):
            where = f"FROM {table} WHERE camera = ? AND start_s >= ? AND start_s < ?"
            parameters: tuple[str | int, ...] = (camera, first_s - first_s % size, end_s)
            if label is not None:
                where, parameters = where + " AND label = ?", (*parameters, label)
            queries.append((table, where, parameters))
        with self._open() as db:
            if db is None:
                return np.zeros(DEFAULT_GRID, np.float64)
            newest = []  # the newest grid's size is the answer's
            for table, where, parameters in queries:
                try:
                    row = db.execute(
                        f"SELECT start_s, rows, columns {where} ORDER BY start_s DESC, rows DESC, columns DESC LIMIT 1",
                        parameters,
                    ).fetchone()
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    continue
                if row is not None:
                    newest.append((*row, table))
            if not newest:
                return np.zeros(DEFAULT_GRID, np.float64)
            _, rows, columns, table = max(newest, key=lambda row: tuple(v if type(v) is int else -1 for v in row[:3]))
            shape = check_grid_size(rows, columns, f"{table} of camera {camera!r}")
            total = np.zeros(shape, np.float64)
            for table, where, parameters in queries:
                try:
                    # one grid at a time; a blob larger than any grid's is not even read (length() reads no blob)
                    cursor = db.execute(
                        f"SELECT label, start_s, rows, columns, CASE WHEN typeof(grid) = 'blob' AND length(grid) <= "
                        f"{MAX_BLOB} THEN grid END {where}",
                        parameters,
                    )
                except sqlite3.OperationalError as exc:
                    if "no such table" not in str(exc):
                        raise
                    continue
                for stored_label, start_s, rows, columns, blob in cursor:
                    at = f"{table} of camera {camera!r}, label {str(stored_label)[:64]!r}, start_s {str(start_s)[:20]}"
                    total += regrid(decode_grid(blob, rows, columns, at), *shape)
        return total

    @contextmanager
    def _open(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None
            return
        path = self.path.resolve()
        uri = f"file:{quote(str(path))}?mode=ro"
        if not path.with_name(path.name + "-wal").exists() and not os.access(path.parent, os.W_OK):
            # A read-only mount (k3s) after rules stopped cleanly: no -wal/-shm, and SQLite cannot make the
            # -shm it needs to read a WAL database; nobody writes it now, so it can be read as immutable.
            uri += "&immutable=1"
        with closing(sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)) as db:
            yield db


def _range_s(start_ns: int, end_ns: int) -> tuple[int, int]:
    """[start_ns, end_ns) as whole seconds, the end rounded up."""
    if not (isinstance(start_ns, int) and isinstance(end_ns, int)) or not 0 <= start_ns < end_ns < 1 << 63:
        raise ValueError(f"a range needs 0 <= start_ns < end_ns < 2**63 (integers), got {start_ns!r}..{end_ns!r}")
    return start_ns // 10**9, -(-end_ns // 10**9)


def _series_id(db: sqlite3.Connection, camera: str, rule: str, kind: str, label: str) -> int | None:
    try:
        row = db.execute(
            "SELECT id FROM series_keys WHERE camera = ? AND rule = ? AND kind = ? AND label = ?",
            (camera, rule, kind, label),
        ).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else int(row[0])


def _fields(
    db: sqlite3.Connection, series: int, fields: tuple[int, ...], first_s: int, end_s: int, bucket_s: int | None
) -> Fields:
    """The fields of one series over [first_s, end_s) in buckets of ``bucket_s`` (None: one bucket, 0),
    each level serving the times since it is whole (``series_meta``) that a finer one does not."""
    meta = read_meta(db)
    kept_from = (meta.get("minutes_from_s", 0), meta.get("rollups_from_s", 0), meta.get("rollups_from_s", 0))
    placeholders = ", ".join("?" * len(fields))
    bucket = "0" if bucket_s is None else f"start_s / {bucket_s} * {bucket_s}"
    result: Fields = {}
    upper = end_s
    for (table, size), level_from in zip(LEVELS, kept_from, strict=True):
        if bucket_s is not None and bucket_s % size:
            break  # buckets finer than this level's rows: not answered from here on back
        lower = max(first_s, level_from)
        if lower < upper:
            rows = db.execute(
                f"SELECT {bucket} AS bucket, field, SUM(value), MAX(value) FROM {table} WHERE series = ?"
                f" AND field IN ({placeholders}) AND start_s >= ? AND start_s < ? GROUP BY bucket, field",
                (series, *fields, lower, upper),
            ).fetchall()
            for start_s, field, total, peak in rows:
                if not (type(start_s) is type(total) is type(peak) is int and total >= 0 and peak >= 0):
                    raise CorruptSeries(
                        f"{table}: series {series} field {field} holds {str(peak)[:20]} at {str(start_s)[:20]}, "
                        "not a count"
                    )
                values = result.setdefault(start_s, {})
                if field in MAX_FIELDS:
                    values[field] = max(values.get(field, peak), peak)
                else:
                    values[field] = values.get(field, 0) + total
        upper = min(upper, lower)
    return result


def _dwell_counts(values: dict[int, int]) -> list[int]:
    return [values.get(field, 0) for field in _DWELL_FIELDS]


def _value(metric: str, values: dict[int, int]) -> float | None:
    """One bucket's ``metric`` from its fields; None where the bucket holds nothing of it."""
    if metric in ("in", "out", "occupancy_max", "crowd_max"):
        (field,) = _FIELDS[metric]
        return float(values[field]) if field in values else None
    if metric == "occupancy_mean":
        samples = values.get(FIELD_OCCUPANCY_SAMPLES, 0)
        return values.get(FIELD_OCCUPANCY_SUM, 0) / samples if samples else None
    counts = _dwell_counts(values)
    if metric == "dwell_count":
        return float(sum(counts)) if any(counts) else None
    return quantile(counts, 0.5 if metric == "dwell_p50_s" else 0.9)

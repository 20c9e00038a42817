"""The writing side of the series: rules' one writer, on the connection of its running totals.

A line crossing is written at once, inside the transaction that adds it to the running total, so the
two agree at every moment, whatever kills the process. Everything sampled per frame (occupancy, dwell
times, crowd counts, heatmap points) is summed in memory and merged into its minute row by
:meth:`SeriesWriter.flush`: a crash loses at most the seconds since the last flush, and never counts
anything twice (a pending sum is dropped from memory only once its transaction committed).

Hours and days are *recomputed* from the finer rows (an upsert of sums, not an addition), from the
oldest hour touched since the last rollup (``series_meta.rollup_from_s``, lowered in the same
transaction as the write that touched it): redone after a crash, a rollup gives the same rows. Buckets
are wall-clock (UTC); a clock that jumps back just writes into earlier buckets, never into a minute
already deleted by retention (those writes go to the oldest minute kept).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from common.analytics.heatmap import decode_grid, encode_grid, regrid
from common.analytics.histogram import DWELL_BOUNDS_S, bin_index
from common.analytics.schema import HEAT_TABLES, MERGE, create_tables, read_meta
from common.analytics.series import (
    CROWD_LABEL,
    FIELD_CROWD_MAX,
    FIELD_DWELL_BIN,
    FIELD_IN,
    FIELD_OCCUPANCY_MAX,
    FIELD_OCCUPANCY_SAMPLES,
    FIELD_OCCUPANCY_SUM,
    FIELD_OUT,
    MAX_FIELDS,
    Kind,
)
from common.config.analytics import AnalyticsConfig

__all__ = ["SeriesWriter"]

MINUTE_NS = 60 * 10**9
HOUR_NS = 3600 * 10**9
Grid = npt.NDArray[np.uint32]
CLEAN = 1 << 62  # rollup_from_s when every hour and day agrees with the minutes
_MAX_LIST = ", ".join(str(field) for field in MAX_FIELDS)
_MERGE_ROW = (
    "INSERT INTO series_minute (series, field, start_s, value) VALUES (?, ?, ?, ?)"
    " ON CONFLICT (series, field, start_s) DO UPDATE SET"
    f" value = CASE WHEN field IN ({_MAX_LIST}) THEN max(value, excluded.value) ELSE value + excluded.value END"
)
_META = "INSERT INTO series_meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = "
_LOWER_META = _META + "min(value, excluded.value)"
_SET_META = _META + "excluded.value"


def _rollup_sql(target: str, source: str, size_s: int) -> str:
    return (
        f"INSERT INTO {target} (series, field, start_s, value)"
        f" SELECT series, field, start_s / {size_s} * {size_s} AS bucket, {MERGE} FROM {source}"
        f" WHERE start_s >= ? GROUP BY series, field, bucket"
        " ON CONFLICT (series, field, start_s) DO UPDATE SET value = excluded.value"
    )


class SeriesWriter:
    """Series of one rules service in its ``rules.sqlite``; every call is on the connection's thread.

    >>> import sqlite3; from common.config.analytics import AnalyticsConfig
    >>> writer = SeriesWriter(sqlite3.connect(":memory:"), AnalyticsConfig())
    >>> with writer.db:
    ...     writer.crossing("door", "entry", "person", "in", 1_700_000_000 * 10**9)
    >>> writer.flush(1_700_000_010 * 10**9)
    >>> writer.db.execute("SELECT start_s, value FROM series_hour").fetchall()
    [(1699999200, 1)]
    """

    def __init__(self, db: sqlite3.Connection, config: AnalyticsConfig) -> None:
        self.db = db
        self.config = config
        self.columns, self.rows = config.heatmap.columns, config.heatmap.rows
        create_tables(db)
        meta = read_meta(db)
        self._rollup_from_s = meta.get("rollup_from_s", CLEAN)
        self._minutes_from_s = meta.get("minutes_from_s", 0)
        self._rollups_from_s = meta.get("rollups_from_s", 0)
        self._ids: dict[tuple[str, str, str, str], int] = {}
        # pending, by (camera, rule, label, minute): [sum, samples, max] / counts per bin; crowd: max
        self._occupancy: dict[tuple[str, str, str, int], list[int]] = {}
        self._dwell: dict[tuple[str, str, str, int], list[int]] = {}
        self._crowd: dict[tuple[str, str, int], int] = {}
        self._heat: dict[tuple[str, str, int], list[int]] = {}  # (camera, label, hour) -> cells, row by row

    def crossing(self, camera: str, rule: str, label: str, direction: str, wall_ns: int) -> None:
        """One line crossing (``direction`` ``in`` or ``out``) in its minute. Call it inside the
        transaction that adds the crossing to the running total: it commits with it or not at all."""
        if direction not in ("in", "out"):
            raise ValueError(f"direction must be 'in' or 'out', got {direction!r}")
        start_s = self._minute(wall_ns)
        series = self._series(camera, rule, "line", label)
        self.db.execute(_MERGE_ROW, (series, FIELD_IN if direction == "in" else FIELD_OUT, start_s, 1))
        hour = start_s - start_s % 3600
        if hour < self._rollup_from_s:
            self.db.execute(_LOWER_META, ("rollup_from_s", hour))
            self._rollup_from_s = hour

    def occupancy(self, camera: str, rule: str, label: str, count: int, wall_ns: int) -> None:
        """A zone's count of ``label`` on one frame (0 too, once the label has been seen there)."""
        key = (camera, rule, label, self._minute(wall_ns))
        cell = self._occupancy.get(key)
        if cell is None:
            self._occupancy[key] = [count, 1, count]
        else:
            cell[0] += count
            cell[1] += 1
            if count > cell[2]:
                cell[2] = count

    def dwell(self, camera: str, rule: str, label: str, seconds: float, wall_ns: int) -> None:
        """An object left a dwell rule's zone after ``seconds`` inside: one more in its bin."""
        key = (camera, rule, label, self._minute(wall_ns))
        counts = self._dwell.get(key)
        if counts is None:
            counts = self._dwell[key] = [0] * len(DWELL_BOUNDS_S)
        counts[bin_index(seconds)] += 1

    def crowd(self, camera: str, rule: str, count: int, wall_ns: int) -> None:
        """A crowd rule's count on one frame; the minute keeps its maximum."""
        key = (camera, rule, self._minute(wall_ns))
        if count > self._crowd.get(key, -1):
            self._crowd[key] = count

    def heat(self, camera: str, label: str, x: float, y: float, wall_ns: int) -> None:
        """An object's anchor (``x``, ``y`` as fractions of the frame) on one frame: one more in its cell."""
        self.heat_many(camera, [(label, x, y)], wall_ns)

    def heat_many(self, camera: str, points: Iterable[tuple[str, float, float]], wall_ns: int) -> None:
        """:meth:`heat` for every (label, x, y) of one frame, in one call (rules' way: a frame's tracks)."""
        hour = wall_ns // HOUR_NS * 3600
        columns, rows = self.columns, self.rows
        grids = self._heat
        for label, x, y in points:
            cells = grids.get((camera, label, hour))
            if cells is None:
                cells = grids[camera, label, hour] = [0] * (rows * columns)
            column = min(columns - 1, max(0, int(x * columns)))
            cells[min(rows - 1, max(0, int(y * rows))) * columns + column] += 1

    def flush(self, wall_ns: int) -> None:
        """Merges what is pending into its minute rows, rolls the minutes touched up into hours and days,
        and applies retention (``analytics.minute_days``, ``analytics.retention_days``) as of ``wall_ns``;
        one transaction. On failure nothing pending is lost: it is tried again at the next flush."""
        rollup_from = self._rollup_from_s
        try:
            with self.db:
                lowest = self._write_pending()
                if lowest is not None:
                    rollup_from = min(rollup_from, lowest - lowest % 3600)
                if rollup_from < CLEAN:
                    self._rollup(rollup_from)
                    self.db.execute(_SET_META, ("rollup_from_s", CLEAN))
                minutes_from, rollups_from = self._retention(wall_ns // 10**9)
        except BaseException:
            self.rolled_back()
            raise
        self._rollup_from_s = CLEAN
        self._minutes_from_s, self._rollups_from_s = minutes_from, rollups_from
        self._occupancy.clear()
        self._dwell.clear()
        self._crowd.clear()
        self._heat.clear()

    def rolled_back(self) -> None:
        """The transaction that held a crossing rolled back: forgets the series ids it may have made."""
        self._ids.clear()

    def _minute(self, wall_ns: int) -> int:
        """The minute of ``wall_ns`` (epoch s), never one retention already deleted."""
        return max(wall_ns // MINUTE_NS * 60, self._minutes_from_s)

    def _series(self, camera: str, rule: str, kind: Kind, label: str) -> int:
        key = (camera, rule, kind, label)
        series = self._ids.get(key)
        if series is None:
            self.db.execute("INSERT OR IGNORE INTO series_keys (camera, rule, kind, label) VALUES (?, ?, ?, ?)", key)
            (series,) = self.db.execute(
                "SELECT id FROM series_keys WHERE camera = ? AND rule = ? AND kind = ? AND label = ?", key
            ).fetchone()
            self._ids[key] = series
        return series

    def _write_pending(self) -> int | None:
        """Merges the pending sums into the minute rows; the earliest minute written, if any."""
        rows: list[tuple[int, int, int, int]] = []
        for (camera, rule, label, start_s), (total, samples, peak) in self._occupancy.items():
            series = self._series(camera, rule, "zone", label)
            rows.append((series, FIELD_OCCUPANCY_SUM, start_s, total))
            rows.append((series, FIELD_OCCUPANCY_SAMPLES, start_s, samples))
            rows.append((series, FIELD_OCCUPANCY_MAX, start_s, peak))
        for (camera, rule, label, start_s), counts in self._dwell.items():
            series = self._series(camera, rule, "dwell", label)
            rows.extend((series, FIELD_DWELL_BIN + index, start_s, n) for index, n in enumerate(counts) if n)
        for (camera, rule, start_s), peak in self._crowd.items():
            rows.append((self._series(camera, rule, "crowd", CROWD_LABEL), FIELD_CROWD_MAX, start_s, peak))
        self.db.executemany(_MERGE_ROW, rows)
        for (camera, label, start_s), cells in self._heat.items():
            self._merge_heat(camera, label, start_s, np.array(cells, np.uint32).reshape(self.rows, self.columns))
        return min((row[2] for row in rows), default=None)

    def _merge_heat(self, camera: str, label: str, start_s: int, grid: Grid, table: str = "series_heat") -> None:
        """Adds ``grid`` to the stored one of that camera, label and hour (or day), on the current grid."""
        stored = self.db.execute(
            f"SELECT rows, columns, grid FROM {table} WHERE camera = ? AND label = ? AND start_s = ?",
            (camera, label, start_s),
        ).fetchone()
        if stored is not None:
            rows, columns, blob = stored
            total = grid.astype(np.uint64) + regrid(decode_grid(blob, rows, columns), self.rows, self.columns)
            grid = np.minimum(total, np.iinfo(np.uint32).max).astype(np.uint32)
        self.db.execute(
            f"INSERT INTO {table} VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (camera, label, start_s) DO UPDATE SET"
            " rows = excluded.rows, columns = excluded.columns, grid = excluded.grid",
            (camera, label, start_s, self.rows, self.columns, encode_grid(grid)),
        )

    def _heat_into_days(self, before_s: int) -> None:
        """Hourly heatmaps before ``before_s`` (a day's start) become their days' (added to them, and deleted
        in the same transaction: never twice); a day's grid is 1/24 of its hours' room."""
        days: dict[tuple[str, str, int], npt.NDArray[np.uint64]] = {}
        for camera, label, start_s, rows, columns, blob in self.db.execute(
            "SELECT camera, label, start_s, rows, columns, grid FROM series_heat WHERE start_s < ?", (before_s,)
        ):
            key = (camera, label, start_s - start_s % 86400)
            hour = regrid(decode_grid(blob, rows, columns), self.rows, self.columns).astype(np.uint64)
            days[key] = days[key] + hour if key in days else hour
        for (camera, label, day), total in days.items():
            capped = np.minimum(total, np.iinfo(np.uint32).max).astype(np.uint32)
            self._merge_heat(camera, label, day, capped, "series_heat_day")
        self.db.execute("DELETE FROM series_heat WHERE start_s < ?", (before_s,))

    def _rollup(self, from_s: int) -> None:
        """Hours from the minutes, days from the hours, for every bucket from ``from_s``'s on (those
        before it agree already): upserts of recomputed values, so doing it twice changes nothing."""
        self.db.execute(_rollup_sql("series_hour", "series_minute", 3600), (from_s - from_s % 3600,))
        self.db.execute(_rollup_sql("series_day", "series_hour", 86400), (from_s - from_s % 86400,))

    def _retention(self, now_s: int) -> tuple[int, int]:
        """Deletes minutes older than ``minute_days`` (whole hours: their hour rows stay), turns hourly
        heatmaps of whole days before them into daily ones, and deletes hours, days and heatmaps older
        than ``retention_days`` (whole days); returns from when each is kept. Runs after the rollup, so
        no minute goes before its hour has it."""
        minutes_from = now_s - self.config.minute_days * 86400
        minutes_from -= minutes_from % 3600
        rollups_from = now_s - self.config.retention_days * 86400
        rollups_from -= rollups_from % 86400
        if minutes_from > self._minutes_from_s:
            self.db.execute("DELETE FROM series_minute WHERE start_s < ?", (minutes_from,))
            self.db.execute(_SET_META, ("minutes_from_s", minutes_from))
            self._heat_into_days(minutes_from - minutes_from % 86400)
        if rollups_from > self._rollups_from_s:
            for table in ("series_hour", "series_day", *HEAT_TABLES):
                self.db.execute(f"DELETE FROM {table} WHERE start_s < ?", (rollups_from,))
            self.db.execute(_SET_META, ("rollups_from_s", rollups_from))
        return max(minutes_from, self._minutes_from_s), max(rollups_from, self._rollups_from_s)

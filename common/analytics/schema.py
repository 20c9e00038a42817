"""The series' tables in ``rules.sqlite`` (beside the running totals' ``counts``), and the SQL both sides share.

- ``series_keys``: one row per series (camera, rule, kind, label) and its id.
- ``series_minute``, ``series_hour``, ``series_day``: ``(series, field, start_s) -> value``, an integer
  per field per bucket (``common.analytics.series``: fields and how they merge), ``start_s`` UTC epoch
  seconds aligned to the bucket. Hours and days are recomputed from the finer rows, never added to.
- ``series_heat``: per camera, label and hour, the heatmap grid (``common.analytics.heatmap``), kept as long
  as the minutes; ``series_heat_day``: the same per day, made of the hours as they go, kept as the hours.
- ``series_meta``: ``rollup_from_s`` (every hour and day before it agrees with the minutes), and from
  when each level is whole (``minutes_from_s``, ``rollups_from_s``): older rows were deleted by retention.
"""

from __future__ import annotations

import sqlite3

from common.analytics.series import MAX_FIELDS

__all__ = ["HEAT_TABLES", "LEVELS", "MERGE", "create_tables", "read_meta"]

HEAT_TABLES = ("series_heat", "series_heat_day")
LEVELS: tuple[tuple[str, int], ...] = (("series_minute", 60), ("series_hour", 3600), ("series_day", 86400))
_MAX_LIST = ", ".join(str(field) for field in MAX_FIELDS)
MERGE = f"CASE WHEN field IN ({_MAX_LIST}) THEN MAX(value) ELSE SUM(value) END"  # rows of one field into one

_TABLES = [
    "CREATE TABLE IF NOT EXISTS series_keys (id INTEGER PRIMARY KEY, camera TEXT NOT NULL, rule TEXT NOT NULL,"
    " kind TEXT NOT NULL, label TEXT NOT NULL, UNIQUE (camera, rule, kind, label))",
    *(
        f"CREATE TABLE IF NOT EXISTS {table} (series INTEGER NOT NULL, field INTEGER NOT NULL,"
        f" start_s INTEGER NOT NULL, value INTEGER NOT NULL, PRIMARY KEY (series, field, start_s)) WITHOUT ROWID"
        for table, _ in LEVELS
    ),
    # rollups and retention select by time across every series
    "CREATE INDEX IF NOT EXISTS series_minute_start ON series_minute (start_s)",
    "CREATE INDEX IF NOT EXISTS series_hour_start ON series_hour (start_s)",
    *(
        f"CREATE TABLE IF NOT EXISTS {table} (camera TEXT NOT NULL, label TEXT NOT NULL, start_s INTEGER NOT NULL,"
        " rows INTEGER NOT NULL, columns INTEGER NOT NULL, grid BLOB NOT NULL, PRIMARY KEY (camera, label, start_s))"
        for table in HEAT_TABLES
    ),
    "CREATE TABLE IF NOT EXISTS series_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
]


def create_tables(db: sqlite3.Connection) -> None:
    with db:
        for statement in _TABLES:
            db.execute(statement)


def read_meta(db: sqlite3.Connection) -> dict[str, int]:
    """``series_meta`` as a dict; empty where the tables are not there yet (a reader before rules' first start)."""
    try:
        return dict(db.execute("SELECT key, value FROM series_meta").fetchall())
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise

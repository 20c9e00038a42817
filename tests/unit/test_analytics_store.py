"""The series store (``common.analytics``) on real SQLite files: rollups, retention, restarts, clocks
that jump, buckets, dwell quantiles, heatmaps, a reader that cannot write; and how rules feeds it."""

from __future__ import annotations

import datetime as dt
import hashlib
import math
import sqlite3
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from common.analytics import DWELL_BOUNDS_S, CorruptSeries, SeriesReader, SeriesWriter
from common.analytics.heatmap import GRID_MAX, GRID_MIN, MAX_BLOB, decode_grid, encode_grid
from common.analytics.reader import MAX_BUCKETS
from common.analytics.series import FIELD_IN
from common.config import AnalyticsConfig, parse_config
from common.config.analytics import HeatmapConfig
from services.rules.analytics import SeriesRecorder, continue_counters
from services.rules.engine import CameraRules
from services.rules.moment import Moment, Observed
from services.rules.outputs import SqliteCountStore

S = 10**9
MIDNIGHT = int(dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc).timestamp())  # a Monday, UTC
T0 = MIDNIGHT * S
MINUTE, HOUR, DAY = 60 * S, 3600 * S, 86400 * S


def open_writer(path: Path, **config: Any) -> tuple[sqlite3.Connection, SeriesWriter]:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    return db, SeriesWriter(db, AnalyticsConfig(**config))


def cross(writer: SeriesWriter, wall_ns: int, direction: str = "in", rule: str = "door", label: str = "person") -> None:
    with writer.db:
        writer.crossing("cam", rule, label, direction, wall_ns)


def rows(db: sqlite3.Connection, table: str) -> list[tuple[int, int, int, int]]:
    return db.execute(f"SELECT series, field, start_s, value FROM {table} ORDER BY 1, 2, 3").fetchall()


def values(points: list[Any]) -> list[tuple[int, float]]:
    """(seconds since MIDNIGHT, value) of each point."""
    return [(point.start_ns // S - MIDNIGHT, point.value) for point in points]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "rules.sqlite"


def test_buckets_of_15_minutes_an_hour_and_a_day(path: Path) -> None:
    db, writer = open_writer(path)
    for minute in (0, 1, 14, 15, 59, 60, 61, 24 * 60 + 5):  # two in the first quarter hour's first minute
        cross(writer, T0 + minute * MINUTE + 5 * S)
    cross(writer, T0 + 10 * S)
    cross(writer, T0 + 30 * MINUTE, "out")
    writer.flush(T0 + 2 * DAY)
    reader = SeriesReader(path)
    week = (T0, T0 + 7 * DAY)
    assert values(reader.series("cam", "door", "person", "in", *week, 900)) == [
        (0, 4),
        (900, 1),
        (2700, 1),
        (3600, 2),
        (86400, 1),
    ]
    assert values(reader.series("cam", "door", "person", "in", *week, 3600)) == [(0, 6), (3600, 2), (86400, 1)]
    assert values(reader.series("cam", "door", "person", "in", *week, 86400)) == [(0, 8), (86400, 1)]
    assert values(reader.series("cam", "door", "person", "out", *week, 86400)) == [(0, 1)]
    # the bucket holding start_ns comes first; end is exclusive
    assert values(reader.series("cam", "door", "person", "in", T0 + 20 * MINUTE, T0 + HOUR, 900)) == [
        (900, 1),
        (2700, 1),
    ]
    assert reader.series("cam", "door", "nobody", "in", *week, 900) == []
    db.close()


def test_minutes_roll_up_into_hours_and_days_and_a_rollup_redone_changes_nothing(path: Path) -> None:
    db, writer = open_writer(path)
    for minute in range(0, 180, 7):
        cross(writer, T0 + minute * MINUTE, "in" if minute % 2 else "out")
    writer.flush(T0 + 3 * HOUR)
    hours, days = rows(db, "series_hour"), rows(db, "series_day")
    assert sum(value for *_, value in hours) == len(range(0, 180, 7)) == sum(value for *_, value in days)
    assert {start for _, _, start, _ in hours} == {MIDNIGHT, MIDNIGHT + 3600, MIDNIGHT + 7200}
    db.execute("UPDATE series_meta SET value = 0 WHERE key = 'rollup_from_s'")  # as if it had crashed before
    db.commit()
    _, again = open_writer(path)
    again.flush(T0 + 3 * HOUR)
    again.flush(T0 + 3 * HOUR)
    assert rows(db, "series_hour") == hours and rows(db, "series_day") == days


def test_a_crash_after_a_crossing_and_before_the_rollup_loses_and_doubles_nothing(path: Path) -> None:
    store = SqliteCountStore(path, AnalyticsConfig())
    for second in range(0, 7200, 400):
        store.add("cam", "door", "person", "in", T0 + second * S)
    assert store.series is not None
    store.series.flush(T0 + 20 * MINUTE)  # rolls up the first hours' crossings
    store.add("cam", "door", "person", "in", T0 + 3 * HOUR)
    store.db.close()  # killed here: no flush since (the crossing committed with its total)
    again = SqliteCountStore(path, AnalyticsConfig())
    assert again.get("cam", "door", "person", "in") == 19
    again.add("cam", "door", "person", "in", T0 + 3 * HOUR + MINUTE)
    assert again.series is not None
    again.series.flush(T0 + 4 * HOUR)
    again.series.flush(T0 + 4 * HOUR)
    reader = SeriesReader(path)
    for bucket in (900, 3600, 86400):
        assert sum(p.value for p in reader.series("cam", "door", "person", "in", T0, T0 + DAY, bucket)) == 20
    hours = {start: value for _, _, start, value in rows(again.db, "series_hour")}
    assert hours == {MIDNIGHT: 9, MIDNIGHT + 3600: 9, MIDNIGHT + 3 * 3600: 2}
    assert [value for *_, value in rows(again.db, "series_day")] == [20]
    again.close()


def test_the_running_total_and_the_series_agree_over_restarts(path: Path) -> None:
    total = 0
    for run in range(3):
        store = SqliteCountStore(path, AnalyticsConfig())
        for crossing in range(5):
            store.add("cam", "door", "person", "out", T0 + (run * 10 + crossing) * MINUTE)
            total += 1
        assert store.series is not None
        if run != 1:  # one run ends without its final flush
            store.series.flush(T0 + HOUR)
        store.close()
    store = SqliteCountStore(path, AnalyticsConfig())
    assert store.get("cam", "door", "person", "out") == total == 15
    minutes = SeriesReader(path).series("cam", "door", "person", "out", T0, T0 + DAY, 900)
    assert sum(p.value for p in minutes) == 15
    store.close()


def test_a_crossing_that_does_not_commit_is_in_neither(path: Path) -> None:
    store = SqliteCountStore(path, AnalyticsConfig())
    store.add("cam", "door", "person", "in", T0)
    blocker = sqlite3.connect(path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock: the transaction cannot commit
    store.db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError):
        store.add("cam", "door", "person", "in", T0 + MINUTE)
    blocker.rollback()
    assert store.get("cam", "door", "person", "in") == 1
    store.add("cam", "door", "person", "in", T0 + 2 * MINUTE)
    assert store.series is not None
    store.series.flush(T0 + HOUR)
    series = SeriesReader(path).series("cam", "door", "person", "in", T0, T0 + HOUR, 3600)
    assert [p.value for p in series] == [2] == [store.get("cam", "door", "person", "in")]
    store.close()
    blocker.close()


def test_a_clock_that_jumps_back_writes_into_the_earlier_bucket(path: Path) -> None:
    db, writer = open_writer(path)
    cross(writer, T0 + 5 * HOUR)
    for _ in range(3):
        writer.occupancy("cam", "bay", "person", 4, T0 + 5 * HOUR)
    writer.flush(T0 + 5 * HOUR + 10 * S)
    cross(writer, T0 + 2 * HOUR)  # the clock was set back three hours
    cross(writer, T0 + 5 * HOUR)
    writer.occupancy("cam", "bay", "person", 1, T0 + 2 * HOUR)
    writer.flush(T0 + 2 * HOUR + 10 * S)
    reader = SeriesReader(path)
    day = (T0, T0 + DAY)
    assert values(reader.series("cam", "door", "person", "in", *day, 3600)) == [(7200, 1), (18000, 2)]
    assert values(reader.series("cam", "door", "person", "in", *day, 86400)) == [(0, 3)]
    crossings = {start: value for _, field, start, value in rows(db, "series_hour") if field == FIELD_IN}
    assert crossings == {MIDNIGHT + 7200: 1, MIDNIGHT + 18000: 2}
    assert values(reader.series("cam", "bay", "person", "occupancy_mean", *day, 3600)) == [(7200, 1.0), (18000, 4.0)]


def test_retention_keeps_minutes_for_minute_days_and_hours_for_retention_days(path: Path) -> None:
    db, writer = open_writer(path, minute_days=2, retention_days=5)
    for day in range(8):
        for hour in (1, 13):
            cross(writer, T0 + day * DAY + hour * HOUR + 30 * MINUTE)
            writer.heat("cam", "person", 0.5, 0.5, T0 + day * DAY + hour * HOUR)
        writer.flush(T0 + day * DAY + 23 * HOUR)
    now = T0 + 7 * DAY + 23 * HOUR
    minutes = {start for _, _, start, _ in rows(db, "series_minute")}
    assert min(minutes) >= (now - 2 * DAY) // S - 3600  # whole hours, two days back
    hours = {start for _, _, start, _ in rows(db, "series_hour")}
    assert min(hours) == MIDNIGHT + 2 * 86400 + 3600  # whole days, five days back
    heat_hours = [start for (start,) in db.execute("SELECT start_s FROM series_heat")]
    assert min(heat_hours) == MIDNIGHT + 5 * 86400 + 3600  # hourly from the day the minutes start in
    heat_days = [start - MIDNIGHT for (start,) in db.execute("SELECT start_s FROM series_heat_day ORDER BY 1")]
    assert heat_days == [2 * 86400, 3 * 86400, 4 * 86400]  # daily before, within retention_days
    reader = SeriesReader(path)
    everything = (T0, T0 + 8 * DAY)
    daily = values(reader.series("cam", "door", "person", "in", *everything, 86400))
    assert daily == [(day * 86400, 2) for day in range(2, 8)]  # hours where minutes are gone, minutes after
    quarter_hours = reader.series("cam", "door", "person", "in", *everything, 900)
    assert len(quarter_hours) == 4 and all(p.start_ns >= now - 2 * DAY - HOUR for p in quarter_hours)
    assert reader.heatmap("cam", "person", *everything).sum() == 12
    assert reader.heatmap("cam", "person", T0 + 3 * DAY + 13 * HOUR, T0 + 3 * DAY + 14 * HOUR)[18, 32] == 2  # its day
    assert reader.heatmap("cam", "person", T0 + 6 * DAY + 13 * HOUR, T0 + 6 * DAY + 14 * HOUR).sum() == 1  # its hour
    db.close()


def test_a_write_older_than_the_minutes_kept_goes_to_the_oldest_minute_kept(path: Path) -> None:
    db, writer = open_writer(path, minute_days=1)
    cross(writer, T0 + 3 * DAY)
    writer.flush(T0 + 3 * DAY)
    cross(writer, T0)  # a clock set back days: its minute is gone, its hour must not be overwritten
    writer.flush(T0 + 3 * DAY)
    reader = SeriesReader(path)
    assert sum(p.value for p in reader.series("cam", "door", "person", "in", T0, T0 + 4 * DAY, 3600)) == 2
    assert sum(value for *_, value in rows(db, "series_day")) == 2


def test_occupancy_mean_and_max_and_crowd_max(path: Path) -> None:
    _db, writer = open_writer(path)
    for second, count in enumerate([0, 1, 2, 3, 0, 0]):
        writer.occupancy("cam", "bay", "person", count, T0 + second * 20 * S)  # two minutes of samples
        writer.crowd("cam", "queue", count * 2, T0 + second * 20 * S)
    writer.flush(T0 + 5 * MINUTE)
    writer.occupancy("cam", "bay", "person", 6, T0 + HOUR)
    writer.flush(T0 + 2 * HOUR)
    reader = SeriesReader(path)
    day = (T0, T0 + DAY)
    assert values(reader.series("cam", "bay", "person", "occupancy_mean", *day, 900)) == [(0, 1.0), (3600, 6.0)]
    assert values(reader.series("cam", "bay", "person", "occupancy_max", *day, 900)) == [(0, 3), (3600, 6)]
    assert values(reader.series("cam", "bay", "person", "occupancy_mean", *day, 86400)) == [(0, 12 / 7)]
    assert values(reader.series("cam", "bay", "person", "occupancy_max", *day, 86400)) == [(0, 6)]
    assert values(reader.series("cam", "queue", "all", "crowd_max", *day, 3600)) == [(0, 6)]
    kinds = {(key.rule, key.kind, key.label, key.metrics) for key in reader.catalog()}
    assert kinds == {
        ("bay", "zone", "person", ("occupancy_mean", "occupancy_max")),
        ("queue", "crowd", "all", ("crowd_max",)),
    }


def test_dwell_quantiles_are_estimated_from_the_histogram(path: Path) -> None:
    _db, writer = open_writer(path)
    for seconds in [3] * 10 + [15] * 8 + [45] * 2:  # 20 dwells: bins 2-5, 10-20, 30-60
        writer.dwell("cam", "loiter", "person", seconds, T0 + 10 * S)
    writer.dwell("cam", "loiter", "person", 4000, T0 + 2 * HOUR)
    writer.flush(T0 + 3 * HOUR)
    reader = SeriesReader(path)
    hour = (T0, T0 + HOUR)
    assert values(reader.series("cam", "loiter", "person", "dwell_count", *hour, 3600)) == [(0, 20)]
    assert values(reader.series("cam", "loiter", "person", "dwell_p50_s", *hour, 3600)) == [(0, 5.0)]
    (p90,) = reader.series("cam", "loiter", "person", "dwell_p90_s", *hour, 3600)
    assert 10 < p90.value <= 20  # the 18th of 20 dwells is in the 10-20 s bin
    histogram = dict(reader.dwell_histogram("cam", "loiter", "person", T0, T0 + DAY))
    assert histogram[5] == 10 and histogram[20] == 8 and histogram[60] == 2 and histogram[math.inf] == 1
    assert [bound for bound, _ in reader.dwell_histogram("cam", "loiter", "person", *hour)] == list(DWELL_BOUNDS_S)
    (late,) = reader.series("cam", "loiter", "person", "dwell_p90_s", T0 + 2 * HOUR, T0 + 3 * HOUR, 3600)
    assert late.value == 1800  # the open bin answers its lower bound


def test_the_heatmap_adds_up_per_hour_and_label_and_survives_a_new_grid(path: Path) -> None:
    db, writer = open_writer(path)
    for _ in range(5):
        writer.heat("cam", "person", 0.1, 0.9, T0 + 10 * S)  # bottom left
    writer.heat("cam", "car", 0.99, 0.01, T0 + 10 * S)  # top right
    writer.flush(T0 + MINUTE)
    writer.heat("cam", "person", 0.1, 0.9, T0 + 20 * S)  # same hour, after a flush: added, not replaced
    writer.heat("cam", "person", 1.0, 1.0, T0 + HOUR)  # the far corner, the next hour
    writer.flush(T0 + 2 * HOUR)
    reader = SeriesReader(path)
    day = (T0, T0 + DAY)
    people = reader.heatmap("cam", "person", *day)
    assert people.shape == (36, 64) and people.dtype == np.float64
    assert people[32, 6] == 6 and people[35, 63] == 1 and people.sum() == 7
    assert reader.heatmap("cam", None, *day)[0, 63] == 1
    assert reader.heatmap("cam", "person", T0 + HOUR, T0 + DAY).sum() == 1
    assert reader.heatmap("cam", "person", T0 + 30 * MINUTE, T0 + HOUR).sum() == 6  # the hour holding start
    assert reader.heatmap("elsewhere", None, *day).sum() == 0
    db.close()
    db, coarser = open_writer(path, heatmap={"columns": 32, "rows": 18})
    coarser.heat("cam", "person", 0.1, 0.9, T0 + 30 * S)
    coarser.flush(T0 + 2 * HOUR)
    first_hour = reader.heatmap("cam", "person", T0, T0 + HOUR)
    assert first_hour.shape == (18, 32) and first_hour[16, 3] == 7


def test_the_reader_cannot_write_and_leaves_the_file_as_it_was(path: Path) -> None:
    db, writer = open_writer(path)
    cross(writer, T0)
    writer.flush(T0 + MINUTE)
    db.close()
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    reader = SeriesReader(path)
    reader.catalog()
    reader.series("cam", "door", "person", "in", T0, T0 + DAY, 900)
    reader.heatmap("cam", None, T0, T0 + DAY)
    with reader._open() as connection:
        assert connection is not None
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            connection.execute("DELETE FROM series_minute")
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            connection.execute("CREATE TABLE stolen (x)")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_a_reader_before_rules_ever_ran_sees_no_series(tmp_path: Path) -> None:
    missing = SeriesReader(tmp_path / "absent.sqlite")
    assert missing.catalog() == [] and missing.series("c", "r", "l", "in", T0, T0 + DAY, 900) == []
    assert missing.heatmap("c", None, T0, T0 + DAY).sum() == 0
    counts_only = tmp_path / "old.sqlite"
    sqlite3.connect(counts_only).execute("CREATE TABLE counts (x)").connection.commit()
    old = SeriesReader(counts_only)
    assert old.catalog() == [] and old.series("c", "r", "l", "in", T0, T0 + DAY, 900) == []
    assert [n for _, n in old.dwell_histogram("c", "r", "l", T0, T0 + DAY)] == [0] * len(DWELL_BOUNDS_S)
    assert not (tmp_path / "absent.sqlite").exists()


@pytest.mark.parametrize(
    ("metric", "start_ns", "end_ns", "bucket_s", "message"),
    [
        ("in; DROP TABLE series_keys", T0, T0 + DAY, 900, "unknown metric"),
        ("in", T0, T0 + DAY, 0, "multiple of 60"),
        ("in", T0, T0 + DAY, 90, "multiple of 60"),
        ("in", T0, T0 + DAY, -900, "multiple of 60"),
        ("in", T0 + DAY, T0, 900, "start_ns < end_ns"),
        ("in", -1, T0, 900, "start_ns < end_ns"),
        ("in", 0, (1 << 63) - 1, 900, "points"),
        ("in", 0, T0, 60, "points"),
    ],
)
def test_the_reader_refuses_what_it_cannot_answer(
    path: Path, metric: str, start_ns: int, end_ns: int, bucket_s: int, message: str
) -> None:
    _db, writer = open_writer(path)
    cross(writer, T0)
    writer.flush(T0)
    with pytest.raises(ValueError, match=message):
        SeriesReader(path).series("cam", "door", "person", metric, start_ns, end_ns, bucket_s)
    assert len(SeriesReader(path).catalog()) == 1
    assert MAX_BUCKETS >= 366 * 96  # a year of 15-minute buckets is one answer


def zeros_bomb(size: int) -> bytes:
    """``size`` zero bytes, zlib'd (about a thousandth of that), made without holding them."""
    deflater, chunk = zlib.compressobj(9), bytes(1 << 20)
    parts = [deflater.compress(chunk) for _ in range(size // len(chunk))]
    return b"".join(parts) + deflater.flush()


def stored_heat(path: Path, rows: Any, columns: Any, grid: Any, table: str = "series_heat") -> SeriesReader:
    """A file as rules would leave it after an hour of heat, then one grid of ``table`` replaced by what
    an attacker (or a damaged disk) put there."""
    db, writer = open_writer(path, minute_days=1)
    writer.heat("cam", "person", 0.5, 0.5, T0 + 10 * S)
    writer.flush(T0 + 2 * DAY)  # the hour becomes its day's grid: both tables hold one
    writer.heat("cam", "person", 0.5, 0.5, T0 + 2 * DAY + 10 * S)
    writer.flush(T0 + 2 * DAY + MINUTE)
    with db:
        assert db.execute(f"UPDATE {table} SET rows = ?, columns = ?, grid = ?", (rows, columns, grid)).rowcount == 1
    db.close()
    return SeriesReader(path)


def test_a_heatmap_bomb_is_refused_without_inflating_it(path: Path) -> None:
    bomb = zeros_bomb(200 << 20)  # 200 MB of zeros in ~200 KB: within the largest grid's zlib bound
    assert len(bomb) <= MAX_BLOB
    reader = stored_heat(path, GRID_MAX, GRID_MAX, bomb)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(
            CorruptSeries, match=r"series_heat of camera 'cam', label 'person'.*more than 262144"
        ) as caught:
            reader.heatmap("cam", None, T0, T0 + 3 * DAY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0 and peak < 10 << 20
    assert str(path) not in str(caught.value) and path.name not in str(caught.value)
    assert isinstance(caught.value, sqlite3.Error) and isinstance(caught.value, ValueError)  # 503, as a damaged file
    with pytest.raises(CorruptSeries, match="more than 64 bytes"):  # the smallest grid: a bomb of its size
        decode_grid(zlib.compress(bytes(50_000), 9), 4, 4)


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (zlib.compress(bytes(4 * 5 * 4)), "more than 64 bytes"),  # a 4x5 grid stored as 4x4
        (zlib.compress(bytes(4 * 3 * 4)), "needs 64 bytes, got 48"),
        (zlib.compress(bytes(64)) + b"more", "data after it"),
        (zlib.compress(bytes(64))[:-6], "cut short"),
        (b"not zlib at all", "not a zlib'd grid"),
        (bytes(78), "at most 77 bytes, got 78"),
        ("text", "got str"),
        (None, "got none"),
    ],
)
def test_a_grid_that_is_not_its_size_is_refused(blob: Any, message: str) -> None:
    with pytest.raises(CorruptSeries, match=message):
        decode_grid(blob, 4, 4, "series_heat")
    assert decode_grid(encode_grid(np.ones((4, 4), np.uint32)), 4, 4).sum() == 16  # the size itself decodes


@pytest.mark.parametrize(
    ("rows", "columns"),
    [
        (100_000, 100_000),
        (-36, 64),
        (-36, -64),
        (36, 0),
        (GRID_MIN - 1, 64),
        (36, GRID_MAX + 1),
        ("36x", 64),
        (36.5, 64),
        (36, 1 << 62),
    ],
)
@pytest.mark.parametrize("table", ["series_heat", "series_heat_day"])
def test_a_grid_of_no_configurable_size_is_refused(path: Path, rows: Any, columns: Any, table: str) -> None:
    reader = stored_heat(path, rows, columns, zlib.compress(bytes(64)), table)
    started = time.perf_counter()
    with pytest.raises(CorruptSeries, match=rf"{table} of camera 'cam'.*rows and columns are 4\.\.256"):
        reader.heatmap("cam", "person", T0, T0 + 3 * DAY)  # the newest grid (the answer's size) or an older one
    assert time.perf_counter() - started < 1.0


def test_a_stored_grid_larger_than_any_grid_is_not_read(path: Path) -> None:
    reader = stored_heat(path, 36, 64, bytes(MAX_BLOB + 1))
    with pytest.raises(CorruptSeries, match="at most 9231 bytes, got none"):  # the query answers no blob for it
        reader.heatmap("cam", None, T0, T0 + 3 * DAY)


def test_the_grid_limits_are_the_configs() -> None:
    for field in ("rows", "columns"):
        bounds = {type(item).__name__: item for item in HeatmapConfig.model_fields[field].metadata}
        assert (bounds["Ge"].ge, bounds["Le"].le) == (GRID_MIN, GRID_MAX)


def test_a_series_of_an_unknown_kind_is_skipped(path: Path) -> None:
    db, writer = open_writer(path)
    cross(writer, T0)
    writer.flush(T0 + MINUTE)
    with db:
        db.execute("INSERT INTO series_keys (camera, rule, kind, label) VALUES ('cam', 'door', 'sparkle', 'person')")
        db.execute("INSERT INTO series_keys (camera, rule, kind, label) VALUES ('cam', x'07', 'line', 'person')")
    reader = SeriesReader(path)
    ((camera, rule, kind, label),) = [(k.camera, k.rule, k.kind, k.label) for k in reader.catalog()]
    assert (camera, rule, kind, label) == ("cam", "door", "line", "person")
    with pytest.raises(ValueError, match="unknown metric 'sparkle'"):
        reader.series("cam", "door", "person", "sparkle", T0, T0 + DAY, 900)
    assert values(reader.series("cam", "door", "person", "in", T0, T0 + DAY, 900)) == [(0, 1)]


@pytest.mark.parametrize("value", [-5, "many", 2.5, b"\x01"])
def test_a_value_that_is_not_a_count_is_refused(path: Path, value: Any) -> None:
    db, writer = open_writer(path)
    cross(writer, T0)
    writer.flush(T0 + MINUTE)
    with db:
        db.execute("UPDATE series_minute SET value = ?", (value,))
    with pytest.raises(CorruptSeries, match=r"series_minute: series 1 field 0 .*not a count"):
        SeriesReader(path).series("cam", "door", "person", "in", T0, T0 + DAY, 900)


def test_names_are_data_never_sql(path: Path) -> None:
    db, writer = open_writer(path)
    odd = "x' OR '1'='1"
    cross(writer, T0, rule=odd, label='a"; DROP TABLE series_minute; --')
    writer.flush(T0)
    reader = SeriesReader(path)
    assert reader.series("cam", "door' OR '1'='1", "person", "in", T0, T0 + DAY, 900) == []
    (point,) = reader.series("cam", odd, 'a"; DROP TABLE series_minute; --', "in", T0, T0 + DAY, 900)
    assert point.value == 1 and len(rows(db, "series_minute")) == 1


def test_a_flush_that_cannot_commit_keeps_what_it_held_for_the_next(path: Path) -> None:
    db, writer = open_writer(path)
    db.execute("PRAGMA busy_timeout = 0")
    writer.occupancy("cam", "bay", "person", 2, T0)
    writer.dwell("cam", "loiter", "person", 3, T0)
    blocker = sqlite3.connect(path)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(sqlite3.OperationalError):
        writer.flush(T0 + MINUTE)
    blocker.rollback()
    writer.occupancy("cam", "bay", "person", 4, T0)
    writer.flush(T0 + MINUTE)
    writer.flush(T0 + MINUTE)
    reader = SeriesReader(path)
    assert values(reader.series("cam", "bay", "person", "occupancy_mean", T0, T0 + HOUR, 900)) == [(0, 3.0)]
    assert values(reader.series("cam", "loiter", "person", "dwell_count", T0, T0 + HOUR, 900)) == [(0, 1)]
    blocker.close()


# --- what rules feeds it ---------------------------------------------------------------------------

BAY = [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]]
RULES = {
    "bay": {"type": "zone", "polygon": BAY, "inertia_frames": 1},
    "loiter": {"type": "dwell", "zone": "bay", "seconds": 60},
    "queue": {"type": "crowd", "zone": "bay", "min_count": 5, "seconds": 1},
    "door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]},
}


def feet(x: float, y: float, track_id: int, label: str = "person") -> Observed:
    return Observed(track_id, label, 0.9, (x - 0.02, y - 0.1, x + 0.02, y))


def test_rules_feed_occupancy_dwell_crowd_heat_and_crossings(path: Path) -> None:
    """Two people walk into the bay (crossing the door line) at 10 fps; one leaves after 3 s, the
    other after 12 s; a car is never in a zone."""
    config = parse_config(
        yaml.safe_dump({"site": {"name": "s"}, "cameras": {"cam": {"url": "rtsp://h", "rules": RULES}}})
    )
    store = SqliteCountStore(path, AnalyticsConfig())
    rules = CameraRules("cam", config.cameras["cam"], store)
    recorder = SeriesRecorder(store.series)
    for frame in range(150):
        t = frame / 10
        wall = dt.datetime.fromtimestamp(MIDNIGHT + t, dt.timezone.utc)
        tracks = [feet(0.9, 0.1, 9, "car")]
        gone = []
        for track_id, leaves in ((1, 30), (2, 120)):
            if frame < leaves:
                tracks.append(feet(0.1 * track_id, 0.4 if frame == 0 else 0.8, track_id))
            elif frame == leaves:
                gone.append(feet(0.1 * track_id, 0.8, track_id))
        moment = Moment(t, wall, tracks, gone)
        rules.step(moment)
        recorder.frame("cam", rules, moment, rules.occupancy(), int((MIDNIGHT + t) * S))
    recorder.flush(T0 + HOUR)
    reader = SeriesReader(path)
    day = (T0, T0 + DAY)
    assert [p.value for p in reader.series("cam", "door", "person", "in", *day, 900)] == [2]
    (mean,) = reader.series("cam", "bay", "person", "occupancy_mean", *day, 900)
    assert mean.value == pytest.approx((29 * 2 + 90 * 1 + 30 * 0) / 150, abs=0.02)  # 0 counts, once seen
    assert [p.value for p in reader.series("cam", "bay", "person", "occupancy_max", *day, 900)] == [2]
    histogram = dict(reader.dwell_histogram("cam", "loiter", "person", *day))
    assert histogram[5] == 1 and histogram[20] == 1 and sum(histogram.values()) == 2  # 2.9 s and 11.9 s
    assert [p.value for p in reader.series("cam", "queue", "all", "crowd_max", *day, 900)] == [2]
    heat = reader.heatmap("cam", "person", *day)
    assert heat[int(0.8 * 36), int(0.1 * 64)] == 29 and heat[int(0.8 * 36), int(0.2 * 64)] == 119
    assert reader.heatmap("cam", "car", *day)[3, 57] == 150  # the car's feet, (0.9, 0.1)
    assert {key.rule for key in reader.catalog()} == {"bay", "loiter", "queue", "door"}
    store.close()


def test_series_off_keeps_only_the_running_totals(path: Path) -> None:
    store = SqliteCountStore(path, AnalyticsConfig(enabled=False))
    store.add("cam", "door", "person", "in", T0)
    recorder = SeriesRecorder(store.series)
    recorder.flush(T0)
    assert store.series is None and store.get("cam", "door", "person", "in") == 1
    assert SeriesReader(path).catalog() == []
    store.close()


def test_the_crossings_counter_continues_from_the_stored_totals(path: Path) -> None:
    store = SqliteCountStore(path, AnalyticsConfig())
    for _ in range(3):
        store.add("gate", "entry", "truck", "out", T0)
    store.close()
    labels = {"camera": "gate", "line": "entry", "direction": "out", "label": "truck"}
    before = REGISTRY.get_sample_value("edgesight_line_crossings_total", labels) or 0
    continue_counters(SqliteCountStore(path, AnalyticsConfig()))
    assert REGISTRY.get_sample_value("edgesight_line_crossings_total", labels) == before + 3


def test_a_read_only_mount_after_rules_stopped_still_reads(tmp_path: Path) -> None:
    """k3s mounts rules' folder read-only into the console: once rules closed cleanly there is no -wal/-shm,
    and SQLite cannot make the -shm a WAL database needs (it answered "unable to open database file")."""
    import subprocess

    source, mounted = tmp_path / "rules", tmp_path / "mounted"
    source.mkdir()
    mounted.mkdir()
    db, writer = open_writer(source / "rules.sqlite")
    cross(writer, T0)
    writer.flush(T0 + 2 * MINUTE)
    db.close()
    assert not (source / "rules.sqlite-wal").exists()
    subprocess.run(["mount", "--bind", str(source), str(mounted)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mounted)], check=True)
        points = SeriesReader(mounted / "rules.sqlite").series("cam", "door", "person", "in", T0, T0 + HOUR, 3600)
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    assert values(points) == [(0, 1)]

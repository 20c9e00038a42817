"""analytics: what the counts over time cost the rules service, in CPU per frame and in disk per day.

CPU: the rules service (its ``handle``: tracker, rules, events into the outbox; no bus) over synthetic
detections of 4 cameras, each with 30 objects walking about and 2 lines, a zone, a dwell and a crowd
rule, with ``analytics.enabled`` on (its flushes every 10 s of frame time included) and off; the sides
alternate, back to back in each round, and ``ratio`` is the median of the rounds' on / off. Goal: < 1.05.
``series_cpu_share`` measures the same from inside: the share of the CPU spent in the series' own calls.

Disk: one camera's day written through ``SeriesWriter`` as rules would (2 lines, 1 zone, 1 dwell rule,
1 crowd rule, one label; a crossing every few seconds, an occupancy and crowd sample a second, dwell
times, a heatmap of 30 objects a second; a flush a minute), then the file's size, its size once the
day is past ``minute_days`` (hours, days, a daily heatmap), and what a camera's kept state comes to
(``minute_days`` of minutes and hourly heatmaps, ``retention_days`` of the rest).
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks._tracking import moving_objects
from common.analytics import SeriesReader, SeriesWriter
from common.config import AnalyticsConfig, load_config
from contracts import Detections, FrameRef
from services.rules.service import RulesService

TITLE = "rules CPU per frame with counts over time / without (4 cameras, 30 objects each); DB size per camera-day"
CAMERAS = 4
OBJECTS = 30
FPS = 10
FLUSH_EVERY_S = 10  # the rules service's FLUSH_INTERVAL_S
T0_S = 1_795_392_000  # 2026-11-23 00:00 UTC
RULES = {
    "upper": {"type": "line", "line": [[0.0, 0.35], [1.0, 0.35]], "cooldown_s": 0},
    "lower": {"type": "line", "line": [[0.0, 0.65], [1.0, 0.65]], "cooldown_s": 0},
    "floor": {"type": "zone", "polygon": [[0.0, 0.5], [1.0, 0.5], [1.0, 1.0], [0.0, 1.0]], "cooldown_s": 0},
    "linger": {"type": "dwell", "zone": "floor", "seconds": 5},
    "crowded": {"type": "crowd", "zone": "floor", "min_count": 10, "seconds": 2},
}


def run(quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    frames = 300 if quick else 1200  # per camera, at 10 fps
    rounds = 3 if quick else 5
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-analytics-") as folder:
        best, ratios, share = _cpu_per_frame(Path(folder), frames, rounds)
        figures["cpu_ms_per_frame_off"] = best[False] * 1e3
        figures["cpu_ms_per_frame_on"] = best[True] * 1e3
        figures["ratio"] = float(np.median(ratios))
        figures["ratio_of_best"] = best[True] / best[False]
        figures["series_cpu_share"] = share
        figures.update(_day_on_disk(Path(folder) / "day.sqlite", samples_per_s=1 if quick else 3))
    return figures


def _site(folder: Path, enabled: bool) -> Path:
    cameras = {f"cam{i}": {"url": f"rtsp://camera-{i}/stream", "rules": RULES} for i in range(CAMERAS)}
    site: dict[str, Any] = {
        "site": {"name": "bench", "state_dir": str(folder / f"state-{enabled}"), "shm_dir": str(folder / "shm")},
        "logging": {"level": "warning"},
        "cameras": cameras,
        "analytics": {"enabled": enabled},
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"site-{enabled}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path


def _detections(frames: int) -> list[list[Detections]]:
    """Per frame, one Detections per camera (each camera its own walkers)."""
    scenes = [moving_objects(count=OBJECTS, frames=frames, fps=FPS, seed=seed) for seed in range(CAMERAS)]
    result = []
    for index in range(frames):
        at_ns = int(index / FPS * 1e9)
        row = []
        for camera, scene in enumerate(scenes):
            frame = scene.frames[index]
            ref = FrameRef(
                camera=f"cam{camera}", seq=index + 1, capture_ns=T0_S * 10**9 + at_ns, monotonic_ns=at_ns + 1,
                segment="edgesight.bench.cam", slot=0, generation=2, width=1280, height=720, stride=3840,
            )  # fmt: skip
            boxes = np.clip(frame.boxes, 0, 1).astype("<f4")
            row.append(Detections.from_arrays(ref, "m", boxes, frame.class_ids, frame.scores, labels={0: "person"}))
        result.append(row)
    return result


def _cpu_per_frame(folder: Path, frames: int, rounds: int) -> tuple[dict[bool, float], list[float], float]:
    """CPU seconds per camera-frame through ``RulesService.handle``, analytics on and off: the best of
    ``rounds`` per side, each round's on / off (the two sides of a round ran back to back, under the same
    load from elsewhere), and, measured apart, the share of the "on" side's CPU spent in the series'
    own code (the recorder's frame and flush; a crossing's extra upsert and dwell's visits are not in it)."""
    detections = _detections(frames)
    best = {True: float("inf"), False: float("inf")}
    ratios = []
    for round_ in range(rounds):
        seconds = {}
        for enabled in (False, True) if round_ % 2 else (True, False):
            service = RulesService(load_config(_site(folder / f"round{round_}", enabled)))
            seconds[enabled] = asyncio.run(_drive(service, detections))
            service.outbox.close()
            service.store.close()
            best[enabled] = min(best[enabled], seconds[enabled] / (frames * CAMERAS))
        ratios.append(seconds[True] / seconds[False])
        print(f"  round {round_ + 1}: {seconds[False]:.2f} s CPU off, {seconds[True]:.2f} on", flush=True)
    service = RulesService(load_config(_site(folder / "share", True)))
    inside = _time_series_calls(service)
    total = asyncio.run(_drive(service, detections))
    service.outbox.close()
    service.store.close()
    return best, ratios, inside[0] / total


def _time_series_calls(service: RulesService) -> list[float]:
    """Wraps the service's recorder so that the CPU its calls take adds up in the list returned."""
    inside = [0.0]
    recorder = service.series
    for name in ("frame", "flush"):
        call = getattr(recorder, name)

        def timed(*args: Any, _call: Any = call) -> None:
            started = time.process_time()
            _call(*args)
            inside[0] += time.process_time() - started

        setattr(recorder, name, timed)
    return inside


async def _drive(service: RulesService, detections: list[list[Detections]]) -> float:
    flush_every = FLUSH_EVERY_S * FPS
    started = time.process_time()
    for index, row in enumerate(detections):
        for message in row:
            await service.handle(message)
        if index % flush_every == flush_every - 1:
            service.series.flush(row[0].frame.capture_ns)
    service.series.flush(detections[-1][0].frame.capture_ns)
    return time.process_time() - started


def _day_on_disk(path: Path, samples_per_s: int) -> dict[str, float]:
    """One camera's day of series, written as rules writes them; sizes in MB."""
    config = AnalyticsConfig()
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    writer = SeriesWriter(db, config)
    rng = random.Random(7)
    walkers = np.random.default_rng(7).uniform(0, 1, (OBJECTS, 2))
    flush_s = []
    for minute in range(1440):
        start_ns = (T0_S + minute * 60) * 10**9
        with db:
            for second in rng.sample(range(60), 12):  # a crossing every 5 s, both lines, both ways
                writer.crossing("cam", rng.choice(("upper", "lower")), "person", rng.choice(("in", "out")),
                                start_ns + second * 10**9)  # fmt: skip
        for tick in range(60 * samples_per_s):
            at_ns = start_ns + tick * 10**9 // samples_per_s
            writer.occupancy("cam", "floor", "person", rng.randint(0, 12), at_ns)
            writer.crowd("cam", "crowded", rng.randint(0, 12), at_ns)
            walkers[:] = np.clip(
                walkers + np.random.default_rng(minute * 60 + tick).normal(0, 0.01, walkers.shape), 0, 1
            )
            for x, y in walkers:
                writer.heat("cam", "person", float(x), float(y), at_ns)
        for _ in range(4):
            writer.dwell("cam", "linger", "person", rng.expovariate(1 / 40), start_ns + 30 * 10**9)
        started = time.perf_counter()
        writer.flush(start_ns + 60 * 10**9)
        flush_s.append(time.perf_counter() - started)
    reader_started = time.perf_counter()
    SeriesReader(path).series("cam", "upper", "person", "in", T0_S * 10**9, (T0_S + 86400) * 10**9, 900)
    reader_ms = (time.perf_counter() - reader_started) * 1e3
    empty = sqlite3.connect(path.with_name("empty.sqlite"))
    SeriesWriter(empty, config)
    schema_mb = _size_mb(empty)  # the tables' and indexes' first pages: there whatever is kept
    empty.close()
    day_mb = _size_mb(db) - schema_mb
    writer.flush((T0_S + (config.minute_days + 2) * 86400) * 10**9)  # as kept once its minutes are gone
    later_mb = _size_mb(db) - schema_mb
    (heat_day_bytes,) = db.execute("SELECT coalesce(sum(length(grid)), 0) FROM series_heat_day").fetchone()
    db.close()
    fine_mb = day_mb - later_mb + heat_day_bytes / 2**20  # minutes and hourly heatmaps
    return {
        "db_mb_per_camera_day": day_mb,
        "db_mb_per_camera_day_after_minute_days": later_mb,  # hours, days, the day's heatmap
        "db_kept_mb_per_camera": fine_mb * config.minute_days + later_mb * config.retention_days,
        "flush_ms_p50": float(np.median(flush_s) * 1e3),
        "flush_ms_max": max(flush_s) * 1e3,
        "read_day_900s_ms": reader_ms,
    }


def _size_mb(db: sqlite3.Connection) -> float:
    """The file's size once compacted: what the rows take, not the free pages a day's churn left."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("VACUUM")
    pages = db.execute("PRAGMA page_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
    return float(pages) / 2**20

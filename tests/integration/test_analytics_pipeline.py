"""Counts over time through the real services: the shared clip looping as a camera -> ingest -> inference
(YOLOX-Nano) -> rules with two line rules and a zone; rules is SIGKILLed mid-run and started again. The
series must hold every crossing ``events.jsonl`` holds, in the same 15-minute buckets, none twice; the
running totals, the hour and day rollups and Prometheus' counter must say the same."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from common.analytics import SeriesReader
from tests.integration.conftest import Services
from tests.support import deadline, http_get, scaled

pytestmark = pytest.mark.slow

LINES = {"y50": [[0.0, 0.5], [1.0, 0.5]], "y70": [[0.0, 0.7], [1.0, 0.7]]}  # people cross both ways (test_rules_video)
CENTRE = [[0.2, 0.4], [0.8, 0.4], [0.8, 0.95], [0.2, 0.95]]
BUCKET_NS = 900 * 10**9


def events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def crossings(path: Path) -> list[dict[str, Any]]:
    return [event for event in events(path) if event["event_type"] == "line_cross"]


def wait_crossings(path: Path, at_least: int, site: Services, seconds: float = 120) -> int:
    end = deadline(seconds)
    while (count := len(crossings(path))) < at_least:
        assert time.monotonic() < end, f"{count} crossings of {at_least}:\n{site.log('rules')[-2000:]}"
        time.sleep(0.2)
    return count


def wait_quiet(path: Path, quiet_s: float, seconds: float) -> None:
    """Until ``path`` has not grown for ``quiet_s`` (or ``seconds`` passed): a crossing is then not
    between its running total's commit and its line in events.jsonl."""
    end = time.monotonic() + seconds
    size, since = -1, time.monotonic()
    while time.monotonic() < end:
        now = path.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.05)


def counter(site: Services, line: str, direction: str) -> float:
    _, body = http_get(f"{site.base('rules')}/metrics")
    pattern = (
        rf'edgesight_line_crossings_total\{{camera="hall",direction="{direction}",label="person",line="{line}"\}} (\S+)'
    )
    found = re.search(pattern, body)
    return float(found.group(1)) if found else 0.0


def test_series_hold_every_crossing_once_across_a_sigkill(
    shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    rules: dict[str, Any] = {
        name: {"type": "line", "line": line, "classes": ["person"]} for name, line in LINES.items()
    }
    rules["centre"] = {"type": "zone", "polygon": CENTRE, "classes": ["person"]}
    camera = {"url": str(shared_dir / "media" / "people.mp4"), "fps": 8, "loop": True, "rules": rules}
    site = services(
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "score_threshold": 0.1}},
            "cameras": {"hall": camera},
            "events": {"jsonl": "events.jsonl"},
        }
    )
    state = Path(site.config.site.state_dir)
    jsonl = state / "events.jsonl"
    for name in ("broker", "inference", "rules", "ingest"):  # consumers first: no frame goes unheard
        site.start(name)
    wait_crossings(jsonl, 8, site)
    wait_quiet(jsonl, 0.4, scaled(20))
    site.processes["rules"].kill()  # SIGKILL: no flush, no goodbye
    site.processes["rules"].wait()
    before_kill = len(crossings(jsonl))
    time.sleep(scaled(1))
    site.start("rules")
    wait_crossings(jsonl, before_kill + 8, site)
    site.processes["ingest"].terminate()
    site.processes["ingest"].wait(timeout=scaled(20))
    wait_quiet(jsonl, scaled(3), scaled(30))  # the last frames' detections and events drain
    counted = crossings(jsonl)
    expected = Counter((e["rule"], e["object"]["label"], e["attributes"]["direction"]) for e in counted)
    print(f"crossings: {before_kill} before the SIGKILL, {len(counted)} in all: {dict(expected)}")
    for (rule, _label, direction), count in expected.items():  # the counter continued from the stored totals
        assert counter(site, rule, direction) == count, (rule, direction, count)
    site.processes["rules"].terminate()  # a clean stop flushes what is pending
    assert site.processes["rules"].wait(timeout=scaled(20)) == 0

    assert len({e["id"] for e in counted}) == len(counted), "an event written twice"
    assert {rule for rule, _, _ in expected} == set(LINES) and {d for _, _, d in expected} == {"in", "out"}
    reader = SeriesReader(state / "rules.sqlite")
    start_ns = min(e["ts_ns"] for e in counted) - 3600 * 10**9
    end_ns = max(e["ts_ns"] for e in counted) + 3600 * 10**9
    for (rule, label, direction), count in expected.items():
        by_bucket = Counter(
            e["ts_ns"] // BUCKET_NS * BUCKET_NS
            for e in counted
            if (e["rule"], e["object"]["label"], e["attributes"]["direction"]) == (rule, label, direction)
        )
        quarter_hours = reader.series("hall", rule, label, direction, start_ns, end_ns, 900)
        assert {p.start_ns: p.value for p in quarter_hours} == by_bucket, (rule, direction)
        for bucket_s in (3600, 86400):
            points = reader.series("hall", rule, label, direction, start_ns, end_ns, bucket_s)
            assert sum(p.value for p in points) == count, (rule, direction, bucket_s)

    with sqlite3.connect(f"file:{state / 'rules.sqlite'}?mode=ro", uri=True) as db:
        totals = {
            (r, label, key): value for r, label, key, value in db.execute("SELECT rule, label, key, value FROM counts")
        }
        assert totals == dict(expected)
        minutes = dict(
            ((s, f), v) for s, f, v in db.execute("SELECT series, field, SUM(value) FROM series_minute GROUP BY 1, 2")
        )
        for table in ("series_hour", "series_day"):  # rolled up once each, whatever the kill interrupted
            rolled = dict(
                ((s, f), v) for s, f, v in db.execute(f"SELECT series, field, SUM(value) FROM {table} GROUP BY 1, 2")
            )
            line_fields = {key: value for key, value in rolled.items() if key[1] in (0, 1)}
            assert line_fields == {key: value for key, value in minutes.items() if key[1] in (0, 1)}, table

    peaks = reader.series("hall", "centre", "person", "occupancy_max", start_ns, end_ns, 900)
    means = reader.series("hall", "centre", "person", "occupancy_mean", start_ns, end_ns, 900)
    assert peaks and max(p.value for p in peaks) >= 1 and all(0 < p.value <= max(q.value for q in peaks) for p in means)
    heat = reader.heatmap("hall", "person", start_ns, end_ns)
    assert heat.sum() > 0 and heat[: heat.shape[0] // 4].sum() < heat[heat.shape[0] // 2 :].sum()  # feet, low

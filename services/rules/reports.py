"""Interval reports: every ``analytics.report_interval_s``, one ``count_report`` event per rule.

Intervals are aligned to the UTC epoch (900 s: :00, :15, :30, :45), so every site reports the same
quarter hours. A report is made from the series the rules service keeps (``common.analytics``) once
its interval has ended (GRACE_S after), and goes the way of every event: outbox, uplink, every sink. The end of the
last interval reported for each rule is kept in ``rules.sqlite`` (``report_marks``, on the count
store's connection), written right after the report is in the outbox and before anything else can
run: a restart reports every interval it missed, once, and never one twice. Its id is made from the
rule and the interval's start, so even a report made again is the same event to the uplink.

A rule seen for the first time (or again, after it was gone from the site file) starts at the interval
it was first seen in: a new site does not backfill, and a site whose rules were stopped for longer than
``analytics.minute_days`` (whose minute rows, the only ones fine enough for an interval, are gone) skips
the intervals it can no longer report.

    >>> interval_bounds(1_764_432_123, 900)
    (1764432000, 1764432900)
    >>> report_id("dock", "door", 1_764_432_000)
    'report.dock.door.1764432000'
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from common.analytics import SeriesReader
from common.config import CameraConfig
from common.config.analytics import AnalyticsConfig
from contracts import Event
from contracts.messages import LABEL_PATTERN, MAX_MAP_ENTRIES
from services.rules.counts import CountStore

__all__ = [
    "REPORTED_KINDS",
    "Configured",
    "IntervalReporter",
    "ReportedRule",
    "interval_bounds",
    "report_id",
    "reported_rules",
]

log = logging.getLogger(__name__)

REPORTED_KINDS = ("line", "zone", "dwell", "crowd")  # the kinds that keep series; ppe and presence have none
CHECK_S = 5.0  # how often the reporter looks for an interval that ended
GRACE_S = 10  # an interval is reported this long after its end: frames captured before it are counted by then
MAX_PER_CHECK = 50  # reports made in one look (about 2.5 ms each, on the loop): a catch-up goes on at the next
_ID_MAX = 128  # contracts' Id: at most 128 characters
_NAME_MAX = 64  # contracts' Name (an attribute's): at most 64
_NS = 1_000_000_000
_LABEL = re.compile(LABEL_PATTERN)
_PER_LABEL = {"line": 4, "zone": 2, "dwell": 3, "crowd": 1}  # attributes a label adds to a report


@dataclass(frozen=True)
class ReportedRule:
    """A rule that gets reports: its camera, name, kind and the labels its site file names."""

    camera: str
    rule: str
    kind: str
    classes: tuple[str, ...] = ()


class Configured(Protocol):
    """A camera as the rules service holds it: its section of the site file, replaced by a reload."""

    config: CameraConfig


def reported_rules(cameras: Mapping[str, Configured]) -> list[ReportedRule]:
    """The rules of ``cameras`` whose kind keeps series, in site-file order."""
    return [
        ReportedRule(camera, name, rule.type, tuple(rule.classes))
        for camera, held in cameras.items()
        for name, rule in held.config.rules.items()
        if rule.type in REPORTED_KINDS
    ]


def interval_bounds(epoch_s: int, interval_s: int) -> tuple[int, int]:
    """The UTC-epoch-aligned interval (start, end) in seconds that holds ``epoch_s``."""
    start = epoch_s - epoch_s % interval_s
    return start, start + interval_s


def report_id(camera: str, rule: str, start_s: int) -> str:
    """``report.<camera>.<rule>.<interval start>``. A name with a dot could make two rules' ids alike
    (camera ``a.b`` rule ``c``, camera ``a`` rule ``b.c``) and two long names break the id's length:
    then the pair is a hash, which has one part fewer and so never equals a plain id.

    >>> report_id("dock.north", "door", 1_764_432_000)
    'report.368e665e7f64add28145.1764432000'
    """
    plain = f"report.{camera}.{rule}.{start_s}"
    if "." not in camera and "." not in rule and len(plain) <= _ID_MAX:
        return plain
    digest = hashlib.sha256(f"{camera}/{rule}".encode()).hexdigest()[:20]
    return f"report.{digest}.{start_s}"


def attribute_name(label: str, figure: str) -> str:
    """``<label>.<figure>``, a name (no spaces, at most 64 characters): spaces become ``_`` and a label
    too long is cut and told apart from others cut alike by a hash.

    >>> attribute_name("traffic light", "in")
    'traffic_light.in'
    >>> len(attribute_name("x" * 64, "total_out"))
    64
    """
    name = label.replace(" ", "_")
    if len(name) + 1 + len(figure) > _NAME_MAX:
        digest = hashlib.sha256(label.encode()).hexdigest()[:8]
        name = f"{name[: _NAME_MAX - len(figure) - 10]}-{digest}"
    return f"{name}.{figure}"


class IntervalReporter:
    """Makes the count reports of the intervals that ended, and remembers which it made."""

    def __init__(self, store: CountStore, db: sqlite3.Connection, path: Path, site: str, config: AnalyticsConfig):
        self.store = store  # the running totals: a line's total at an interval's end is derived from them
        self.db = db  # the count store's connection: the marks live beside the counts and series
        self.site = site
        self.interval_s = config.report_interval_s
        self.minute_days = config.minute_days
        self.reader = SeriesReader(path)  # its own read-only connection per call; sees what the writer committed
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS report_marks (camera TEXT, rule TEXT, reported_until INTEGER NOT NULL,"
            " PRIMARY KEY (camera, rule))"
        )
        self.db.commit()
        self.marks: dict[tuple[str, str], int] = {
            (camera, rule): until for camera, rule, until in self.db.execute("SELECT * FROM report_marks")
        }

    def due(self, rules: Iterable[ReportedRule], now_ns: int) -> list[Event]:
        """The reports of every interval that ended by ``now_ns`` and was not reported yet (at most
        MAX_PER_CHECK; the oldest first per rule). Call :meth:`reported` for each once it is stored."""
        now_s = now_ns // _NS
        oldest = interval_bounds(now_s - self.minute_days * 86400, self.interval_s)[1]
        reports: list[Event] = []
        labels: dict[tuple[str, str], set[str]] | None = None
        rules = list(rules)
        self._forget_all_but({(rule.camera, rule.rule) for rule in rules})
        for rule in rules:
            since = self._since(rule, now_s, oldest)
            while len(reports) < MAX_PER_CHECK:
                start, end = since, interval_bounds(since, self.interval_s)[1]  # a changed interval realigns here
                if end + GRACE_S > now_s:
                    break
                if labels is None:  # one look at the catalog per check, only when something is due
                    labels = self._labels_seen()
                seen = labels.get((rule.camera, rule.rule), set())
                reports.append(self._report(rule, seen, start, end, now_ns))
                since = end
        return reports

    def reported(self, event: Event) -> None:
        """Marks ``event``'s interval reported (committed when this returns)."""
        assert event.end_ns is not None
        until = event.end_ns // _NS
        self.marks[(event.camera, event.rule)] = until
        with self.db:
            self.db.execute(
                "INSERT INTO report_marks VALUES (?, ?, ?)"
                " ON CONFLICT DO UPDATE SET reported_until = excluded.reported_until",
                (event.camera, event.rule, until),
            )

    async def run(
        self,
        cameras: Mapping[str, Configured],
        flush: Callable[[int], None],
        deliver: Callable[[Event], Awaitable[None]],
    ) -> None:
        """Every CHECK_S: writes the finished minutes (``flush``), then hands each due report of the
        rules of ``cameras`` (read each time: a reload changes them) to ``deliver``, which stores it
        and calls :meth:`reported` before anything else runs."""
        while True:
            now_ns = time.time_ns()
            try:
                flush(now_ns)
                for event in self.due(reported_rules(cameras), now_ns):
                    await deliver(event)
            except sqlite3.Error as exc:  # a full disk must not stop the rules: what is not marked is made again
                log.error("count reports not made; tried again at the next check", extra={"error": str(exc)})
            await asyncio.sleep(CHECK_S)

    def _forget_all_but(self, kept: set[tuple[str, str]]) -> None:
        """Forgets the marks of rules gone from the site file: one added again (or its camera enabled
        again) starts afresh, rather than reporting every interval it did not exist in."""
        gone = [key for key in self.marks if key not in kept]
        if not gone:
            return
        with self.db:
            self.db.executemany("DELETE FROM report_marks WHERE camera = ? AND rule = ?", gone)
        for key in gone:
            del self.marks[key]

    def _since(self, rule: ReportedRule, now_s: int, oldest: int) -> int:
        """Where ``rule``'s next report starts: after its last one, at the interval it was first seen
        in (marked now, so a restart goes on from there), never before ``oldest``."""
        key = (rule.camera, rule.rule)
        since = self.marks.get(key)
        if since is None:
            since = interval_bounds(now_s, self.interval_s)[0]
            self.marks[key] = since
            with self.db:
                self.db.execute("INSERT OR IGNORE INTO report_marks VALUES (?, ?, ?)", (*key, since))
        if since < oldest:
            log.warning(
                "intervals older than analytics.minute_days not reported",
                extra={"camera": rule.camera, "rule": rule.rule, "from": since, "to": oldest},
            )
            since = oldest
        return since

    def _labels_seen(self) -> dict[tuple[str, str], set[str]]:
        seen: dict[tuple[str, str], set[str]] = {}
        for key in self.reader.catalog():
            seen.setdefault((key.camera, key.rule), set()).add(key.label)
        return seen

    def _report(self, rule: ReportedRule, seen: set[str], start_s: int, end_s: int, now_ns: int) -> Event:
        start_ns, end_ns = start_s * _NS, end_s * _NS
        counts: dict[str, int] = {}
        attributes: dict[str, str | int | float | bool | None] = {"kind": rule.kind, "interval_s": end_s - start_s}
        totals = self.store.of_rule(rule.camera, rule.rule) if rule.kind == "line" else {}
        # a crowd's count is of every class named; a class no detection can have (not a label) is left out
        named = {c for c in rule.classes if _LABEL.fullmatch(c)} if rule.kind != "crowd" else set()
        labels = sorted(named | seen | set(totals))
        room = (MAX_MAP_ENTRIES - len(attributes)) // _PER_LABEL[rule.kind]
        if len(labels) > room:
            log.warning("too many labels for one report; the first ones kept", extra={"rule": rule.rule})
            labels = labels[:room]
        for label in labels:
            values = self._values(rule, label, start_ns, end_ns, now_ns, totals.get(label, {}))
            for figure, value in values.items():  # a crowd's one series is of every label: its figure alone
                attributes[figure if rule.kind == "crowd" else attribute_name(label, figure)] = value
            if rule.kind == "line":
                counts[label] = int(values["in"]) + int(values["out"])
        return Event(
            id=report_id(rule.camera, rule.rule, start_s),
            event_type="count_report",
            site=self.site,
            camera=rule.camera,
            rule=rule.rule,
            ts_ns=end_ns,  # the report's moment is its interval's end: made again, it is the same event
            start_ns=start_ns,
            end_ns=end_ns,
            counts=counts,
            attributes=attributes,
        )

    def _values(
        self, rule: ReportedRule, label: str, start_ns: int, end_ns: int, now_ns: int, total: dict[str, int]
    ) -> dict[str, float | int]:
        """One label's figures for the interval; a zone's or crowd's are left out where no frame was seen."""

        def points(metric: str, start: int = start_ns, end: int = end_ns) -> list[float]:
            return [p.value for p in self.reader.series(rule.camera, rule.rule, label, metric, start, end, bucket)]

        bucket = self.interval_s  # one point for the interval; a multiple of a minute, the finest rows kept
        values: dict[str, float | int] = {}
        if rule.kind == "line":
            for direction in ("in", "out"):
                values[direction] = int(sum(points(direction)))
                since = int(sum(points(direction, end_ns, max(end_ns, now_ns))))  # counted after the interval
                values[f"total_{direction}"] = max(0, total.get(direction, 0) - since)
        elif rule.kind == "zone":
            mean, most = points("occupancy_mean"), points("occupancy_max")
            if mean:
                values["occupancy_mean"] = round(math.fsum(mean) / len(mean), 3)
                values["occupancy_max"] = int(max(most, default=0))
        elif rule.kind == "dwell":
            values["dwell_count"] = int(sum(points("dwell_count")))
            if values["dwell_count"]:
                values["dwell_p50_s"] = round(max(points("dwell_p50_s"), default=0.0), 3)
                values["dwell_p90_s"] = round(max(points("dwell_p90_s"), default=0.0), 3)
        elif rule.kind == "crowd":
            most = points("crowd_max")
            if most:
                values["crowd_max"] = int(max(most))
        return values

"""Interval reports (services/rules/reports.py) on a real rules.sqlite: alignment, stable ids, a restart
that missed intervals, no backfill, and figures that match the crossings, samples and dwells fed in;
and the CloudWatch metric data a report becomes."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.analytics import SeriesWriter
from common.config.analytics import AnalyticsConfig
from common.config.uplink import CloudWatchSink
from contracts import Event, decode, encode
from contracts.messages import ID_PATTERN
from services.rules.outputs import SqliteCountStore
from services.rules.reports import GRACE_S, MAX_PER_CHECK, IntervalReporter, ReportedRule, interval_bounds, report_id
from services.uplink.sinks.base import Receipt
from services.uplink.sinks.cloudwatch import CloudWatchReporter, report_metric_data
from services.uplink.spool import Spooled

NS = 10**9
T = 1_764_432_000  # a multiple of 3600 (and of 900): the start of an hour
DOOR = ReportedRule("dock", "door", "line", ("person",))
BAY = ReportedRule("dock", "bay", "zone")
WAIT = ReportedRule("dock", "wait", "dwell")
CROWD = ReportedRule("dock", "crowd", "crowd", ("person",))
RULES = [DOOR, BAY, WAIT, CROWD]


def start_of(report: Event) -> int:
    assert report.start_ns is not None
    return report.start_ns // NS


class Site:
    """rules.sqlite as the rules service has it: running totals, series and report marks on one connection."""

    def __init__(self, path: Path, **analytics: int) -> None:
        self.path = path
        self.config = AnalyticsConfig(**analytics)
        self.store = SqliteCountStore(path)
        self.series = SeriesWriter(self.store.db, self.config)
        self.reporter = IntervalReporter(self.store, self.store.db, path, "test", self.config)

    def cross(self, rule: str, label: str, direction: str, at_s: float) -> None:
        """A crossing as a line rule records it: the series and the running total in one transaction."""
        self.series.crossing("dock", rule, label, direction, int(at_s * NS))
        self.store.add("dock", rule, label, direction)  # commits both

    def due(self, at_s: float, rules: list[ReportedRule] | None = None) -> list[Event]:
        self.series.flush(int(at_s * NS))
        return self.reporter.due(RULES if rules is None else rules, int(at_s * NS))

    def report_all(self, at_s: float, rules: list[ReportedRule] | None = None) -> list[Event]:
        """What the service does each check: every due report stored, then marked."""
        reports = self.due(at_s, rules)
        for report in reports:
            self.reporter.reported(report)
        return reports

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    opened = Site(tmp_path / "rules.sqlite")
    yield opened
    opened.close()


@pytest.mark.parametrize(
    ("epoch_s", "interval_s", "expected"),
    [
        (T, 900, (T, T + 900)),  # on a boundary: the interval that starts there
        (T + 899, 900, (T, T + 900)),
        (T + 900, 900, (T + 900, T + 1800)),
        (T + 61, 60, (T + 60, T + 120)),
        (T + 1234, 3600, (T, T + 3600)),
        (T + 5, 86400, (T - T % 86400, T - T % 86400 + 86400)),  # days are UTC days
    ],
)
def test_intervals_are_aligned_to_the_utc_epoch(epoch_s: int, interval_s: int, expected: tuple[int, int]) -> None:
    assert interval_bounds(epoch_s, interval_s) == expected
    start = dt.datetime.fromtimestamp(expected[0], dt.timezone.utc)
    if interval_s == 900:
        assert start.minute in (0, 15, 30, 45) and start.second == 0


def test_ids_are_plain_where_they_can_be_and_never_alike() -> None:
    assert report_id("dock", "door", T) == f"report.dock.door.{T}"
    dotted = {report_id("a.b", "c", T), report_id("a", "b.c", T), report_id("a", "b", T)}
    assert len(dotted) == 3  # the names with a dot do not make the same id
    long = report_id("c" * 64, "r" * 64, T)
    assert len(long) <= 128 and re.match(ID_PATTERN, long)
    assert long == report_id("c" * 64, "r" * 64, T)  # stable


def test_figures_match_what_was_fed_in(site: Site) -> None:
    site.cross("door", "person", "in", T - 86400)  # a day before the rules ever reported: in the total only
    assert site.due(T + 10) == []  # first seen mid-interval: nothing has ended yet
    for at in (T + 60, T + 61, T + 899.5):
        site.cross("door", "person", "in", at)
    site.cross("door", "person", "out", T + 300)
    site.cross("door", "car", "in", T + 120)
    for count, at in ((2, T + 10), (4, T + 20), (0, T + 400)):
        site.series.occupancy("dock", "bay", "person", count, at * NS)
    for seconds, at in ((4.0, T + 30), (8.0, T + 40), (100.0, T + 500)):
        site.series.dwell("dock", "wait", "person", seconds, at * NS)
    for count, at in ((3, T + 5), (7, T + 65), (5, T + 700)):
        site.series.crowd("dock", "crowd", count, at * NS)
    assert site.due(T + 900 + GRACE_S - 1) == []  # ended, but frames captured before its end may still come
    site.cross("door", "person", "in", T + 905)  # the next interval's: not in this report, not in its total
    reports = {report.rule: report for report in site.due(T + 900 + GRACE_S)}

    door = reports["door"]
    assert (door.id, door.event_type, door.start_ns, door.end_ns) == (
        f"report.dock.door.{T}",
        "count_report",
        T * NS,
        (T + 900) * NS,
    )
    assert door.counts == {"person": 4, "car": 1}
    assert door.attributes == {
        "kind": "line",
        "interval_s": 900,
        "person.in": 3,
        "person.out": 1,
        "person.total_in": 4,  # the one a day before, and the three in the interval
        "person.total_out": 1,
        "car.in": 1,
        "car.out": 0,
        "car.total_in": 1,
        "car.total_out": 0,
    }
    assert reports["bay"].attributes == {
        "kind": "zone",
        "interval_s": 900,
        "person.occupancy_mean": 2.0,
        "person.occupancy_max": 4,
    }
    wait = reports["wait"].attributes
    assert wait["person.dwell_count"] == 3
    p50, p90 = wait["person.dwell_p50_s"], wait["person.dwell_p90_s"]
    assert isinstance(p50, float) and isinstance(p90, float)
    assert 5 < p50 <= 10 and 60 < p90 <= 120  # in their bins
    assert reports["crowd"].attributes == {"kind": "crowd", "interval_s": 900, "crowd_max": 7}
    for report in reports.values():
        assert decode(encode(report), Event) == report  # within the contract: the uplink takes it
        assert report.object is None and report.snapshot is None and report.frame is None


def test_an_interval_without_frames_has_no_occupancy_and_zero_crossings(site: Site) -> None:
    site.due(T + 10)
    site.series.occupancy("dock", "bay", "person", 3, (T + 10) * NS)
    site.cross("door", "person", "in", T + 20)
    site.report_all(T + 900 + GRACE_S)
    following = {report.rule: report.attributes for report in site.report_all(T + 1800 + GRACE_S)}
    assert following["bay"] == {"kind": "zone", "interval_s": 900}  # no frame seen: not known, not 0
    assert following["door"]["person.in"] == 0 and following["door"]["person.total_in"] == 1
    assert following["crowd"] == {"kind": "crowd", "interval_s": 900}


def test_a_restart_reports_every_missed_interval_once(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite"
    first = Site(path)
    first.due(T + 10)
    first.cross("door", "person", "in", T + 100)
    assert [r.id for r in first.report_all(T + 900 + GRACE_S) if r.rule == "door"] == [f"report.dock.door.{T}"]
    first.cross("door", "person", "in", T + 1000)  # counted, then the service stops for three intervals
    first.close()

    second = Site(path)
    missed = second.due(T + 3600 + GRACE_S)
    starts = [T + 900, T + 1800, T + 2700]
    assert [r.id for r in missed if r.rule == "door"] == [f"report.dock.door.{s}" for s in starts]
    assert len(missed) == 3 * len(RULES)
    assert [r.attributes["person.in"] for r in missed if r.rule == "door"] == [1, 0, 0]
    assert (
        second.due(T + 3600 + GRACE_S) == missed
    )  # not stored yet (killed before the outbox had them): the same again
    for report in missed:
        second.reporter.reported(report)
    assert second.due(T + 3600 + GRACE_S) == []
    second.close()

    third = Site(path)  # and once stored, a restart never makes them again
    assert third.due(T + 3600 + GRACE_S) == []
    assert [r.id for r in third.due(T + 4500 + GRACE_S) if r.rule == "door"] == [f"report.dock.door.{T + 3600}"]
    third.close()


def test_a_restart_before_the_first_report_keeps_where_the_rule_began(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite"
    first = Site(path)
    first.due(T + 10)  # first seen; stopped before its interval ended
    first.close()
    second = Site(path)
    reports = [r for r in second.due(T + 1800 + GRACE_S) if r.rule == "door"]
    assert [start_of(r) for r in reports] == [T, T + 900]
    second.close()


def test_a_new_site_does_not_backfill(site: Site) -> None:
    for days in (400, 30, 1):  # series older than the rules' reports, even by years
        site.cross("door", "person", "in", T - days * 86400)
    now = T + 7 * 900 + 123
    assert site.due(now) == []  # first seen now: its first interval is the one running
    reports = site.due(T + 8 * 900 + GRACE_S)
    assert {r.start_ns for r in reports} == {(T + 7 * 900) * NS}
    assert len(reports) == len(RULES)


def test_a_rule_removed_and_added_again_starts_afresh(site: Site) -> None:
    site.due(T + 10)
    site.report_all(T + 900 + GRACE_S)
    others = [BAY, WAIT, CROWD]  # the door is gone from the site file for a while
    assert {r.rule for r in site.report_all(T + 1800 + GRACE_S, others)} == {"bay", "wait", "crowd"}
    back = site.report_all(T + 5 * 900 + 10)
    assert "door" not in {r.rule for r in back}  # nothing for the intervals it did not exist in
    assert [start_of(r) for r in site.due(T + 6 * 900 + GRACE_S) if r.rule == "door"] == [T + 5 * 900]


def test_reports_older_than_the_minute_rows_are_skipped(tmp_path: Path) -> None:
    site = Site(tmp_path / "rules.sqlite", minute_days=1, report_interval_s=3600)
    site.due(T + 10)
    now = T + 30 * 86400 + GRACE_S  # stopped for a month: only the last day can still be reported
    reports = site.due(now, [DOOR])
    starts = [start_of(r) for r in reports]
    assert starts == list(range(starts[0], T + 30 * 86400, 3600))
    assert now - 86400 <= starts[0] < now - 86400 + 3600
    site.close()


def test_a_long_catch_up_goes_on_over_several_checks(tmp_path: Path) -> None:
    site = Site(tmp_path / "rules.sqlite", report_interval_s=60)
    site.due(T + 10, [DOOR])
    now = T + 86400 + GRACE_S  # a day of minutes missed
    first = site.report_all(now, [DOOR])
    second = site.report_all(now, [DOOR])
    assert len(first) == len(second) == MAX_PER_CHECK  # the event loop is not held for a day's worth
    assert [start_of(r) for r in first + second] == list(range(T, T + 2 * MAX_PER_CHECK * 60, 60))
    site.close()


def test_a_changed_interval_goes_on_from_the_last_report(tmp_path: Path) -> None:
    path = tmp_path / "rules.sqlite"
    quarter = Site(path)
    quarter.due(T + 10)
    quarter.report_all(T + 900 + GRACE_S)
    quarter.close()
    hourly = Site(path, report_interval_s=3600)
    reports = [r for r in hourly.due(T + 7200 + GRACE_S) if r.rule == "door"]
    assert [(start_of(r), r.attributes["interval_s"]) for r in reports] == [
        (T + 900, 2700),  # the rest of the hour, then whole hours
        (T + 3600, 3600),
    ]
    hourly.close()


def test_awkward_labels_and_classes_stay_within_the_contract(site: Site) -> None:
    rule = ReportedRule("dock", "door", "line", ("traffic light", "no good!", "x" * 64))
    site.due(T + 10, [rule])
    site.cross("door", "traffic light", "in", T + 60)
    (report,) = site.due(T + 900 + GRACE_S, [rule])
    assert report.attributes["traffic_light.in"] == 1
    assert report.counts["traffic light"] == 1 and "no good!" not in report.counts
    assert all(len(name) <= 64 for name in report.attributes)
    assert decode(encode(report), Event) == report


def test_a_report_becomes_cloudwatch_metric_data(site: Site) -> None:
    site.due(T + 10)
    site.cross("door", "person", "in", T + 60)
    site.cross("door", "person", "out", T + 70)
    site.series.occupancy("dock", "bay", "person", 3, (T + 10) * NS)
    reports = {r.rule: r for r in site.due(T + 900 + GRACE_S)}
    door = report_metric_data(reports["door"])
    where = [("Site", "test"), ("Camera", "dock"), ("Rule", "door"), ("Label", "person")]
    assert [(d["MetricName"], d["Value"], [(x["Name"], x["Value"]) for x in d["Dimensions"]]) for d in door] == [
        ("Crossings", 1.0, [*where, ("Direction", "in")]),
        ("Crossings", 1.0, [*where, ("Direction", "out")]),
    ]  # the running totals are not metrics: a Sum over any period would count them again and again
    assert {d["Timestamp"] for d in door} == {dt.datetime.fromtimestamp(T, dt.timezone.utc)}  # the interval's start
    bay = {d["MetricName"]: d["Value"] for d in report_metric_data(reports["bay"])}
    assert bay == {"OccupancyMean": 3.0, "OccupancyMax": 3.0}
    assert report_metric_data(reports["crowd"]) == []


def test_a_report_too_old_for_cloudwatch_metrics_is_confirmed_not_retried_for_ever(site: Site) -> None:
    """PutMetricData refuses data two weeks old: a report that waited that long upstream is confirmed
    without its metric data (nothing is called: the endpoint here answers nobody)."""
    site.due(T + 10)
    site.cross("door", "person", "in", T + 60)
    door = next(r for r in site.due(T + 900 + GRACE_S) if r.rule == "door")
    assert report_metric_data(door)  # it has metric data, and T is long past
    sink = CloudWatchReporter(CloudWatchSink(log_group=None, endpoint_url="http://127.0.0.1:9"), "test")
    receipt = Receipt()
    asyncio.run(sink.deliver([Spooled(seq=7, event=door, s3_key=None)], receipt))
    assert receipt.confirmed == [7] and receipt.rejected == {}

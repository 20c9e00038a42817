"""The fleet at a glance: one row per site from its reported state, for ``edgesight fleet status`` and
the console's fleet page. A site is online while its last report is at most two report intervals old;
``problems`` are short phrases an operator acts on. Reports come off the network: every value is
checked for its type here, and a wrong one reads as absent; numbers are bounded (an interval over a
day reads as a day, a report from the future as one from now, events an hour show at most
``MAX_EVENTS_PER_HOUR``) and every text goes through :func:`common.fleet.untrusted.printable`.

>>> reported = {"site-a": {"schema": 1, "site": "plant-7", "thing": "site-a", "edgesight": "0.9.0",
...     "reported_at": 1000.0, "interval_s": 60.0, "models": {"people": {"version": "2"}},
...     "cameras": {"dock": {"state": "streaming", "fps": 5.0}, "yard": {"state": "stalled", "fps": 0.0}},
...     "events_last_hour": 12}}
>>> row = roster(reported, now=1100.0)[0]
>>> row.online, row.models, row.cameras, row.problems
(True, 'people 2', '1/2', ('camera yard stalled',))
>>> roster(reported, now=1121.0)[0].problems
('offline', 'camera yard stalled')
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.fleet.shapes import MAX_INTERVAL_S, OK_STATES
from common.fleet.untrusted import number, printable

__all__ = ["CLOCK_AHEAD_S", "MAX_EVENTS_PER_HOUR", "SPOOL_PROBLEM_S", "SiteRow", "roster", "span"]

SPOOL_PROBLEM_S = 3600.0  # events waiting this long upstream are a problem
CLOCK_AHEAD_S = 60.0  # a report stamped this far after it was read: the site's clock runs ahead
MAX_EVENTS_PER_HOUR = 10**9  # shown at most (about 280 000 a second; a site's real count is far below)
_CAMERA_PROBLEMS = ("stalled", "backoff")
_SERVICE_FINE = ("ready", "starting")
_APP_PROBLEMS = ("hung", "failed", "restarting")
_JOB_PROBLEMS = ("FAILED", "REJECTED", "TIMED_OUT")
_MAX_PROBLEMS = 12


@dataclasses.dataclass(frozen=True)
class SiteRow:
    site: str
    thing: str
    online: bool
    last_seen_s: float | None  # seconds since its last report; None: never reported
    version: str  # EdgeSight's
    models: str  # "people 2, ppe 1.3"
    cameras: str  # streaming of all: "2/3"
    events_per_hour: int
    problems: tuple[str, ...]
    console_url: str | None = None
    job: str | None = None  # the current job, else the last one with its status: "job-7 SUCCEEDED"


def roster(
    reported_by_thing: Mapping[str, Mapping[str, Any]],
    now: float,
    *,
    expected: Mapping[str, str] | None = None,
) -> list[SiteRow]:
    """A row per thing that reported, and per thing of ``expected`` (thing -> site, as fleet.yaml lists
    them) that never did; sorted by site."""
    rows = [_row(thing, report, now) for thing, report in reported_by_thing.items() if isinstance(report, Mapping)]
    seen = {row.thing for row in rows}
    for thing, site in (expected or {}).items():
        if thing not in seen:
            rows.append(SiteRow(site, thing, False, None, "", "", "", 0, ("never reported",)))
    return sorted(rows, key=lambda row: (row.site, row.thing))


def span(seconds: float) -> str:
    """A duration in the unit an operator reads at a glance.

    >>> span(45), span(400), span(3 * 3600), span(5 * 86400)
    ('45 s', '7 min', '3 h', '5 days')
    """
    for unit, size, above in (("days", 86400, 2 * 86400), ("h", 3600, 2 * 3600), ("min", 60, 120)):
        if seconds >= above:
            return f"{round(seconds / size)} {unit}"
    return f"{round(seconds)} s"


def _row(thing: str, report: Mapping[str, Any], now: float) -> SiteRow:
    reported_at = number(report.get("reported_at"))
    interval = number(report.get("interval_s"))
    interval = None if interval is None else min(interval, MAX_INTERVAL_S)
    last_seen = None if reported_at is None else max(0.0, now - reported_at)  # from the future: now
    ahead = max(number(report.get("clock_ahead_s")) or 0.0, 0.0 if reported_at is None else reported_at - now)
    stopped = report.get("state") == "stopped"  # the site's fleet service said so as it stopped
    heard = last_seen is not None and interval is not None and interval > 0 and last_seen <= 2 * interval
    online = heard and not stopped
    cameras = _map(report, "cameras")
    streaming, total = _counts(report, "cameras", cameras)
    events = number(report.get("events_last_hour")) or 0.0
    return SiteRow(
        site=printable(report.get("site"), 64) or thing,
        thing=thing,
        online=online,
        last_seen_s=last_seen,
        version=printable(report.get("edgesight")) or "",
        models=", ".join(
            f"{name} {printable(entry.get('version')) or '?'}" for name, entry in sorted(_map(report, "models").items())
        ),
        cameras=f"{streaming}/{total}",
        events_per_hour=int(min(max(events, 0.0), MAX_EVENTS_PER_HOUR)),
        problems=("stopped",) if stopped else _problems(report, online, ahead),
        console_url=printable(report.get("console_url"), 256),
        job=_job(report),
    )


def _problems(report: Mapping[str, Any], online: bool, ahead_s: float) -> tuple[str, ...]:
    problems = [] if online else ["offline"]
    if ahead_s > CLOCK_AHEAD_S:  # its reports are read as from now: online for as long as they stay
        problems.append(f"clock {span(ahead_s)} ahead")
    for name, camera in sorted(_map(report, "cameras").items()):
        if camera.get("state") in _CAMERA_PROBLEMS:
            problems.append(f"camera {name} {camera['state']}")
    for name, service in sorted(_map(report, "services").items()):
        state = printable(service.get("state"))
        if state is not None and state not in _SERVICE_FINE:
            problems.append(f"service {name} {state}")
    for name, app in sorted(_map(report, "apps").items()):
        if app.get("state") in _APP_PROBLEMS:
            problems.append(f"app {name} {app['state']}")
    spool = report.get("spool")
    oldest = number(spool.get("oldest_s")) if isinstance(spool, Mapping) else None
    if oldest is not None and oldest > SPOOL_PROBLEM_S:
        problems.append(f"spool oldest {oldest / 3600:.1f} h")
    last_error = printable(report.get("last_error"))
    if last_error:
        problems.append(last_error)
    job = report.get("job")
    if isinstance(job, Mapping) and job.get("last_status") in _JOB_PROBLEMS:
        reason = printable(job.get("last_reason"), 60)
        failed = f"job {printable(job.get('last'), 64) or '?'} {str(job['last_status']).lower()}"
        problems.append(f"{failed}: {reason}" if reason else failed)
    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS - 1 :] = [f"{len(problems) - _MAX_PROBLEMS + 1} more"]
    return tuple(problems)


def _job(report: Mapping[str, Any]) -> str | None:
    job = report.get("job")
    if not isinstance(job, Mapping):
        return None
    current = printable(job.get("current"), 64)
    if current:
        return f"{current} IN_PROGRESS"
    last = printable(job.get("last"), 64)
    return f"{last} {printable(job.get('last_status'), 16) or '?'}" if last else None


def _counts(report: Mapping[str, Any], name: str, entries: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """(ok, total) of a map of REPORTED, from ``cut`` when the reporter had to shorten it."""
    cut = report.get("cut")
    counted = cut.get(name) if isinstance(cut, Mapping) else None
    if isinstance(counted, Mapping):
        ok, total = number(counted.get("ok")), number(counted.get("total"))
        if ok is not None and total is not None and 0 <= ok <= total:
            return int(ok), int(total)
    return sum(1 for entry in entries.values() if entry.get("state") == OK_STATES[name]), len(entries)


def _map(report: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any]]:
    value = report.get(name)
    if not isinstance(value, Mapping):
        return {}
    return {printable(str(key), 40) or "?": entry for key, entry in value.items() if isinstance(entry, Mapping)}

"""The fleet at a glance: one row per site from its reported state, for ``edgesight fleet status`` and
the console's fleet page. A site is online while its last report is at most two report intervals old;
``problems`` are short phrases an operator acts on. Reports come off the network: every value is
checked for its type here, and a wrong one reads as absent.

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
import math
from collections.abc import Mapping
from typing import Any

from common.fleet.shapes import OK_STATES

__all__ = ["SPOOL_PROBLEM_S", "SiteRow", "roster"]

SPOOL_PROBLEM_S = 3600.0  # events waiting this long upstream are a problem
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


def _row(thing: str, report: Mapping[str, Any], now: float) -> SiteRow:
    reported_at = _number(report.get("reported_at"))
    interval = _number(report.get("interval_s"))
    last_seen = None if reported_at is None else max(0.0, now - reported_at)
    stopped = report.get("state") == "stopped"  # the site's fleet service said so as it stopped
    heard = last_seen is not None and interval is not None and interval > 0 and last_seen <= 2 * interval
    online = heard and not stopped
    cameras = _map(report, "cameras")
    streaming, total = _counts(report, "cameras", cameras)
    return SiteRow(
        site=_text(report.get("site"), 64) or thing,
        thing=thing,
        online=online,
        last_seen_s=last_seen,
        version=_text(report.get("edgesight")) or "",
        models=", ".join(
            f"{name} {_text(entry.get('version')) or '?'}" for name, entry in sorted(_map(report, "models").items())
        ),
        cameras=f"{streaming}/{total}",
        events_per_hour=int(_number(report.get("events_last_hour")) or 0),
        problems=("stopped",) if stopped else _problems(report, online),
        console_url=_text(report.get("console_url"), 256),
        job=_job(report),
    )


def _problems(report: Mapping[str, Any], online: bool) -> tuple[str, ...]:
    problems = [] if online else ["offline"]
    for name, camera in sorted(_map(report, "cameras").items()):
        if camera.get("state") in _CAMERA_PROBLEMS:
            problems.append(f"camera {name} {camera['state']}")
    for name, service in sorted(_map(report, "services").items()):
        state = _text(service.get("state"))
        if state is not None and state not in _SERVICE_FINE:
            problems.append(f"service {name} {state}")
    for name, app in sorted(_map(report, "apps").items()):
        if app.get("state") in _APP_PROBLEMS:
            problems.append(f"app {name} {app['state']}")
    spool = report.get("spool")
    oldest = _number(spool.get("oldest_s")) if isinstance(spool, Mapping) else None
    if oldest is not None and oldest > SPOOL_PROBLEM_S:
        problems.append(f"spool oldest {oldest / 3600:.1f} h")
    last_error = _text(report.get("last_error"))
    if last_error:
        problems.append(last_error)
    job = report.get("job")
    if isinstance(job, Mapping) and job.get("last_status") in _JOB_PROBLEMS:
        reason = _text(job.get("last_reason"), 60)
        failed = f"job {_text(job.get('last'), 64) or '?'} {str(job['last_status']).lower()}"
        problems.append(f"{failed}: {reason}" if reason else failed)
    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS - 1 :] = [f"{len(problems) - _MAX_PROBLEMS + 1} more"]
    return tuple(problems)


def _job(report: Mapping[str, Any]) -> str | None:
    job = report.get("job")
    if not isinstance(job, Mapping):
        return None
    current = _text(job.get("current"))
    if current:
        return f"{current} IN_PROGRESS"
    last = _text(job.get("last"))
    return f"{last} {_text(job.get('last_status')) or '?'}" if last else None


def _counts(report: Mapping[str, Any], name: str, entries: Mapping[str, Mapping[str, Any]]) -> tuple[int, int]:
    """(ok, total) of a map of REPORTED, from ``cut`` when the reporter had to shorten it."""
    cut = report.get("cut")
    counted = cut.get(name) if isinstance(cut, Mapping) else None
    if isinstance(counted, Mapping):
        ok, total = _number(counted.get("ok")), _number(counted.get("total"))
        if ok is not None and total is not None:
            return int(ok), int(total)
    return sum(1 for entry in entries.values() if entry.get("state") == OK_STATES[name]), len(entries)


def _map(report: Mapping[str, Any], name: str) -> dict[str, Mapping[str, Any]]:
    value = report.get(name)
    if not isinstance(value, Mapping):
        return {}
    return {_text(str(key), 40) or "?": entry for key, entry in value.items() if isinstance(entry, Mapping)}


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _text(value: object, limit: int = 80) -> str | None:
    """A string from a report, fit for a terminal: control characters (escape sequences) made spaces, cut."""
    if not isinstance(value, str) or not value:
        return None
    return "".join(char if char.isprintable() else " " for char in value[:limit])

"""What both of ``edgesight fleet``'s links hand over (:mod:`common.cli.fleet_broker` on an MQTT broker,
:mod:`common.cli.fleet_aws` on AWS IoT): a job's status and record, the error that says the link failed, and
the checks on what was heard. Everything heard is untrusted: a message that does not parse is ignored and
counted (never a traceback), every text that may be printed goes through :func:`common.fleet.untrusted.printable`,
and a final status counts only once the site's own reported state names the job with it (:func:`reported_end`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from common.errors import EdgeSightError
from common.fleet import shapes
from common.fleet.signing import OPERATIONS, JobRefused, parse_time
from common.fleet.untrusted import printable

__all__ = [
    "UNPARSABLE",
    "JobRecord",
    "JobStatus",
    "LinkError",
    "expiry",
    "heard_status",
    "operation_of",
    "reported_end",
    "said",
]

UNPARSABLE = (shapes.MalformedMessage, ValueError, TypeError, ArithmeticError, RecursionError)  # never a traceback


class LinkError(EdgeSightError):
    """The broker or AWS IoT cannot be reached or refused a request; says which and why."""


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """A job's latest status as heard (from its site, or from anyone who may publish there: see
    :func:`reported_end`); ``details`` are its statusDetails."""

    job_id: str
    thing: str
    status: str
    details: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def final(self) -> bool:
        return self.status in shapes.TERMINAL_STATUSES


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """A job the wire still holds, for ``fleet jobs``: its document (None once cleared) and status."""

    job_id: str
    thing: str
    operation: str | None
    queued_at: float | None
    status: JobStatus | None
    expires_at: float | None = None  # its document's; None: no document (0: one no site would take)


def heard_status(job_id: str, thing: str, status: str, details: Mapping[str, object]) -> JobStatus:
    """A status as heard, its texts made printable (they are printed as they are).

    >>> heard_status("j", "t", "FAILED", {"reason": "\\x1b[2Jgone"}).details
    {'reason': ' [2Jgone'}
    """
    shown = {printable(str(key), 64) or "?": printable(str(value), 1024) or "" for key, value in details.items()}
    return JobStatus(job_id, thing, printable(status, 16) or "?", shown)


def reported_end(reported: Mapping[str, Any] | None, thing: str, job_id: str) -> str | None:
    """The final status ``thing``'s own reported state gives ``job_id`` (its ``job.last`` and
    ``job.last_status``); None when the report names another job, or none, or is another thing's.

    >>> reported_end({"thing": "t", "job": {"last": "j-1", "last_status": "SUCCEEDED"}}, "t", "j-1")
    'SUCCEEDED'
    >>> reported_end({"thing": "t", "job": {"last": "j-0", "last_status": "SUCCEEDED"}}, "t", "j-1") is None
    True
    """
    job = reported.get("job") if reported is not None and reported.get("thing") == thing else None
    if not isinstance(job, Mapping) or job.get("last") != job_id:
        return None
    status = job.get("last_status")
    return status if isinstance(status, str) and status in shapes.TERMINAL_STATUSES else None


def operation_of(document: object, job_id: str) -> str | None:
    """The document's operation (printable); without one, the operation its id begins with (ids of
    `edgesight fleet`)."""
    operation = document.get("operation") if isinstance(document, dict) else None
    if isinstance(operation, str):
        return printable(operation, 40) or "?"
    return next((name for name in OPERATIONS if job_id.startswith(f"{name}-")), None)


def expiry(execution: shapes.Execution | None) -> float:
    """When a retained job document stops being one a site would run: its ``expires_at``; 0 for one that
    did not parse or has none (no site runs it).

    >>> expiry(shapes.Execution("j", {"expires_at": "2026-11-30T00:00:00Z"})), expiry(None)
    (1795996800.0, 0.0)
    """
    try:
        return parse_time(execution.document.get("expires_at")) if execution is not None else 0.0
    except JobRefused:
        return 0.0


def said(malformed: int) -> str:
    """
    >>> said(1), said(3)
    ('1 malformed message ignored', '3 malformed messages ignored')
    """
    return f"{malformed} malformed message{'s' if malformed != 1 else ''} ignored"

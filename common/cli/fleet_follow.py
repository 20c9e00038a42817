"""Following a rollout's jobs for ``edgesight fleet deploy|rollback|restart``: each site's statuses as they
come, and each final one confirmed by the site's own reported state before it counts.

A final status on the wire is not proof on its own: on a broker that lets any client publish under a site's
topics, anyone can say SUCCEEDED (and clearing the job's document on that word would take the job from the
site for good). A final status counts once the site's reported state names the job as its ``job.last`` with
that status (:func:`common.cli.fleet_wire.reported_end`); a site sends that report right after its final
status, within its ``fleet.min_report_interval_s``, so the normal case stays fast. Only then is the job's
retained document cleared. A final status the site's report never confirms within the rollout's timeout
(with ``CONFIRM_S`` more for one heard at its very end) is "heard but not confirmed": its document stays,
the site counts as not done (exit 3), a canary as failed.

This stops a forged status alone. Whoever may also publish a site's reported state can forge both: only a
broker that lets each site publish under its own topics alone (per-thing ACLs, or AWS IoT policies naming
``iot:Connection.Thing.ThingName``) stops that.
"""

from __future__ import annotations

import dataclasses
import time

from common.cli.fleet_broker import FleetLink, JobStatus
from common.fleet.fleet_file import FleetFile
from common.fleet.untrusted import printable

__all__ = ["CONFIRM_S", "Answer", "Progress", "follow", "outcome_line"]

CONFIRM_S = 15.0  # a final status heard at the timeout's end waits this much more for the site's report
MAX_LINE = 2000  # characters of one progress line


@dataclasses.dataclass(frozen=True)
class Answer:
    """How a site answered a job: the latest status heard, and whether its own report confirms it."""

    status: JobStatus | None  # None: nothing heard
    confirmed: bool = False  # the site's reported state names the job last with this final status

    @property
    def kind(self) -> str:
        """``succeeded``, ``failed`` (both confirmed), ``unconfirmed`` (final, not confirmed) or ``queued``."""
        if self.status is None or not self.status.final:
            return "queued"
        if not self.confirmed:
            return "unconfirmed"
        return "succeeded" if self.status.status == "SUCCEEDED" else "failed"


class Progress:
    """Lines as statuses come, each with the seconds since the rollout began and the site's name; every
    line made printable (:func:`common.fleet.untrusted.printable`): parts of it came off the network."""

    def __init__(self, fleet: FleetFile) -> None:
        self.sites = fleet.things()
        self.started = time.monotonic()
        self.last: dict[str, tuple[str, str]] = {}

    def site(self, thing: str) -> str:
        return self.sites.get(thing, thing)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:5.0f}s] {printable(text, MAX_LINE) or ''}", flush=True)

    def status(self, status: JobStatus) -> None:
        """A status heard: said unless final (said once the site's report confirms it: :meth:`confirmed`)."""
        if status.status == "QUEUED" or status.final:  # QUEUED: said already, when it was sent
            return
        self._said(status)

    def confirmed(self, status: JobStatus) -> None:
        self._said(status)

    def _said(self, status: JobStatus) -> None:
        detail = status.details.get("reason") or status.details.get("step") or ""
        if self.last.get(status.job_id) != (status.status, detail):
            self.last[status.job_id] = (status.status, detail)
            self.say(f"{self.site(status.thing)}: {status.status}{'  ' + detail if detail else ''}")


async def follow(link: FleetLink, jobs: dict[str, str], deadline: float, progress: Progress) -> dict[str, Answer]:
    """How each of ``jobs`` (job id -> thing) was answered: statuses as they come until each final one is
    confirmed by its site's report (its document then cleared), or ``deadline`` (monotonic) passes; a final
    status heard near the deadline gets ``CONFIRM_S`` after it was heard."""
    latest: dict[str, JobStatus] = {}
    final_at: dict[str, float] = {}  # job id -> when its present final status was first heard
    confirmed: set[str] = set()
    while True:
        mark = link.mark()
        for job_id, thing in jobs.items():
            status = None if job_id in confirmed else await link.status(thing, job_id)
            if status is None:
                continue
            if latest.get(job_id) != status:
                latest[job_id] = status
                final_at.pop(job_id, None)
                progress.status(status)
            if not status.final:
                continue
            final_at.setdefault(job_id, time.monotonic())
            if await link.site_reported(thing, job_id) == status.status:
                confirmed.add(job_id)
                progress.confirmed(status)
                await link.finished(thing, job_id)
        end = max([deadline, *(heard + CONFIRM_S for job_id, heard in final_at.items() if job_id not in confirmed)])
        if len(confirmed) == len(jobs) or time.monotonic() >= end:
            return {job_id: Answer(latest.get(job_id), job_id in confirmed) for job_id in jobs}
        await link.wait_news(mark, end - time.monotonic())


def outcome_line(site: str, answer: Answer, timeout_s: float) -> str:
    """What became of a site's job, in a few words."""
    status = answer.status
    if status is None or not status.final:
        return f"{site} did not answer within {timeout_s:g} s: queued (offline?)"
    if not answer.confirmed:
        return (
            f"{site} {status.status}: status heard but not confirmed by the site's report: its job stays queued "
            "(a status someone else published? see `edgesight fleet status`)"
        )
    reason = status.details.get("reason")
    return f"{site} {status.status}" + (f": {reason}" if reason else "")

"""Fleet jobs: where they come from, how each is checked before it runs, and the statuses operators read.

Two sources, one runner. ``aws``: AWS IoT Jobs' MQTT API: ``start-next`` on connect, on ``notify-next``
and after each job, its answer on ``start-next/accepted``. ``retained``: on any broker, the operator
retains each job's document at ``R/things/T/jobs/<jobId>/document``; the runner takes them oldest
``queuedAt`` first, once they stopped arriving for a moment (a reconnect delivers them one by one),
and never later than ``MAX_SETTLE_S`` after the first of them came: a document sent again and again
(or a flood of new ones) cannot hold the others back.

A job runs only once its document is verified (:func:`common.fleet.signing.verify_document`: a
trusted operator's signature, in its window, naming this thing), its nonce was never seen (the
ledger's part), it is bound to no other job id, and its operation is allowed here; anything else is
answered ``REJECTED`` with the reason and audited as ``fleet.job_refused`` (actor ``fleet:<key id>``
once the document is known to be that operator's; one no trusted operator is known to have sent
costs nothing that lasts: :mod:`services.fleet.refusals`). Nothing of a message ever reads a file,
runs a command or expands ``${...}``: only the verified document's operation does, through
``run_operation``. One job at a time; statuses are ``IN_PROGRESS`` (each step), then ``SUCCEEDED`` or
``FAILED``, retained in retained mode so that ``edgesight fleet jobs`` reads them later. A job whose
id the ledger has finished is not run again; one the ledger saw start but not finish was cut short by
a stop and is answered ``FAILED`` (never run twice: it may be what stopped the service).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from common._compat import TaskGroup, raise_if_cancelled, timeout
from common.fleet.ledger import Ledger, LedgerError
from common.fleet.shapes import TERMINAL_STATUSES, Execution, MalformedMessage, decode_object, encode, parse_execution
from common.fleet.shapes import start_next as start_next_request
from common.fleet.shapes import status_update as status_message
from common.fleet.signing import JobRefused, SignedJob, check_args, verify_document
from services.fleet import metrics
from services.fleet.context import JobContext, JobFailed
from services.fleet.fleet_site import FleetSite
from services.fleet.refusals import Answered, RefusalTally, plain

__all__ = ["Audit", "FleetSite", "JobRunner", "JobState", "Operate", "Publish", "Step"]

log = logging.getLogger(__name__)

Step = Callable[[str], Awaitable[None]]
Operate = Callable[[SignedJob, JobContext, Step], Awaitable[dict[str, str]]]
Publish = Callable[[str, bytes, bool], Awaitable[bool]]  # (topic, payload, retain) -> delivered (PUBACK)
Audit = Callable[..., Awaitable[None]]  # Service.audit(action, target, **detail)

SETTLE_S = 0.5  # retained documents stop arriving this long before the oldest is picked
MAX_SETTLE_S = 2.0  # ... or the oldest is picked this long after the first of them came, whatever comes
GRACE_S = 120.0  # past job_timeout_s: an operation's own rollback has its time; then it is given up
STARTED = "IN_PROGRESS"  # in the ledger while a job runs: found at start, it was cut short
INTERRUPTED = "interrupted: the fleet service stopped while the job ran"
MAX_PENDING = 1000  # jobs queued at once (each document up to 32 kB); more are heard on a later reconnect
MAX_RESENDS = 3  # a final status AWS refused (a version mismatch) is sent again this often


@dataclasses.dataclass
class JobState:
    """The runner's part of the reported state, and its counts."""

    current: str | None = None
    last: str | None = None
    last_status: str | None = None
    last_reason: str | None = None
    succeeded: int = 0
    failed: int = 0
    rejected: int = 0

    def reported(self) -> dict[str, str | None]:
        return {
            "current": self.current,
            "last": self.last,
            "last_status": self.last_status,
            "last_reason": self.last_reason,
        }


class JobRunner:
    """Takes job messages (:meth:`take`), runs them one at a time (:meth:`run`), says how they went."""

    def __init__(
        self,
        fleet: FleetSite,
        ledger: Ledger,
        context: JobContext,
        operate: Operate,
        publish: Publish,
        audit: Audit,
        *,
        one_at_a_time: asyncio.Lock | None = None,
        settle_s: float = SETTLE_S,
        max_settle_s: float = MAX_SETTLE_S,
    ) -> None:
        self.fleet, self.ledger, self.context = fleet, ledger, context
        self.operate, self.publish, self.audit = operate, publish, audit
        self.lock = one_at_a_time or asyncio.Lock()  # desired state's installs take turns with jobs
        self.settle_s, self.max_settle_s = settle_s, max_settle_s
        self.state = JobState()
        self.pending: dict[str, Execution] = {}
        self.on_change: Callable[[], None] = lambda: None  # the reporter's nudge
        self.refusals = RefusalTally(audit)  # of documents no trusted operator is known to have sent
        self._answered = Answered()  # ... and the job ids their REJECTED went to lately
        self._arrived = asyncio.Event()
        self._last_arrival = 0.0  # monotonic, of the last job id not pending before
        self._first_arrival = 0.0  # monotonic, of the first job id pending since the queue was empty
        self._versions: dict[str, int] = {}  # job id -> the execution's version AWS expects next
        self._unsent: dict[str, tuple[str, dict[str, str]]] = {}  # final statuses not delivered yet
        self._final: tuple[str, str, dict[str, str], int] | None = None  # (job, status, details, resends)

    # -- the MQTT side -------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        topics = self.fleet.topics
        if self.fleet.retained:
            return [topics.job_documents]
        return [
            topics.notify_next,
            topics.start_next_accepted,
            topics.start_next_rejected,
            topics.job_updates_accepted,
            topics.job_updates_rejected,
        ]

    async def connected(self) -> None:
        """(Re)connected: final statuses that did not go out go now; AWS is asked for the next job."""
        for job_id, (status, details) in list(self._unsent.items()):
            if await self._send(job_id, status, details):
                del self._unsent[job_id]
        if not self.fleet.retained and self.state.current is None:
            await self._request_next()

    def disconnected(self) -> None:
        """What was queued is heard again on reconnect, less what operators withdrew meanwhile."""
        self.pending.clear()

    async def take(self, topic: str, payload: bytes) -> bool:
        """Handles a message on one of :meth:`subscriptions`; False for any other topic. A payload not
        of its topic's shape raises :class:`MalformedMessage` (counted and dropped by the caller)."""
        topics = self.fleet.topics
        job_id = topics.job_id_of(topic)
        if self.fleet.retained:
            if job_id is None or topic != f"{topics.jobs}/{job_id}/document":
                return False
            execution = parse_execution(payload)
            if execution is None:  # withdrawn (or done: the operator clears what ended)
                self.pending.pop(job_id, None)
            elif execution.job_id != job_id:
                raise MalformedMessage("wrong type", f"jobId {execution.job_id!r} is not the topic's {job_id!r}")
            else:
                self._queue(execution)
            return True
        if topic == topics.notify_next:
            if parse_execution(payload) is not None and self.state.current is None and not self.pending:
                await self._request_next()
        elif topic == topics.start_next_accepted:
            execution = parse_execution(payload)
            if execution is not None:
                self._queue(execution)
        elif topic == topics.start_next_rejected:
            log.warning("aws iot refused start-next", extra={"answer": _answer(payload)})
        elif job_id is not None and topic == f"{topics.jobs}/{job_id}/update/accepted":
            decode_object(payload)  # AWS's confirmation: nothing to do but check its shape
        elif job_id is not None and topic == f"{topics.jobs}/{job_id}/update/rejected":
            await self._update_rejected(job_id, payload)
        else:
            return False
        return True

    def _queue(self, execution: Execution) -> None:
        if execution.job_id == self.state.current:
            return  # the running one, handed over again (a reconnect's start-next)
        if execution.status in TERMINAL_STATUSES:  # an operator's CANCELED, say: nothing to run
            self.pending.pop(execution.job_id, None)
            return
        if execution.job_id in self.pending:  # sent again: the newest copy, no new wait for anyone
            self.pending[execution.job_id] = execution
            return
        if len(self.pending) >= MAX_PENDING:
            log.warning("fleet jobs: too many queued; the rest wait for a reconnect", extra={"queued": MAX_PENDING})
            return
        now = time.monotonic()
        if not self.pending:
            self._first_arrival = now
        self.pending[execution.job_id] = execution
        self._last_arrival = now
        self._arrived.set()

    async def _request_next(self) -> None:
        await self.publish(self.fleet.topics.start_next, encode(start_next_request()), False)

    async def _update_rejected(self, job_id: str, payload: bytes) -> None:
        """AWS refused a status update: said once; a final status refused for its version goes again
        with the version AWS holds (another client, or a lost acknowledgement, moved it on)."""
        answer = decode_object(payload) or {}
        log.warning("aws iot refused a job status update", extra={"job_id": job_id, "answer": _answer(payload)})
        state = answer.get("executionState")
        version = state.get("versionNumber") if isinstance(state, dict) else None
        if isinstance(version, int) and not isinstance(version, bool):
            self._versions[job_id] = version
        final = self._final
        if final is not None and final[0] == job_id and final[3] < MAX_RESENDS:
            self._final = (job_id, final[1], final[2], final[3] + 1)
            await self._send(job_id, final[1], final[2])

    # -- the runner ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Forever: the next job (oldest first), handled whole, then the next."""
        async with TaskGroup() as group:
            group.create_task(self.refusals.run(), name="refusals")
            while True:
                raise_if_cancelled()  # a stop that a publish's wait swallowed: not a wait for ever on _next
                execution = await self._next()
                async with self.lock:
                    await self._handle(execution)
                if not self.fleet.retained:
                    await self._request_next()

    async def _next(self) -> Execution:
        while True:
            if self.pending:
                due = min(self._last_arrival + self.settle_s, self._first_arrival + self.max_settle_s)
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
                    continue
                oldest = min(self.pending, key=lambda job: (self.pending[job].queued_at, job))
                return self.pending.pop(oldest)
            self._arrived.clear()
            await self._arrived.wait()

    async def _handle(self, execution: Execution) -> None:
        job_id = execution.job_id
        self._versions.setdefault(job_id, execution.version or 1)
        finished = self.ledger.finished(job_id)
        if finished == STARTED:
            claimed = plain(execution.document.get("operator"))
            await self.audit("fleet.job_failed", job_id, reason=INTERRUPTED, claimed_operator=claimed)
            await self._end(execution, _text(execution.document.get("operation")), "FAILED", {"reason": INTERRUPTED})
            return
        if finished is not None:
            if not self.fleet.retained:  # AWS hands a job over until it hears its end: say it again
                await self._send(job_id, finished, {"reason": "finished before", "site": self.fleet.site})
            return
        try:
            job = self._verify(execution)
        except JobRefused as refused:
            if refused.verified or not self.fleet.signatures_required:
                await self._refuse(execution, refused.reason, verified=refused.verified)
            else:
                await self._refuse_unverified(execution, refused.reason)
            return
        try:
            if self.fleet.signatures_required:
                await asyncio.to_thread(self.ledger.remember, job.nonce, job.expires_at)
            await asyncio.to_thread(self.ledger.finish, job_id, STARTED)
        except LedgerError as exc:  # a job the site cannot remember could run twice: none runs
            log.error("fleet ledger not writable", extra={"error": str(exc)})
            await self._refuse(execution, f"the site cannot record jobs: {exc}", verified=True, remember=False)
            return
        await self._run(execution, job)

    def _verify(self, execution: Execution) -> SignedJob:
        """The job the document allows here, or :class:`JobRefused` with the reason."""
        document, fleet = execution.document, self.fleet
        if fleet.signatures_required:
            job = verify_document(document, fleet.trusted, fleet.thing)
            if job.job_id is not None and job.job_id != execution.job_id:  # a copy, as cheap to make as junk
                raise JobRefused("signed for another job id")
            if self.ledger.seen(job.nonce):
                raise JobRefused("replayed", verified=True)
        else:
            job = _unsigned(execution, fleet)
        if job.operation == "install_app" and not fleet.allow_apps:
            raise JobRefused("not allowed: install_app (fleet.allow_apps is false on this site)", verified=True)
        if job.operation == "set_desired":
            raise JobRefused("not allowed: set_desired is sent as desired state, not as a job", verified=True)
        return job

    async def _refuse(
        self, execution: Execution, reason: str, *, verified: bool = False, remember: bool = True
    ) -> None:
        """Refused, remembered (the ledger) and said in full: a trusted operator's document (or, in aws
        mode without trusted operators, one AWS IoT's policies let be queued)."""
        job_id, document = execution.job_id, execution.document
        operator = document.get("operator") if verified and self.fleet.signatures_required else None
        claimed = None if operator else plain(document.get("operator"))
        log.warning("fleet job refused", extra={"job_id": job_id, "reason": reason, "operator": operator or claimed})
        await self.audit(
            "fleet.job_refused", job_id, **_by(operator), job_id=job_id, reason=reason, operator=operator,
            claimed_operator=claimed,
        )  # fmt: skip
        await self._end(execution, _text(document.get("operation")), "REJECTED", {"reason": reason}, remember)

    async def _refuse_unverified(self, execution: Execution, reason: str) -> None:
        """Refused at no lasting cost (:mod:`services.fleet.refusals`): a document no trusted operator
        is known to have sent. Not in the ledger, nor in the job the site reports."""
        job_id, document = execution.job_id, execution.document
        self.state.rejected += 1
        metrics.JOBS.labels("rejected").inc()
        await self.refusals.add(job_id, reason, plain(document.get("operator")), job_id=job_id)
        details = {"operation": plain(document.get("operation")) or "", "site": self.fleet.site, "reason": reason}
        if not self.fleet.retained:  # AWS hands it over until it hears an end: say it each time
            await self._send(job_id, "REJECTED", details)
            return
        self._versions.pop(job_id, None)  # nothing of it is kept
        if self._answered.first_in_a_while(job_id):
            message = status_message("REJECTED", details, expected_version=execution.version or 1)
            await self.publish(self.fleet.topics.job_update(job_id), encode(message), False)

    async def _run(self, execution: Execution, job: SignedJob) -> None:
        job_id = execution.job_id
        self.state.current = job_id
        self.on_change()
        log.info("fleet job started", extra={"job_id": job_id, "operation": job.operation, "operator": job.operator})
        by = _by(job.operator if self.fleet.signatures_required else None)
        await self.audit("fleet.job_received", job_id, **by, operation=job.operation, operator=job.operator)
        shown = {"operation": job.operation, "site": self.fleet.site}

        async def step(text: str) -> None:
            log.info("fleet job step", extra={"job_id": job_id, "step": text})
            await self._send(job_id, "IN_PROGRESS", {**shown, "step": text})

        await step("started")
        try:
            async with timeout(self.fleet.job_timeout_s + GRACE_S):
                result = await self.operate(job, self.context, step)
        except JobFailed as failed:
            status, details = "FAILED", {"reason": failed.reason}
        except (TimeoutError, asyncio.TimeoutError):
            status, details = "FAILED", {"reason": f"timed out: no end after {self.fleet.job_timeout_s + GRACE_S:g} s"}
        except Exception as exc:  # an operation's bug fails its job, never the service
            log.error("fleet job crashed", exc_info=True, extra={"job_id": job_id})
            status, details = "FAILED", {"reason": f"{type(exc).__name__}: {exc}"}
        else:
            status, details = "SUCCEEDED", {key: str(value) for key, value in result.items()}
        detail = {**by, "operation": job.operation, "operator": job.operator}
        if status == "SUCCEEDED":
            await self.audit("fleet.job_succeeded", job_id, **detail, version=details.get("version"))
        else:
            await self.audit("fleet.job_failed", job_id, **detail, reason=details["reason"])
        await self._end(execution, job.operation, status, details)

    async def _end(
        self, execution: Execution, operation: str, status: str, details: dict[str, str], remember: bool = True
    ) -> None:
        """Records, counts and says a job's end (said again on reconnect until it goes out)."""
        job_id = execution.job_id
        if remember:
            try:
                await asyncio.to_thread(self.ledger.finish, job_id, status)
            except LedgerError as exc:
                log.error("fleet ledger not writable", extra={"error": str(exc)})
        shown = {"operation": operation, "site": self.fleet.site, **details}
        reason = details.get("reason")
        self.state = dataclasses.replace(
            self.state,
            current=None,
            last=job_id,
            last_status=status,
            last_reason=reason if status != "SUCCEEDED" else None,
        )
        counter = {"SUCCEEDED": "succeeded", "FAILED": "failed"}.get(status, "rejected")
        setattr(self.state, counter, getattr(self.state, counter) + 1)
        metrics.JOBS.labels(counter).inc()
        log.info("fleet job ended", extra={"job_id": job_id, "status": status, "reason": reason})
        self._final = (job_id, status, shown, 0)
        if not await self._send(job_id, status, shown):
            self._unsent[job_id] = (status, shown)
        self.on_change()

    async def _send(self, job_id: str, status: str, details: Mapping[str, str]) -> bool:
        """One status update (retained in retained mode), with the version AWS expects next."""
        version = self._versions.get(job_id, 1)
        message = status_message(status, details, expected_version=version)
        sent = await self.publish(self.fleet.topics.job_update(job_id), encode(message), self.fleet.retained)
        if sent:
            self._versions[job_id] = version + 1
            if len(self._versions) > 64:  # only the current and the last few matter
                del self._versions[next(iter(self._versions))]
        return sent


def _unsigned(execution: Execution, fleet: FleetSite) -> SignedJob:
    """aws mode without trusted operators: AWS IoT's policies said who may queue a job; its document
    is still read as one of ours (operation and arguments checked, a target list honoured)."""
    document = execution.document
    check_args(document.get("operation"), document.get("args"))
    targets = document.get("targets")
    if isinstance(targets, list) and fleet.thing not in targets:
        raise JobRefused("not for this site")
    now = time.time()
    return SignedJob(
        operation=str(document["operation"]),
        args=dict(document["args"]),
        operator="aws",
        nonce=execution.job_id,
        issued_at=now,
        expires_at=now + fleet.job_timeout_s,
    )


def _by(operator: str | None) -> dict[str, str]:
    """The audit's actor for a trusted operator's (verified) document: ``fleet:<key id>``; none other."""
    return {} if operator is None else {"actor": f"fleet:{operator}"}


def _text(value: Any) -> str:
    return plain(value, 128) or ""


def _answer(payload: bytes) -> str:
    """An answer of AWS's for a log line: short, never trusted."""
    return payload[:300].decode(errors="replace")

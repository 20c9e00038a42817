"""Desired models: the versions an operator wants this site to run, kept so.

Desired state arrives on the named shadow: retained by the operator at ``.../update/delta`` (retained
mode), or as AWS IoT's delta and its answer to ``.../get`` at connect (aws mode). What the site believes
is the signed ``set_desired`` document in it (``signed``), verified as a job is (a trusted operator, in
its window, naming this thing); ``state.models`` is for people. A document not newer than the one held
(by ``issued_at``) is ignored, one older than the last applied (the ledger) too: a retained message
heard again at every reconnect is no replay. Only a newer verified ``set_desired`` changes what is
held (one with no models empties it); a cleared retained message (anyone on the broker can send one)
withdraws nothing and is said once. In aws mode without trusted operators, ``state.models`` is taken
as AWS IoT's policies let it be written. Audit records of a verified document's changes have the
operator as actor (``fleet:<key id>``); a refused document's claimed operator is only
``claimed_operator``, in plain text.

Each model whose current version differs is changed through ``run_operation``, taking turns with jobs:
a version the store still keeps is made current again (``rollback_model``), any other is fetched from
``fleet.packages`` (``install_model``; its sha256 unknown, the package's signature under
``site.trusted_keys`` is what is checked). A change that failed (and was rolled back) is tried again
after ``RETRY_S``, or when newer desired state arrives; each end is audited
(``fleet.desired_applied``, ``fleet.desired_refused``).
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common._compat import TaskGroup, raise_if_cancelled, timeout, wait_at_most
from common.errors import EdgeSightError
from common.fleet.ledger import Ledger, LedgerError
from common.fleet.shapes import Desired, encode, parse_desired, shadow_get
from common.fleet.signing import JobRefused, SignedJob, check_args, verify_document
from common.trust.store import ModelStore
from services.fleet.context import JobContext, JobFailed
from services.fleet.fleet_site import FleetSite
from services.fleet.jobs import GRACE_S, Audit, Operate, Publish
from services.fleet.refusals import RefusalTally, plain

__all__ = ["RETRY_S", "DesiredModels"]

log = logging.getLogger(__name__)

RETRY_S = 600.0


class DesiredModels:
    """Takes desired state (:meth:`take`) and keeps the model store at it (:meth:`run`)."""

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
    ) -> None:
        self.fleet, self.ledger, self.context = fleet, ledger, context
        self.operate, self.publish, self.audit = operate, publish, audit
        self.lock = one_at_a_time or asyncio.Lock()
        self.store = ModelStore(Path(context.state_dir) / "models")
        self.models: dict[str, str] | None = None
        self.on_change: Callable[[], None] = _nothing  # the reporter's nudge
        self._document: SignedJob | None = None  # what the models came in
        self._failed: dict[tuple[str, str], float] = {}  # (name, version) -> when it failed (monotonic)
        self._refused: str | None = None  # the last refusal, said once
        self.refusals = RefusalTally(audit, "fleet.desired_refused")  # of documents no trusted operator sent
        self._cleared_said = False  # a cleared retained message, said once until desired state comes
        self._changed = asyncio.Event()

    def reported(self) -> dict[str, Any] | None:
        return None if self.models is None else {"models": dict(self.models)}

    # -- the MQTT side -------------------------------------------------------------------------
    def subscriptions(self) -> list[str]:
        topics = self.fleet.topics
        if self.fleet.retained:
            return [topics.desired_delta]
        return [topics.desired_delta, topics.shadow_get_accepted, topics.shadow_get_rejected]

    async def connected(self) -> None:
        if not self.fleet.retained:  # the whole desired state: a delta sent while away is not sent again
            await self.publish(self.fleet.topics.shadow_get, encode(shadow_get()), False)

    def disconnected(self) -> None:
        pass

    async def take(self, topic: str, payload: bytes) -> bool:
        """Handles a desired-state message; False for any other topic (MalformedMessage for a bad one)."""
        topics = self.fleet.topics
        if topic == topics.shadow_get_rejected:  # 404 until an operator first sets desired state
            log.debug("no desired state yet", extra={"answer": payload[:200].decode(errors="replace")})
            return True
        if topic not in (topics.desired_delta, topics.shadow_get_accepted):
            return False
        desired = parse_desired(payload)
        if desired is None:  # cleared, or empty: no signed word of an operator's, so nothing changes
            if not self._cleared_said:
                self._cleared_said = True
                log.warning("desired state message cleared or empty; the signed desired state held stays")
            return True
        await self._adopt(desired)
        return True

    async def _adopt(self, desired: Desired) -> None:
        try:
            document = self._verify(desired)
        except JobRefused as refused:
            said = plain(desired.signed.get("operator")) if desired.signed else None
            if refused.verified:  # a trusted operator's document, refused for what it is
                await self._refuse(refused.reason, operator=said)
            elif refused.reason != self._refused:  # anyone's: a few records a minute, however many come
                self._refused = refused.reason
                await self.refusals.add(self.fleet.thing, refused.reason, said)
            return
        if document is None:
            return  # not newer than what is held
        if self.fleet.signatures_required:
            try:
                await asyncio.to_thread(setattr, self.ledger, "desired_issued_at", document.issued_at)
            except LedgerError as exc:
                log.error("fleet ledger not writable", extra={"error": str(exc)})
        self._document, self._refused, self._cleared_said = document, None, False
        self.models = dict(document.args["models"])
        self._failed.clear()
        log.info("desired state taken", extra={"models": self.models, "operator": document.operator})
        self.on_change()
        self._changed.set()

    def _verify(self, desired: Desired) -> SignedJob | None:
        """The set_desired document to follow; None when it is not newer than the one held."""
        fleet = self.fleet
        if not fleet.signatures_required:
            models = desired.models or {}
            check_args("set_desired", {"models": models})
            now = time.time()
            job = SignedJob("set_desired", {"models": models}, "aws", f"shadow-{desired.version}", now, now + 86400)
            return None if self.models == models else job
        if desired.signed is None:
            raise JobRefused("unsigned")
        job = verify_document(desired.signed, fleet.trusted, fleet.thing)
        if job.operation != "set_desired":
            raise JobRefused(f"not allowed: a {job.operation} document is no desired state", verified=True)
        applied = self.ledger.desired_issued_at
        held = self._document.issued_at if self._document is not None else None
        if (applied is not None and job.issued_at < applied) or (held is not None and job.issued_at <= held):
            return None
        return job

    async def _refuse(self, reason: str, *, operator: str | None) -> None:
        """Said once per reason (the same retained message is heard again at each reconnect)."""
        if reason == self._refused:
            return
        self._refused = reason
        log.warning("desired state refused", extra={"reason": reason, "operator": operator})
        await self.audit(
            "fleet.desired_refused", self.fleet.thing, **self._by(operator), reason=reason, operator=operator
        )

    def _by(self, operator: str | None) -> dict[str, str]:
        """The audit's actor for a verified document's operator (AWS IoT's word is no key id)."""
        return {"actor": f"fleet:{operator}"} if operator and self.fleet.signatures_required else {}

    # -- keeping the store at it -----------------------------------------------------------------
    async def run(self) -> None:
        """Forever: reconciles when desired state arrives, and every RETRY_S (what failed goes again)."""
        async with TaskGroup() as group:
            group.create_task(self.refusals.run(), name="desired refusals")
            while True:
                raise_if_cancelled()  # a stop that a publish's wait swallowed ends the loop, not waits again
                await wait_at_most(self._changed.wait(), RETRY_S)
                self._changed.clear()
                if self.models is not None and self._document is not None:
                    await self.reconcile()

    async def reconcile(self) -> None:
        """Each desired model not at its version is changed, one at a time; newer desired state stops
        the round (the next one follows it)."""
        document = self._document
        for name, version in sorted((self.models or {}).items()):
            if self._document is not document:
                return
            failed = self._failed.get((name, version))
            if failed is not None and time.monotonic() - failed < RETRY_S:
                continue
            current, kept = await asyncio.to_thread(self._installed, name)
            if current == version:
                continue
            job = self._job(name, version, kept, document)
            if job is None:
                self._failed[name, version] = time.monotonic()
                await self._refuse(
                    f"{name} {version}: not kept here and no fleet.packages to fetch it from",
                    operator=document.operator if document else None,
                )
                continue
            async with self.lock:
                await self._change(job)

    def _installed(self, name: str) -> tuple[str | None, set[str]]:
        """The current version of ``name`` and the versions the store keeps."""
        try:
            row = next((row for row in self.store.list() if row["name"] == name), None)
        except (OSError, ValueError, EdgeSightError):
            return None, set()
        if row is None:
            return None, set()
        kept = {
            entry["version"]
            for entry in row.get("installed", [])
            if (self.store.root / name / f"{entry['version']}.espkg").is_file()
        }
        return row.get("current"), kept

    def _job(self, name: str, version: str, kept: set[str], document: SignedJob | None) -> SignedJob | None:
        """The operation that brings ``name`` to ``version``, under the desired document's operator."""
        if document is None:
            return None
        if version in kept:
            return _derived(document, "rollback_model", {"name": name, "version": version})
        if self.fleet.packages is None:
            return None
        quote = urllib.parse.quote
        url = self.fleet.packages.format(name=quote(name, safe=""), version=quote(version, safe=""))
        return _derived(document, "install_model", {"url": url, "sha256": None, "name": name, "version": version})

    async def _change(self, job: SignedJob) -> None:
        name, version = job.args["name"], job.args["version"]

        async def step(text: str) -> None:
            log.info("desired model step", extra={"model": name, "version": version, "step": text})

        try:
            async with timeout(self.fleet.job_timeout_s + GRACE_S):
                details = await self.operate(job, self.context, step)
        except JobFailed as failed:
            reason = failed.reason
        except (TimeoutError, asyncio.TimeoutError):
            reason = f"timed out: no end after {self.fleet.job_timeout_s + GRACE_S:g} s"
        except Exception as exc:  # an operation's bug fails this change, never the service
            log.error("desired model change crashed", exc_info=True, extra={"model": name})
            reason = f"{type(exc).__name__}: {exc}"
        else:
            log.info("desired model applied", extra={"model": name, "version": version})
            await self.audit(
                "fleet.desired_applied", name, **self._by(job.operator), version=version, operation=job.operation,
                operator=job.operator, previous=details.get("previous"),
            )  # fmt: skip
            self.on_change()
            return
        self._failed[name, version] = time.monotonic()
        self.context.watch.note_error(f"desired {name} {version} failed: {reason}")
        log.warning("desired model not applied", extra={"model": name, "version": version, "reason": reason})
        await self.audit(
            "fleet.desired_refused", name, **self._by(job.operator), version=version, reason=reason,
            operator=job.operator,
        )  # fmt: skip
        self.on_change()


def _derived(document: SignedJob, operation: str, args: dict[str, Any]) -> SignedJob:
    """A job of the desired document's authority: its operator, nonce and window."""
    return SignedJob(operation, args, document.operator, document.nonce, document.issued_at, document.expires_at)


def _nothing() -> None:
    pass

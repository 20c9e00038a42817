"""One model's worker: the newest pending frame of each camera, batched and run off the event loop.

A worker holds at most one pending frame per camera: a newer frame of the camera replaces the one
waiting (counted as ``behind``). It takes up to ``max_batch`` of them, oldest first (waiting at most
``max_wait_ms`` for a batch to fill), runs them on a thread and publishes one Detections per frame.
This is not a subscription's backlog drained to its newest message (``Subscriber.receive_newest``):
frames arrive while a batch runs, a still frame never replaces a pending one, and each model keeps
its own pending frames.

The worker knows nothing of the service that holds it: what it needs from around it comes as
:class:`WorkerLinks`, four calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from common._compat import wait_at_most
from common.config import ModelConfig
from common.errors import EdgeSightError
from common.trust import TrustPolicy
from contracts import Detections, FrameRef
from services.inference import metrics
from services.inference.detector import Detector

__all__ = ["ModelWorker", "WorkerLinks", "load_record"]

log = logging.getLogger(__name__)


class Audit(Protocol):
    """Appends to the site's audit trail (``Service.audit``)."""

    def __call__(self, action: str, target: str, **detail: Any) -> Awaitable[None]: ...


@dataclasses.dataclass(frozen=True)
class WorkerLinks:
    """What a worker calls outside itself; the service holds its workers, never the reverse."""

    infer: Callable[[str, Detector, list[FrameRef]], list[Detections]]  # blocking: called on a thread
    publish: Callable[[Detections], Awaitable[None]]
    load: Callable[[str], Detector]  # model NAME loaded again, under the site's trust as it is now; blocking
    audit: Audit


def load_record(detector: Detector) -> dict[str, str]:
    """What the audit trail says of a model load: which version runs, from where, signed by whom."""
    spec = detector.spec
    return {
        "version": detector.version,
        "source": Path(spec.source).name,
        "signer": spec.package.signer if spec.package is not None else "unsigned",
        "sha256": spec.digest,
    }


class ModelWorker:
    """Batches the newest frame of each camera for one model and runs them off the event loop."""

    def __init__(self, name: str, config: ModelConfig, detector: Detector, links: WorkerLinks) -> None:
        self.name = name
        self.config = config
        self.detector = detector
        self.links = links
        self.pending: dict[str, FrameRef] = {}  # camera -> its newest frame not yet run
        self.last_run: dict[str, float] = {}
        self.wakeup = asyncio.Event()
        self.retired: list[Detector] = []  # replaced by a reload; closed once no batch can use them
        self.refused: Path | None = None  # the current package refused at start (serving an older one): watched
        self.full = asyncio.Event()  # a whole batch is pending: no reason to wait longer
        for reason in metrics.SKIP_REASONS:
            metrics.SKIPPED.labels(name, reason)  # at 0 from the start: a share of skipped frames is computable
        self._describe()

    def _describe(self) -> None:
        backend = self.detector.backend
        metrics.MODEL_INFO.labels(self.name, self.detector.version, backend.name, backend.provider).set(1)
        log.info(
            "model ready",
            extra={
                "model": self.name,
                "version": self.detector.version,
                "backend": backend.name,
                "provider": backend.provider,
                "batch": backend.max_batch,
            },
        )

    def offer(self, ref: FrameRef) -> None:
        now = time.monotonic()
        if (
            self.config.skip_still_frames
            and ref.motion < self.config.min_motion
            and now - self.last_run.get(ref.camera, 0.0) < self.config.recheck_s
        ):
            metrics.SKIPPED.labels(self.name, "still").inc()
            return
        if ref.camera in self.pending:
            metrics.SKIPPED.labels(self.name, "behind").inc()  # newest wins
        self.pending[ref.camera] = ref
        self.wakeup.set()
        if len(self.pending) >= self.config.max_batch:
            self.full.set()

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            while self.retired:  # batches run one at a time: none is using a retired model now
                self.retired.pop().close()
            refs = await self._next_batch()
            detector = self.detector  # a reload swaps it between batches, never during one
            try:
                results = await asyncio.to_thread(self.links.infer, self.name, detector, refs)
            except Exception:
                log.exception("inference failed", extra={"model": self.name})
                metrics.SKIPPED.labels(self.name, "error").inc(len(refs))
                continue
            for detections in results:
                await self.links.publish(detections)

    async def _next_batch(self) -> list[FrameRef]:
        """Up to ``max_batch`` pending frames, oldest first, taken off the pending ones."""
        limit = self.config.max_batch
        if len(self.pending) < limit and self.config.max_wait_ms > 0:
            await wait_at_most(self.full.wait(), self.config.max_wait_ms / 1000)  # let a batch fill
        refs = sorted(self.pending.values(), key=lambda r: r.monotonic_ns)[:limit]
        for ref in refs:
            del self.pending[ref.camera]
            self.last_run[ref.camera] = time.monotonic()
        if not self.pending:
            self.wakeup.clear()
        if len(self.pending) < limit:
            self.full.clear()
        return refs

    async def reload(self, reason: str) -> None:
        """Loads the model again beside the running one and swaps it in; the old one keeps serving on failure."""
        try:
            fresh = await asyncio.to_thread(self.links.load, self.name)
        except Exception as exc:  # whatever a half-written file makes a loader raise: keep serving
            metrics.RELOADS.labels(self.name, "failed").inc()
            error = str(exc) if isinstance(exc, EdgeSightError) else repr(exc)
            log.error("model reload failed; the loaded version stays", extra={"model": self.name, "error": error})
            # a refused package (a changed byte, another signer) is a security event, not only an error
            await self.links.audit("model.load_failed", self.name, error=error, kept=self.detector.version)
            return
        old = self.detector
        metrics.MODEL_INFO.labels(self.name, old.version, old.backend.name, old.backend.provider).set(0)
        self.detector = fresh
        self.refused = None  # the configured model loaded: off the fallback
        metrics.RELOADS.labels(self.name, "ok").inc()
        log.info("model reloaded", extra={"model": self.name, "reason": reason, "from": old.version})
        self._describe()
        self.retired.append(old)
        await self.links.audit("model.load", self.name, **load_record(fresh), previous=old.version, reason=reason)

    async def recheck(self, trust: TrustPolicy) -> None:
        """After the site's keys changed: is what serves still trusted? The loaded model keeps serving
        (the next load is checked against the new keys and refused); the refusal is logged and audited."""
        spec = self.detector.spec
        if spec.package is not None:
            if spec.package.signer in trust.trusted:
                return
            error = (
                f"{spec.source}: signed by key {spec.package.signer}, which is no longer a trusted key "
                f"(trusted: {', '.join(sorted(trust.trusted)) or 'none'})"
            )
        else:
            try:
                trust.check_plain(
                    spec.model_path, allow_unsigned=self.config.allow_unsigned, what=f"models.{self.name}"
                )
                return
            except EdgeSightError as exc:
                error = str(exc)
        version = self.detector.version
        log.error(
            "the loaded model is no longer trusted; it serves until the next load, which refuses it",
            extra={"model": self.name, "version": version, "error": error},
        )
        await self.links.audit("model.untrusted", self.name, version=version, error=error, kept=version)

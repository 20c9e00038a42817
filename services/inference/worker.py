"""One model's worker: the newest pending frame of each camera, run on the model's engines off the event loop.

A worker holds at most one pending frame per camera: a newer frame of the camera replaces the one
waiting (counted as ``behind``). Each engine (a copy of the model, ``models.<name>.engines``) takes
pending frames as soon as it is free, longest waiting first, up to ``max_batch`` (waiting at most
``max_wait_ms`` for a batch to fill while it is the only engine free), runs them on a thread and
publishes one Detections per frame. So the work goes by load: an engine never idles while frames
wait, and one busy camera keeps every engine busy. A camera's Detections leave in the order its
frames were taken, whichever engine finished first. This is not a subscription's backlog drained to
its newest message (``Subscriber.receive_newest``): frames arrive while a batch runs, a still frame
never replaces a pending one, and each model keeps its own pending frames.

The worker knows nothing of the service that holds it: what it needs from around it comes as
:class:`WorkerLinks`, four calls.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from common._compat import TaskGroup, wait_at_most
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
    """Feeds the newest frame of each camera to the engines of one model as they come free."""

    def __init__(self, name: str, config: ModelConfig, engines: Sequence[Detector], links: WorkerLinks) -> None:
        if not engines:
            raise ValueError("a model worker needs at least one engine")
        self.name = name
        self.config = config
        self.engines = list(engines)  # copies of one model; engine i runs one batch at a time
        self.links = links
        self.pending: dict[str, FrameRef] = {}  # camera -> its newest frame not yet taken by an engine
        self._offered: dict[str, int] = {}  # camera -> when its pending frame arrived: oldest first
        self.last_run: dict[str, float] = {}
        self.wakeup = asyncio.Event()
        self.retired: list[Detector] = []  # replaced by a reload; closed once no batch can use them
        self.refused: Path | None = None  # the current package refused at start (serving an older one): watched
        self.full = asyncio.Event()  # a whole batch is pending: no reason to wait longer
        self._running: list[Detector | None] = [None] * len(self.engines)  # what each engine runs now
        self._taken: dict[str, collections.deque[int]] = {}  # camera -> tickets of its frames in flight, in order
        self._finished: dict[int, Detections | None] = {}  # ticket -> its result (None: dropped), not yet sent
        self._tickets = 0
        self._sending = asyncio.Lock()  # one sender at a time keeps each camera's order on the bus
        for reason in metrics.SKIP_REASONS:
            metrics.SKIPPED.labels(name, reason)  # at 0 from the start: a share of skipped frames is computable
        self._describe()

    @property
    def detector(self) -> Detector:
        """The model as loaded (every engine is a copy of it): its version, spec and backend."""
        return self.engines[0]

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
                "engines": len(self.engines),
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
        self._offered[ref.camera] = time.monotonic_ns()  # our own clock: a sender's monotonic_ns could jump the queue
        self.wakeup.set()
        if len(self.pending) >= self.config.max_batch:
            self.full.set()

    async def run(self) -> None:
        async with TaskGroup() as group:
            for index in range(len(self.engines)):
                group.create_task(self._run_engine(index), name=f"{self.name}-engine-{index}")

    async def _run_engine(self, index: int) -> None:
        while True:
            await self.wakeup.wait()
            await self._close_retired()
            refs = await self._next_batch()
            if not refs:  # another engine took them first
                continue
            engine = self._running[index] = self.engines[index]  # a reload swaps it between batches
            tickets = self._take(refs)
            try:
                results = await asyncio.to_thread(self.links.infer, self.name, engine, refs)
            except Exception:
                log.exception("inference failed", extra={"model": self.name})
                metrics.SKIPPED.labels(self.name, "error").inc(len(refs))
                results = []
            finally:
                self._running[index] = None
            by_camera = {detections.frame.camera: detections for detections in results}
            for ref, ticket in zip(refs, tickets, strict=True):
                self._finished[ticket] = by_camera.get(ref.camera)  # a stale frame has none
            await self._send_in_order()

    async def _close_retired(self) -> None:
        """Closes the models a reload replaced, once no engine runs a batch on them."""
        busy = {id(engine) for engine in self._running if engine is not None}
        done = [old for old in self.retired if id(old) not in busy]
        self.retired = [old for old in self.retired if id(old) in busy]
        await close_detectors(done)

    async def close(self) -> None:
        """Closes every engine, the retired ones too (at the service's stop)."""
        retired, self.retired = self.retired, []
        await close_detectors([*self.engines, *retired])  # kept in the list: health and logs still name them

    def _take(self, refs: list[FrameRef]) -> list[int]:
        """A ticket per frame, queued behind the camera's frames already in flight."""
        tickets = []
        for ref in refs:
            self._tickets += 1
            self._taken.setdefault(ref.camera, collections.deque()).append(self._tickets)
            tickets.append(self._tickets)
        return tickets

    async def _send_in_order(self) -> None:
        """Publishes every finished result whose camera has nothing older still running."""
        async with self._sending:
            ready: list[Detections] = []
            for camera, queue in list(self._taken.items()):
                while queue and queue[0] in self._finished:
                    result = self._finished.pop(queue.popleft())
                    if result is not None:
                        ready.append(result)
                if not queue:
                    del self._taken[camera]
            for detections in ready:
                await self.links.publish(detections)

    async def _next_batch(self) -> list[FrameRef]:
        """Pending frames for one engine, oldest first, taken off the pending ones: up to ``max_batch``
        (and the engine's own batch size), and no more than a fair share while other engines are free."""
        limit = min(self.config.max_batch, max(1, self.detector.max_batch))
        free = sum(engine is None for engine in self._running)
        if free > 1:
            limit = min(limit, max(1, math.ceil(len(self.pending) / free)))
        elif len(self.pending) < limit and self.config.max_wait_ms > 0:
            await wait_at_most(self.full.wait(), self.config.max_wait_ms / 1000)  # let a batch fill
        refs = sorted(self.pending.values(), key=lambda r: self._offered[r.camera])[:limit]
        for ref in refs:
            del self.pending[ref.camera]
            self.last_run[ref.camera] = time.monotonic()
        if not self.pending:
            self.wakeup.clear()
        if len(self.pending) < self.config.max_batch:
            self.full.clear()
        return refs

    async def reload(self, reason: str) -> None:
        """Loads the model again beside the running one, as many engines as before, and swaps them in;
        the old ones keep serving on failure."""
        fresh: list[Detector] = []
        try:
            for _ in self.engines:
                fresh.append(await asyncio.to_thread(self.links.load, self.name))
        except Exception as exc:  # whatever a half-written file makes a loader raise: keep serving
            await close_detectors(fresh)
            metrics.RELOADS.labels(self.name, "failed").inc()
            error = str(exc) if isinstance(exc, EdgeSightError) else repr(exc)
            log.error("model reload failed; the loaded version stays", extra={"model": self.name, "error": error})
            # a refused package (a changed byte, another signer) is a security event, not only an error
            await self.links.audit("model.load_failed", self.name, error=error, kept=self.detector.version)
            return
        old = self.detector
        metrics.MODEL_INFO.labels(self.name, old.version, old.backend.name, old.backend.provider).set(0)
        self.retired += self.engines
        self.engines = fresh
        self.refused = None  # the configured model loaded: off the fallback
        metrics.RELOADS.labels(self.name, "ok").inc()
        log.info("model reloaded", extra={"model": self.name, "reason": reason, "from": old.version})
        self._describe()
        await self.links.audit(
            "model.load", self.name, **load_record(self.detector), previous=old.version, reason=reason
        )

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


async def close_detectors(detectors: list[Detector]) -> None:
    """Closes each on a thread: a backend's close waits for its GPU stream, never on the event loop;
    one that fails to close does not keep the others open."""
    for detector in detectors:
        try:
            await asyncio.to_thread(detector.close)
        except Exception:
            log.exception("closing a model failed", extra={"model": detector.name})

"""The inference service: FrameRefs in, frames read zero-copy from shared memory, Detections out.

Each model has a worker holding the newest pending frame per camera; it takes up to ``max_batch``
of them (waiting at most ``max_wait_ms`` for a batch to fill), runs them on a thread and publishes
one Detections per frame. Replicas split the cameras: ``EDGESIGHT_INFERENCE_SHARD=i/n`` serves
the cameras whose index (sorted by name) is i modulo n, so no frame is processed twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common._compat import TaskGroup, wait_at_most
from common.bus import Subscriber
from common.config import INFERENCE_SHARD_VARIABLE, ModelConfig, SiteConfig
from common.errors import ConfigError, EdgeSightError, ShmError, StaleFrameError
from common.privacy import apply_privacy_masks
from common.service import Service, ServiceState
from common.shm import ChannelOrder, FrameReaders, FrameRingReader, colour_view
from common.shm.ring import FrameView
from common.trust import TrustPolicy, TrustWatch, load_installed, model_search_path, site_trust
from contracts import Control, Detections, FrameRef, InferenceTiming, topic
from services.inference import metrics
from services.inference.detector import Detector

__all__ = ["InferenceService", "ModelWorker", "parse_shard"]

log = logging.getLogger(__name__)

RELOAD_POLL_S = 2.0


def parse_shard(text: str) -> tuple[int, int]:
    """``"1/3"`` -> (1, 3): this replica is number 1 of 3 (0-based)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError([f"{INFERENCE_SHARD_VARIABLE}={text!r}: expected INDEX/COUNT, e.g. 0/2"]) from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError([f"{INFERENCE_SHARD_VARIABLE}={text!r}: need 0 <= INDEX < COUNT"])
    return index, count


class ModelWorker:
    """Batches the newest frame of each camera for one model and runs them off the event loop."""

    def __init__(self, name: str, config: ModelConfig, detector: Detector, service: InferenceService) -> None:
        self.name = name
        self.config = config
        self.detector = detector
        self.service = service
        self.pending: dict[str, FrameRef] = {}
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
            detector = self.detector  # a reload swaps it between batches, never during one
            try:
                results = await asyncio.to_thread(self.service.infer, self.name, detector, refs)
            except Exception:
                log.exception("inference failed", extra={"model": self.name})
                metrics.SKIPPED.labels(self.name, "error").inc(len(refs))
                continue
            for detections in results:
                await self.service.publish_detections(detections)

    async def reload(self, reason: str) -> None:
        """Loads the model again beside the running one and swaps it in; the old one keeps serving on failure."""
        try:
            fresh = await asyncio.to_thread(self.service.load, self.name)
        except Exception as exc:  # whatever a half-written file makes a loader raise: keep serving
            metrics.RELOADS.labels(self.name, "failed").inc()
            error = str(exc) if isinstance(exc, EdgeSightError) else repr(exc)
            log.error("model reload failed; the loaded version stays", extra={"model": self.name, "error": error})
            # a refused package (a changed byte, another signer) is a security event, not only an error
            await self.service.audit("model.load_failed", self.name, error=error, kept=self.detector.version)
            return
        old = self.detector
        metrics.MODEL_INFO.labels(self.name, old.version, old.backend.name, old.backend.provider).set(0)
        self.detector = fresh
        self.refused = None  # the configured model loaded: off the fallback
        metrics.RELOADS.labels(self.name, "ok").inc()
        log.info("model reloaded", extra={"model": self.name, "reason": reason, "from": old.version})
        self._describe()
        self.retired.append(old)
        await self.service.audit_model(self.name, fresh, previous=old.version, reason=reason)

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
        await self.service.audit("model.untrusted", self.name, version=version, error=error, kept=version)


class InferenceService(Service):
    """Runs the site's detection models on the frames of this replica's cameras."""

    name = "inference"

    def setup(self) -> None:
        self.shard = parse_shard(os.environ.get(INFERENCE_SHARD_VARIABLE, "0/1"))
        self.workers: dict[str, ModelWorker] = {}
        self.routes: dict[str, list[ModelWorker]] = {}  # camera -> the workers of its models
        self._readers: dict[str, FrameReaders] = {}  # model -> its readers
        self.frames_done = 0
        self.inference_ms: dict[str, float] = {}  # model -> smoothed backend time per frame
        self._inference_ms_lock = threading.Lock()  # written on worker threads, read on the loop
        self._unreadable: dict[str, str] = {}  # segment -> the error last logged for it
        self.trust = TrustWatch(self.config)  # site.trusted_keys, read again when it changes

    def load(self, name: str, path: str | None = None) -> Detector:
        """Model ``name`` of the site file (or its package at ``path``), under the site's trust policy as
        it is now (blocking: run it on a thread)."""
        config = self.config.models[name]
        if path is not None:
            config = config.model_copy(update={"path": path})
        search = model_search_path(self.config.site)
        return Detector.from_config(config, search, trust=self.trust.policy, what=f"models.{name}")

    async def start_model(self, name: str) -> ModelWorker:
        """Loads model ``name``; if its current installed package is refused (a key taken out of the site,
        a package changed on disk), the newest installed version that verifies serves instead of none:
        a service that cannot start would only be restarted to fail again."""
        reference = self.config.models[name].path
        site = self.config.site
        detector, fallback = await asyncio.to_thread(load_installed, reference, site, lambda p: self.load(name, p))
        worker = ModelWorker(name, self.config.models[name], detector, self)
        if fallback is not None:
            worker.refused = fallback.refused
            log.error(
                "the current package is refused; started on an older installed version that verifies",
                extra={
                    "model": name,
                    "version": fallback.version,
                    "refused": str(fallback.refused),
                    "error": fallback.error,
                },
            )
            await self.audit(
                "model.fallback", name, version=fallback.version, refused=fallback.refused.name, error=fallback.error
            )
        await self.audit_model(name, detector)
        return worker

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """Every model file exists and loads, its classes are among its labels, and every class a rule
        names is a label of one of its camera's models."""
        problems = []
        labels: dict[str, set[str]] = {}
        try:
            trust = site_trust(config)
        except ConfigError as exc:
            return exc.problems
        for name, model in config.models.items():
            try:
                detector = Detector.from_config(
                    model, model_search_path(config.site), trust=trust, what=f"models.{name}"
                )
            except Exception as exc:  # whatever the loader raises, it is this model's problem
                problems.append(f"{config.where('models', name, 'path')}: {exc}")
                continue
            labels[name] = set(detector.labels)
            detector.close()
        for camera_name, camera in config.cameras.items():
            models = [m for m in (camera.models or list(config.models)) if m in labels]
            if len(models) < len(camera.models or config.models):
                continue  # a model that did not load is reported above
            known = set().union(*(labels[m] for m in models))
            for rule_name, rule in camera.rules.items():
                for index, label in enumerate(getattr(rule, "classes", None) or ()):
                    if label not in known:
                        where = config.where("cameras", camera_name, "rules", rule_name, "classes", index)
                        problems.append(f"{where}: no model of this camera has the class {label!r}")
        return problems

    async def audit_model(self, name: str, detector: Detector, **detail: str) -> None:
        """Which model now runs, from where, signed by whom: one audit record per load."""
        spec = detector.spec
        await self.audit(
            "model.load",
            name,
            version=detector.version,
            source=Path(spec.source).name,
            signer=spec.package.signer if spec.package is not None else "unsigned",
            sha256=spec.digest,
            **detail,
        )

    def assignment(self) -> dict[str, list[str]]:
        """Camera -> model names, for this replica's share of the cameras."""
        index, count = self.shard
        enabled = sorted(name for name, camera in self.config.cameras.items() if camera.enabled)
        mine = [camera for position, camera in enumerate(enabled) if position % count == index]
        return {
            camera: list(self.config.cameras[camera].models or self.config.models)
            for camera in mine
            if self.config.cameras[camera].models or self.config.models
        }

    async def main(self) -> None:
        assignment = self.assignment()
        used = sorted({model for models in assignment.values() for model in models})
        if not used:
            shard = "/".join(map(str, self.shard))
            enabled = [name for name, camera in self.config.cameras.items() if camera.enabled]
            if len(enabled) > self.shard[0]:  # cameras, but no model for them: a site file to fix
                log.warning("no models to run for this replica's cameras", extra={"shard": shard})
            else:  # more replicas than cameras: expected, this one waits
                log.info("no cameras for this replica (more replicas than cameras)", extra={"shard": shard})
        for name in used:  # load (and check) every model before serving: errors now, not at the first frame
            self.workers[name] = await self.start_model(name)
        for camera, models in assignment.items():
            self.routes[camera] = [self.workers[m] for m in models]
        topics = [topic("frames", camera) for camera in self.routes]
        async with Subscriber(self.config.bus.subscribe, self.name, topics, hwm=self.config.bus.frames_hwm) as frames:
            self.set_state(ServiceState.READY)
            async with TaskGroup() as group:
                group.create_task(self._receive(frames), name="receive")
                group.create_task(self._watch_models(), name="watch-models")
                for worker in self.workers.values():
                    group.create_task(worker.run(), name=f"model-{worker.name}")

    async def _receive(self, frames: Subscriber) -> None:
        async for received in frames:
            ref = received.message
            if not isinstance(ref, FrameRef) or self.paused:
                continue
            for worker in self.routes.get(ref.camera, ()):
                worker.offer(ref)

    def infer(self, model: str, detector: Detector, refs: list[FrameRef]) -> list[Detections]:
        """On a worker thread: views into shared memory, one batch through ``model``, torn reads dropped.

        ``model`` is the site's name for it (``models.<name>``), what Detections and metrics carry."""
        views: list[FrameView] = []
        now = time.monotonic_ns()
        for ref in refs:
            try:
                views.append(self._reader(model, ref.segment).view(ref))
            except StaleFrameError:
                metrics.SKIPPED.labels(model, "stale").inc()
            except ShmError as exc:  # a forged, missing or foreign segment: not a frame we can trust
                metrics.SKIPPED.labels(model, "rejected").inc()
                if self._unreadable.get(ref.segment) != str(exc) and len(self._unreadable) < 1024:
                    self._unreadable[ref.segment] = str(exc)  # logged once per segment and reason
                    log.warning("cannot read frame", extra={"camera": ref.camera, "error": str(exc)})
            else:
                metrics.FRAME_AGE.labels(model).observe(max(0, now - ref.monotonic_ns) / 1e9)
        if not views:
            return []
        started = time.perf_counter()
        inputs = [self._model_input(view) for view in views]
        results, timings = detector.detect([frame for frame, _ in inputs], [order for _, order in inputs])
        metrics.PIPELINE_SECONDS.labels(model).observe(time.perf_counter() - started)
        backend = detector.backend
        for timing in timings:
            metrics.BATCH_SIZE.labels(model).observe(timing.batch_size)
            labels = (model, backend.name, backend.provider, str(timing.batch_size))
            metrics.INFERENCE_SECONDS.labels(*labels).observe(timing.inference_ns / 1e9)
            per_frame_ms = timing.inference_ns / 1e6 / timing.batch_size
            with self._inference_ms_lock:
                previous = self.inference_ms.get(model, per_frame_ms)
                self.inference_ms[model] = 0.9 * previous + 0.1 * per_frame_ms  # smoothed for Health
        total = timings[0]
        messages = []
        for view, result in zip(views, results, strict=True):
            if not view.valid():  # overwritten while it was letterboxed: the result may mix two frames
                metrics.SKIPPED.labels(model, "stale").inc()
                continue
            metrics.FRAMES.labels(model).inc()
            present = {int(c) for c in np.unique(result.class_ids)}
            messages.append(
                Detections.from_arrays(
                    view.ref,
                    model,
                    boxes=result.boxes,
                    class_ids=result.class_ids,
                    scores=result.scores,
                    model_version=detector.version,
                    labels={c: detector.labels[c] for c in present},
                    labels_ref=f"{model}@{detector.version}",
                    timing=InferenceTiming(
                        preprocess_ns=total.preprocess_ns,
                        inference_ns=total.inference_ns,
                        postprocess_ns=total.postprocess_ns,
                        batch_size=total.batch_size,
                        backend=backend.name,
                        provider=backend.provider,
                    ),
                )
            )
        return messages

    def _model_input(self, view: FrameView) -> tuple[npt.NDArray[np.uint8], ChannelOrder]:
        """The frame as the model may see it, and its channel order: the ring's pixels in place, unless
        the camera has privacy masks with ``inference: true``, applied to a copy (the ring is every reader's)."""
        frame, order = colour_view(view.array, view.ref.pixel_format)
        camera = self.config.cameras.get(view.ref.camera)
        masks = [mask for mask in camera.privacy_masks if mask.inference] if camera is not None else []
        if masks:
            frame = apply_privacy_masks(frame.copy() if frame is view.array else frame, masks)
        return frame, order

    def _reader(self, model: str, segment: str) -> FrameRingReader:
        """Readers per model: each model's batches run on their own thread, and a reader (which may
        remap after a writer restart) is used by one thread at a time."""
        readers = self._readers.get(model)
        if readers is None:
            readers = self._readers[model] = FrameReaders(self.config.site.shm_dir)
        return readers.reader(segment)

    async def publish_detections(self, detections: Detections) -> None:
        assert self.publisher is not None
        await self.publisher.publish("detections", detections.frame.camera, detections)
        self.frames_done += 1

    async def _refresh_trust(self) -> None:
        """Reads site.trusted_keys again if it changed, and says which loaded model it no longer trusts."""
        if await asyncio.to_thread(self.trust.refresh):
            await self.audit(
                "model.trust_changed", "site.trusted_keys", trusted=" ".join(sorted(self.trust.policy.trusted))
            )
            for worker in self.workers.values():
                await worker.recheck(self.trust.policy)
                if worker.refused is not None:  # on a fallback: the current package may verify under the new keys
                    await worker.reload("site.trusted_keys changed")

    async def _watch_models(self) -> None:
        """Reloads a model whose manifest or weights file changed on disk; follows site.trusted_keys."""

        def stamps() -> dict[str, tuple[float, ...]]:
            result = {}
            for name, worker in self.workers.items():
                spec = worker.detector.spec
                files = {Path(spec.source), spec.model_path}
                refused = (worker.refused,) if worker.refused is not None else ()
                # on a fallback, the refused link too: an install or rollback repoints it (lstat sees that)
                result[name] = (*(_mtime(p) for p in sorted(files)), *(_mtime(p, link=True) for p in refused))
            return result

        seen = stamps()
        while True:
            await asyncio.sleep(RELOAD_POLL_S)
            await self._refresh_trust()
            now = stamps()
            for name, stamp in now.items():
                if stamp != seen.get(name):
                    await self.workers[name].reload("the model files changed")
            seen = stamps()

    async def on_control(self, command: Control) -> None:
        """``reload`` (``args.model`` names one model, else all) loads again and swaps without stopping."""
        if command.command == "reload":
            await self._refresh_trust()  # a reload right after a key change is checked against the new keys
            wanted = command.args.get("model")
            for name, worker in self.workers.items():
                if wanted in (None, name):
                    await worker.reload(f"control {command.id}")
        else:
            await super().on_control(command)

    def health_counters(self) -> dict[str, float]:
        counters = {"models": len(self.workers), "cameras": len(self.routes), "frames": self.frames_done}
        with self._inference_ms_lock:
            smoothed = dict(self.inference_ms)
        return counters | {f"inference_ms.{model}": round(ms, 2) for model, ms in smoothed.items()}

    def health_detail(self) -> dict[str, str]:
        return {
            name: f"{w.detector.version} {w.detector.backend.name}/{w.detector.backend.provider}"
            for name, w in self.workers.items()
        }


def _mtime(path: Path, *, link: bool = False) -> float:
    """0.0 for a file that is absent, or replaced between listing and stat; ``link``: the link's own."""
    try:
        return (path.lstat() if link else path.stat()).st_mtime
    except OSError:
        return 0.0

"""The inference service: FrameRefs in, frames read zero-copy from shared memory, Detections out.

Each model has a worker (:mod:`services.inference.worker`) that feeds the newest pending frame of
each camera to the model's engines as they come free; a batch runs through
:class:`~services.inference.batch.BatchRunner`. How many engines and threads, when the site file says
``auto``, is :mod:`common.models.sizing`'s choice. Replicas (separate processes) split the cameras
(:mod:`services.inference.shard`), so no frame is processed twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from common._compat import TaskGroup
from common.bus import Subscriber
from common.config import SiteConfig
from common.errors import ConfigError, ModelError
from common.models.engine_cache import cancel_builds
from common.models.loading import load_model_spec
from common.models.sizing import Sizing, size_model, usable_cores
from common.service import Service, ServiceState, control_reply
from common.trust import TrustPolicy, TrustWatch, load_installed, model_search_path, site_trust
from contracts import Control, Detections, FrameRef, topic
from services.inference import metrics
from services.inference.batch import BatchRunner
from services.inference.detector import Detector
from services.inference.shard import assignment, replica_shard
from services.inference.worker import ModelWorker, WorkerLinks, load_record

__all__ = ["InferenceService"]

log = logging.getLogger(__name__)

RELOAD_POLL_S = 2.0


class InferenceService(Service):
    """Runs the site's detection models on the frames of this replica's cameras."""

    name = "inference"

    def setup(self) -> None:
        self.shard = replica_shard(os.environ, self.config)
        self.workers: dict[str, ModelWorker] = {}
        self.routes: dict[str, list[ModelWorker]] = {}  # camera -> the workers of its models
        self.batches = BatchRunner(self.config)
        self.frames_done = 0
        self.sizing: dict[str, Sizing] = {}  # model -> its engines and threads, as chosen at start
        self._last_reload: str | None = None  # how the last reload Control ended, for its sender (Health detail)
        self.trust = TrustWatch(self.config)  # site.trusted_keys, read again when it changes
        self._links = WorkerLinks(
            infer=self.batches.infer, publish=self.publish_detections, load=self.load, audit=self.audit
        )

    def load(self, name: str, path: str | None = None) -> Detector:
        """Model ``name`` of the site file (or its package at ``path``), under the site's trust policy as
        it is now (blocking: run it on a thread)."""
        config = self.config.models[name]
        sizing = self.sizing.get(name)
        if sizing is not None:  # each engine on its share of the cores
            config = config.model_copy(update={"threads": sizing.threads})
        if path is not None:
            config = config.model_copy(update={"path": path})
        search = model_search_path(self.config.site)
        return Detector.from_config(config, search, trust=self.trust.policy, what=f"models.{name}")

    async def start_model(self, name: str, cameras: int = 1) -> ModelWorker:
        """Loads model ``name`` on as many engines as its sizing says for ``cameras``; if its current
        installed package is refused (a key taken out of the site, a package changed on disk), the newest
        installed version that verifies serves instead of none: a service that cannot start would only be
        restarted to fail again."""
        sizing = self.sizing[name] = size_model(
            self.config.models[name], cameras=cameras, cores=usable_cores(), processes=self.shard[1]
        )
        sized = {
            "model": name,
            "engines": sizing.engines,
            "threads": sizing.threads or "onnxruntime",
            "why": sizing.why,
        }
        if sizing.crowded:
            log.warning("model sized: more threads than cores", extra=sized | {"fix": sizing.crowded})
        else:
            log.info("model sized", extra=sized)
        metrics.ENGINES.labels(name).set(sizing.engines)
        metrics.THREADS.labels(name).set(sizing.threads)
        reference = self.config.models[name].path
        site = self.config.site
        detector, fallback = await asyncio.to_thread(load_installed, reference, site, lambda p: self.load(name, p))
        engines = [detector]
        for _ in range(sizing.engines - 1):  # copies of exactly what loaded (the fallback's file, if it is one)
            engines.append(await asyncio.to_thread(self.load, name, detector.spec.source))
        worker = ModelWorker(name, self.config.models[name], engines, self._links)
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
        await self.audit("model.load", name, **load_record(detector))
        return worker

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """Every model file exists and loads, its classes are among its labels, and every class a rule
        names is a label of one of its camera's models (of its ``model:``, where it names one the site runs)."""
        problems: list[str] = []
        labels: dict[str, set[str]] = {}
        try:
            trust = site_trust(config)
        except ConfigError as exc:
            return exc.problems
        for name in config.models:
            try:
                labels[name] = cls._check_model(config, name, trust, problems)
            except Exception as exc:  # whatever the loader raises, it is this model's problem
                problems.append(f"{config.where('models', name, 'path')}: {exc}")
        for camera_name, camera in config.cameras.items():
            models = [m for m in (camera.models or list(config.models)) if m in labels]
            if len(models) < len(camera.models or config.models):
                continue  # a model that did not load is reported above
            known = set().union(*(labels[m] for m in models))
            for rule_name, rule in camera.rules.items():
                if rule.model is not None and rule.model not in labels:
                    continue  # an external detector's (its labels are not known here) or one reported above
                wanted = labels[rule.model] if rule.model is not None else known
                for index, label in enumerate(getattr(rule, "classes", None) or ()):
                    if label not in wanted:
                        where = config.where("cameras", camera_name, "rules", rule_name, "classes", index)
                        problems.append(f"{where}: no model of this camera has the class {label!r}")
        return problems

    @staticmethod
    def _check_model(config: SiteConfig, name: str, trust: TrustPolicy, problems: list[str]) -> set[str]:
        """Model ``name`` loaded as the service would, its labels returned. TensorRT is checked without a
        build of minutes: the machine (``tensorrt_problems``), then an ONNX model on ONNX Runtime; a
        serialized ``.engine``, which only TensorRT reads, by its manifest."""
        model, what, search = config.models[name], f"models.{name}", model_search_path(config.site)
        if model.backend == "tensorrt":
            from common.models.tensorrt import tensorrt_problems

            where = config.where("models", name, "backend")
            problems += [f"{where}: {problem}" for problem in tensorrt_problems()]
            spec = load_model_spec(model.path, search, trust, allow_unsigned=model.allow_unsigned, what=what)
            if spec.manifest.file.endswith(".engine") or spec.model_path.suffix == ".engine":
                unknown = sorted(set(model.classes) - set(spec.labels))
                if unknown:
                    raise ModelError(f"model {spec.name!r} has no classes {unknown} (it has {len(spec.labels)} labels)")
                return set(spec.labels)
            model = model.model_copy(update={"backend": "onnxruntime"})
        detector = Detector.from_config(model, search, trust=trust, what=what)
        detector.close()
        return set(detector.labels)

    async def main(self) -> None:
        cameras = assignment(self.config, self.shard)
        used = sorted({model for models in cameras.values() for model in models})
        if not used:
            shard = "/".join(map(str, self.shard))
            enabled = [name for name, camera in self.config.cameras.items() if camera.enabled]
            if len(enabled) > self.shard[0]:  # cameras, but no model for them: a site file to fix
                log.warning("no models to run for this replica's cameras", extra={"shard": shard})
            else:  # more replicas than cameras: this one waits, doing nothing
                log.warning(
                    "no cameras for this replica: run.inference_replicas is more than the cameras; "
                    "auto (one process whose engines share the cores) needs none idle",
                    extra={"shard": shard, "cameras": len(enabled)},
                )
        try:
            await self._serve(used, cameras)
        finally:  # a GPU's buffers and streams are freed on every way out, off the event loop
            cancel_builds()  # an engine being built at a stop is abandoned, not waited for
            for worker in self.workers.values():
                await worker.close()

    async def _serve(self, used: list[str], cameras: dict[str, list[str]]) -> None:
        for name in used:  # load (and check) every model before serving: errors now, not at the first frame
            served = sum(name in models for models in cameras.values())
            self.workers[name] = await self.start_model(name, served)
        for camera, models in cameras.items():
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
            # "done", not "applied": a model that failed to load keeps its old version, which its own
            # detail entry says; the sender (the fleet) compares that with what it installed
            self._last_reload = control_reply(command, "done")
            await self.send_health()
        else:
            await super().on_control(command)

    def health_counters(self) -> dict[str, float]:
        counters = {"models": len(self.workers), "cameras": len(self.routes), "frames": self.frames_done}
        for model, sizing in self.sizing.items():  # shown in `edgesight run`'s table: what auto chose
            counters |= {f"engines.{model}": sizing.engines, f"threads.{model}": sizing.threads}
        smoothed = self.batches.inference_ms()
        return counters | {f"inference_ms.{model}": round(ms, 2) for model, ms in smoothed.items()}

    def health_detail(self) -> dict[str, str]:
        """Per model ``"<version> <backend>/<provider>"``; ``reload``: how the last reload Control ended."""
        detail = {
            name: f"{w.detector.version} {w.detector.backend.name}/{w.detector.backend.provider}"
            for name, w in self.workers.items()
        }
        return detail if self._last_reload is None else detail | {"reload": self._last_reload}


def _mtime(path: Path, *, link: bool = False) -> float:
    """0.0 for a file that is absent, or replaced between listing and stat; ``link``: the link's own."""
    try:
        return (path.lstat() if link else path.stat()).st_mtime
    except OSError:
        return 0.0

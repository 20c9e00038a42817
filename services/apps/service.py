"""The apps service: AWS Panorama applications, each in its own sandbox, served over a channel.

Each app runs as its own unprivileged uid in a bubblewrap sandbox (``sandbox.py``, started by
``launch.py``) and sees no bus, shared memory, site file or model file. What it needs comes through
its channel, a Unix socket this service serves (``channel.py``, spoken by
``sdk/_edgesight_channel.py``): its cameras' newest frames, privacy masks applied (``video_in.py``),
its model nodes run here (each package verified here, never in the app: ``models.py``), its
``video_out`` drawn here (``video_out.py``) and published on the bus (``apps/<app>/``:
``AppStatus``, ``AppVideo``) for the console, which serves it behind its login. This service's own
HTTP port serves only /metrics, /healthz, /readyz.

An app that exits is restarted with backoff, one that hangs or grows past its limits is killed
(``supervision.py``); what an app prints or logs is relayed cut and rate-limited (``output.py``).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

from common._compat import TaskGroup
from common.bus import Subscriber
from common.config import AppConfig, SiteConfig
from common.errors import ConfigError, EdgeSightError
from common.models import open_backend
from common.models.engine_cache import cancel_builds
from common.models.loading import model_file
from common.service import Service, ServiceState
from common.shm import FrameReaders
from common.trust import TrustPolicy, site_trust
from contracts import AppVideo, topic
from services.apps import metrics
from services.apps.channel import ChannelServer
from services.apps.environments import environment_problems
from services.apps.launch import host_user, unreadable
from services.apps.models import AppModels
from services.apps.output import LineGate, follow_log_files
from services.apps.paths import LOGS, app_dirs
from services.apps.running_app import RunningApp
from services.apps.supervision import AppSupervisor
from services.apps.video_in import VideoIn
from services.apps.video_out import VideoOut

__all__ = ["AppsService"]

STATUS_EVERY_S = 2.0


class AppsService(Service):
    """Runs the site's Panorama applications."""

    name = "apps"

    def setup(self) -> None:
        state_dir = Path(self.config.site.state_dir).resolve()
        self.apps_dir = state_dir / "apps"
        self.apps = {
            name: RunningApp(name, app, app.user_id(name), AppModels(self.config, name, app, self.audit_trail))
            for name, app in self.config.apps.items()
            if app.enabled
        }
        self.readers = FrameReaders(self.config.site.shm_dir)
        self.video_in = VideoIn(self.config.cameras, self.readers, self.apps)
        self.supervisor = AppSupervisor(self.apps_dir, self.config.site.name)

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """Each app's code, entry point, environment and model files, and the sandbox's tools."""
        problems = []
        try:
            policy = site_trust(config)
        except ConfigError as exc:
            return exc.problems
        if config.apps:
            for tool, package in (("bwrap", "bubblewrap"), ("pasta", "passt")):
                needed = tool == "bwrap" or any(app.network == "own" for app in config.apps.values())
                if needed and shutil.which(tool) is None:
                    problems.append(f"{config.where('apps')}: {tool} is not installed (apt install {package})")
        for name, app in config.apps.items():
            problems += _app_problems(config, name, app, policy)
        return problems

    async def main(self) -> None:
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        topics = [
            topic("frames", camera) for camera in sorted({c for a in self.apps.values() for c in a.config.cameras})
        ]
        channels = ChannelServer(self.apps_dir, self.video_in, VideoOut(self.config.cameras, self._publish_video))
        servers = []
        try:
            for app in self.apps.values():
                servers.append(await channels.open(app))
            async with Subscriber(self.config.bus.subscribe, self.name, topics, hwm=100) as frames:
                self.set_state(ServiceState.READY)
                async with TaskGroup() as group:
                    group.create_task(self.video_in.receive(frames), name="frames")
                    for app in self.apps.values():
                        gate = LineGate(app.name, app.output)
                        group.create_task(self.supervisor.keep_running(app, gate), name=f"app-{app.name}")
                        group.create_task(self.supervisor.watch(app), name=f"watch-{app.name}")
                        group.create_task(self._report(app), name=f"status-{app.name}")
                        logs = app_dirs(self.apps_dir.parent, app.name)[LOGS]
                        group.create_task(follow_log_files(logs, gate), name=f"logs-{app.name}")
        finally:
            cancel_builds()  # an app model's TensorRT engine being built at a stop is abandoned, not waited for
            for server in servers:
                server.close()
            for app in self.apps.values():
                await self.supervisor.kill(app)
                app.state = "stopped"
                await asyncio.to_thread(app.models.close)  # a GPU backend's close waits for its stream
            self.readers.close()

    async def _publish_video(self, app: str, video: AppVideo) -> None:
        if self.publisher is not None:
            await self.publisher.publish("apps", app, video)

    async def _report(self, app: RunningApp) -> None:
        """``AppStatus`` on ``apps/<app>/``: on every change and every few seconds."""
        while True:
            try:
                await asyncio.wait_for(app.changed.wait(), STATUS_EVERY_S)
            except asyncio.TimeoutError:
                pass
            app.changed.clear()
            metrics.FRAMES.labels(app.name).set(app.frames)
            metrics.SKIPPED.labels(app.name).set(app.skipped)
            if self.publisher is not None:
                await self.publisher.publish("apps", app.name, app.status(self.instance))

    # -- health ------------------------------------------------------------------------------
    def health_counters(self) -> dict[str, float]:
        return {
            "apps": len(self.apps),
            "running": sum(1 for app in self.apps.values() if app.state == "running"),
            "restarts": sum(app.restarts for app in self.apps.values()),
        }

    def health_detail(self) -> dict[str, str]:
        return {name: app.state for name, app in self.apps.items()}


def _app_problems(config: SiteConfig, name: str, app: AppConfig, policy: TrustPolicy) -> list[str]:
    """What keeps app ``name`` from starting: its code, entry, environment, uid or model files."""
    problems = []
    inside = not app.entry.startswith("/") or app.entry.startswith("/panorama/")
    entry = app.code / app.entry.removeprefix("/panorama/")
    if not app.code.is_dir():
        problems.append(f"{config.where('apps', name, 'code')}: {app.code} is not a folder")
    elif inside and not entry.is_file():
        problems.append(f"{config.where('apps', name, 'entry')}: {entry} does not exist")
    elif (problem := unreadable(app.code)) is not None:
        problems.append(f"{config.where('apps', name, 'code')}: {problem}")
    problems += environment_problems(config, name, app)
    owner = host_user(app.user_id(name))
    if owner is not None:
        problems.append(
            f"{config.where('apps', name, 'uid')}: uid {app.user_id(name)} is the host user {owner!r}'s; "
            f"an app needs a uid of its own (its processes are killed and its folders chowned): "
            f"set apps.{name}.uid"
        )
    for node, model in app.models.items():
        try:
            what = f"apps.{name}.models.{node}"
            file = model_file(model.path, config.site, policy, allow_unsigned=model.allow_unsigned, what=what)
            backend = model.backend
            if backend == "tensorrt":  # checked without a build of minutes; the model itself on ONNX Runtime
                from common.models.tensorrt import tensorrt_problems

                where = config.where("apps", name, "models", node, "backend")
                problems += [f"{where}: {problem}" for problem in tensorrt_problems()]
                backend = "onnxruntime"
            if file.path.suffix != ".engine":  # a serialized engine only TensorRT reads: checked above
                open_backend(file, backend, model.providers).close()
        except EdgeSightError as exc:
            problems.append(f"{config.where('apps', name, 'models', node, 'path')}: {exc}")
    return problems

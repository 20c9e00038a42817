"""The apps service: AWS Panorama applications as child processes, their video_out on HTTP.

Each app runs in its own process (``services.apps.host`` -> the app's entry point), so one app's
crash or hang never stops another: a process that exits is restarted with backoff and its last
words (the app's traceback) are logged; one that has not asked for a frame for ``hang_timeout_s`` is
killed and restarted. Each app process reports on a PUSH socket to this service: its output frames
(JPEG) and, every second, what it took and skipped. Served on the service's port::

    GET /apps                               {"<app>": {"state", "frames", "skipped", "restarts", "video", "log"}}
    GET /apps/<app>/video/<camera>.jpg      the newest output frame (labels and rectangles drawn)
    GET /apps/<app>/video/<camera>.mjpg     the output as MJPEG (what Panorama's HDMI port showed)
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from common._compat import TaskGroup
from common.config import AppConfig, SiteConfig
from common.errors import ConfigError, EdgeSightError
from common.models import open_backend
from common.process import die_with_parent, stop
from common.service import Service, ServiceState
from common.trust import model_file, site_trust
from services.apps import metrics
from services.apps.paths import LOGS, app_dirs

__all__ = ["AppsService"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 5.0
LAST_WORDS = 40  # lines of an app's output kept to explain its exit
MJPEG_BOUNDARY = "edgesight-frame"
_VIDEO = re.compile(r"^/apps/(?P<app>[^/]+)/video/(?P<camera>[^/]+)\.(?P<kind>jpg|mjpg)$")


@dataclass
class _App:
    name: str
    config: AppConfig
    state: str = "starting"
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    frames: int = 0
    skipped: int = 0
    busy_s: float = 0.0
    pid: int = 0
    stats_at: float = 0.0
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LAST_WORDS))
    video: dict[str, bytes] = field(default_factory=dict)  # camera -> newest JPEG
    video_seq: int = 0


class AppsService(Service):
    """Runs the site's Panorama applications."""

    name = "apps"

    def setup(self) -> None:
        self.apps = {name: _App(name, app) for name, app in self.config.apps.items() if app.enabled}
        state_dir = Path(self.config.site.state_dir).resolve()
        self.channel_path = state_dir / "apps" / f"channel-{self.instance}.sock"
        self.new_frame = threading.Condition()  # HTTP threads wait on it for MJPEG
        self.stopping = threading.Event()
        self.site_file = str(Path(self.config.source).resolve())

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """Each app's code folder and entry point exist, and its model files load."""
        problems = []
        try:
            policy = site_trust(config)
        except ConfigError as exc:
            return exc.problems
        for name, app in config.apps.items():
            inside = not app.entry.startswith("/") or app.entry.startswith("/panorama/")
            entry = app.code / app.entry.removeprefix("/panorama/")
            if not app.code.is_dir():
                problems.append(f"{config.where('apps', name, 'code')}: {app.code} is not a folder")
            elif inside and not entry.is_file():
                problems.append(f"{config.where('apps', name, 'entry')}: {entry} does not exist")
            for node, model in app.models.items():
                try:
                    what = f"apps.{name}.models.{node}"
                    file = model_file(model.path, config.site, policy, allow_unsigned=model.allow_unsigned, what=what)
                    open_backend(file, model.backend, model.providers).close()
                except EdgeSightError as exc:
                    problems.append(f"{config.where('apps', name, 'models', node, 'path')}: {exc}")
        return problems

    def log_path(self, app: str) -> Path:
        return app_dirs(Path(self.config.site.state_dir).resolve(), app)[LOGS]

    async def main(self) -> None:
        self.channel_path.parent.mkdir(parents=True, exist_ok=True)
        self.channel_path.unlink(missing_ok=True)
        channel = zmq.asyncio.Context.instance().socket(zmq.PULL)
        channel.setsockopt(zmq.LINGER, 0)
        channel.bind(f"ipc://{self.channel_path}")
        try:
            self.set_state(ServiceState.READY)
            async with TaskGroup() as group:
                group.create_task(self._receive(channel), name="channel")
                group.create_task(self._follow_logs(), name="app-logs")
                for app in self.apps.values():
                    group.create_task(self._keep_running(app), name=f"app-{app.name}")
                    group.create_task(self._watch_hang(app), name=f"hang-{app.name}")
        finally:
            self.stopping.set()
            with self.new_frame:
                self.new_frame.notify_all()
            for app in self.apps.values():
                await stop(app.process, STOP_GRACE_S)
            channel.close(linger=0)
            self.channel_path.unlink(missing_ok=True)

    async def _keep_running(self, app: _App) -> None:
        backoff = FIRST_BACKOFF_S
        while True:
            app.output.clear()
            app.state = "starting"
            app.stats_at, app.busy_s = 0.0, 0.0  # the hang watch starts with the new process's first report
            app.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "services.apps.host",
                "--config",
                self.site_file,
                "--app",
                app.name,
                "--channel",
                f"ipc://{self.channel_path}",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                limit=1 << 20,
                preexec_fn=die_with_parent(),  # no app outlives this service
            )
            started = time.monotonic()
            metrics.RUNNING.labels(app.name).set(1)
            log.info("app started", extra={"app": app.name, "pid": app.process.pid})
            await self._relay_output(app)
            code = await app.process.wait()
            metrics.RUNNING.labels(app.name).set(0)
            if time.monotonic() - started > STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            why = "hung" if app.state == "hung" else "exited"
            app.state = "restarting"
            app.restarts += 1
            metrics.RESTARTS.labels(app.name, why).inc()
            log.error(
                "app exited; restarting",
                extra={"app": app.name, "code": code, "backoff_s": backoff, "output": "\n".join(app.output)},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _relay_output(self, app: _App) -> None:
        """The app's stdout/stderr (print, tracebacks) into this service's log, and kept for its exit."""
        assert app.process is not None and app.process.stdout is not None
        async for raw in app.process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if line:
                app.output.append(line)
                log.info("app output", extra={"app": app.name, "line": line[:2000]})

    async def _watch_hang(self, app: _App) -> None:
        """Kills an app whose process runs but has not asked for frames in ``hang_timeout_s``."""
        while True:
            await asyncio.sleep(1.0)
            process = app.process
            if process is None or process.returncode is not None or not app.stats_at:
                continue
            silent = time.monotonic() - app.stats_at  # a frozen process stops reporting at all
            if app.busy_s + silent > app.config.hang_timeout_s:
                log.error(
                    "app hung; killing it",
                    extra={
                        "app": app.name,
                        "busy_s": round(app.busy_s + silent, 1),
                        "limit_s": app.config.hang_timeout_s,
                    },
                )
                app.state = "hung"  # counted as such when _keep_running sees the exit
                app.stats_at = 0.0
                process.kill()

    async def _receive(self, channel: zmq.asyncio.Socket) -> None:
        while True:
            frames = await channel.recv_multipart()
            kind, name = frames[0], frames[1].decode(errors="replace") if len(frames) > 1 else ""
            app = self.apps.get(name)
            if app is None:
                continue
            if kind == b"video" and len(frames) == 4:
                camera = frames[2].decode(errors="replace")
                if camera in app.config.cameras:
                    with self.new_frame:
                        app.video[camera] = frames[3]
                        app.video_seq += 1
                        self.new_frame.notify_all()
            elif kind == b"stats" and len(frames) == 3:
                try:
                    stats = json.loads(frames[2])
                except ValueError:
                    continue
                app.frames, app.skipped = int(stats.get("frames", 0)), int(stats.get("skipped", 0))
                app.busy_s, app.pid, app.stats_at = (
                    float(stats.get("busy_s", 0.0)),
                    int(stats.get("pid", 0)),
                    time.monotonic(),
                )
                if app.state not in ("hung",):
                    app.state = "running"
                metrics.FRAMES.labels(app.name).set(app.frames)
                metrics.SKIPPED.labels(app.name).set(app.skipped)

    async def _follow_logs(self) -> None:
        """What each app writes under /opt/aws/panorama/logs also reaches this service's log."""
        offsets: dict[Path, int] = {}
        while True:
            for app in self.apps.values():
                folder = self.log_path(app.name)
                for path in sorted(folder.glob("*.log")) if folder.is_dir() else []:
                    size = path.stat().st_size
                    offset = offsets.get(path, 0)
                    if size < offset:
                        offset = 0  # rotated
                    if size > offset:
                        with path.open("rb") as file:
                            file.seek(offset)
                            chunk = file.read(size - offset)
                        complete = chunk.rfind(b"\n") + 1
                        for line in chunk[:complete].decode(errors="replace").splitlines():
                            if line.strip():
                                log.info("app log", extra={"app": app.name, "file": path.name, "line": line[:2000]})
                        offsets[path] = offset + complete
            await asyncio.sleep(0.5)

    # -- HTTP (on the HTTP endpoint's threads) ----------------------------------------------------
    def http_route(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes] | None:
        path = environ.get("PATH_INFO", "")
        if path in ("/apps", "/apps/"):
            body = json.dumps(self.describe(), indent=2).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        match = _VIDEO.match(path)
        if match is None:
            return None
        app = self.apps.get(match["app"])
        camera = match["camera"]
        if app is None or camera not in app.config.cameras:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such app or camera\n"]
        if match["kind"] == "jpg":
            picture = app.video.get(camera)
            if picture is None:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain"), ("Retry-After", "1")])
                return [b"no frame from this app yet\n"]
            start_response("200 OK", [("Content-Type", "image/jpeg"), ("Cache-Control", "no-store")])
            return [picture]
        start_response(
            "200 OK",
            [("Content-Type", f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"), ("Cache-Control", "no-store")],
        )
        return self._mjpeg(app, camera)

    def _mjpeg(self, app: _App, camera: str) -> Iterator[bytes]:
        seen = -1

        def changed() -> bool:
            return app.video_seq != seen or self.stopping.is_set()

        while not self.stopping.is_set():
            with self.new_frame:
                self.new_frame.wait_for(changed, timeout=5.0)
                seen, picture = app.video_seq, app.video.get(camera)
            if picture is None or self.stopping.is_set():
                continue
            yield (
                f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(picture)}\r\n\r\n".encode()
                + picture
                + b"\r\n"
            )

    def describe(self) -> dict[str, Any]:
        return {
            name: {
                "state": app.state,
                "pid": app.pid,
                "frames": app.frames,
                "skipped": app.skipped,
                "restarts": app.restarts,
                "video": [f"/apps/{name}/video/{camera}.mjpg" for camera in app.config.cameras],
                "log": str(self.log_path(name) / "app.log"),
            }
            for name, app in self.apps.items()
        }

    def health_counters(self) -> dict[str, float]:
        return {
            "apps": len(self.apps),
            "running": sum(1 for app in self.apps.values() if app.state == "running"),
            "restarts": sum(app.restarts for app in self.apps.values()),
        }

    def health_detail(self) -> dict[str, str]:
        return {name: app.state for name, app in self.apps.items()}

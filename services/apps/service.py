"""The apps service: AWS Panorama applications, each in its own sandbox, served over a channel.

Each app runs as its own unprivileged uid in a bubblewrap sandbox (``sandbox.py``) and sees no bus,
shared memory, site file or model file. What it needs comes through its channel, a Unix socket this
service serves (``sdk/_edgesight_channel.py``): its cameras' newest frames (privacy masks applied),
its model nodes run here (each package verified here, never in the app), its ``video_out`` drawn
here and published on the bus (``apps/<app>/``: ``AppStatus``, ``AppVideo``) for the console, which
serves it behind its login. This service's own HTTP port serves only /metrics, /healthz, /readyz.

An app that exits is restarted with backoff and its last words logged; one that has not asked for a
frame for ``hang_timeout_s`` is killed (``why="hung"``), one over its memory limit too
(``why="memory"``). What an app prints or logs is relayed cut and rate-limited (``output.py``).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import pwd
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common._compat import TaskGroup
from common.bus import Subscriber
from common.config import AppConfig, SiteConfig
from common.errors import ConfigError, EdgeSightError, ShmError, StaleFrameError
from common.models import open_backend
from common.privacy import apply_privacy_masks
from common.process import stop
from common.service import Service, ServiceState
from common.shm import FrameReaders
from common.trust import model_file, site_trust
from common.urls import redact_url
from contracts import AppStatus, AppVideo, FrameRef, topic
from services.apps import metrics
from services.apps.channel_requests import (
    RequestError,
    model_feeds,
    output_picture,
    render_output,
    typed_parameter,
    widen_send_buffer,
)
from services.apps.environments import environment_problems, environment_python
from services.apps.models import AppModels
from services.apps.output import LAST_WORDS, LineGate, follow_log_files, relay_lines
from services.apps.paths import LOGS, PANORAMA, STORAGE, app_dirs
from services.apps.sandbox import (
    CHANNEL_DIR,
    SANDBOX_FAILED,
    SDK_DIR,
    SPEC_VARIABLE,
    Bind,
    Cgroup,
    SandboxSpec,
    disk_bytes,
    processes_of,
    resident_bytes,
)
from services.apps.sdk._edgesight_channel import ChannelError, header_length, pack, unpack_header

__all__ = ["AppsService"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STABLE_AFTER_S = 60.0
STOP_GRACE_S = 5.0
STATUS_EVERY_S = 2.0
STALE_AFTER_S = 3.0  # a camera silent this long gives its last frame marked stale
DISK_EVERY = 10  # seconds between looks at an app's logs and storage on disk
MAX_CONNECTIONS = 8  # per app: one per thread of the app that talks to the SDK
BIG_MESSAGE = 1 << 20  # messages larger than this are read one at a time per app
SDK = Path(__file__).resolve().parent / "sdk"
LAUNCHER = Path(__file__).resolve().parent / "sandbox.py"


@dataclass
class _Last:
    pixels: npt.NDArray[np.uint8]
    capture_ns: int


@dataclass
class _App:
    name: str
    config: AppConfig
    uid: int
    models: AppModels
    state: str = "starting"
    error: str = ""
    process: asyncio.subprocess.Process | None = None
    cgroup: Cgroup | None = None
    restarts: int = 0
    last_restart: str | None = None
    killed_for: str | None = None  # hung | memory: why this service killed the running process
    started: float = 0.0
    frames: int = 0
    skipped: int = 0
    asked: bool = False  # the running process has asked for frames at least once
    waiting: bool = False  # inside get(): blocked on the cameras, not on the app
    last_get: float = 0.0
    # camera -> the FrameRef last handed over, compared by identity: a restarted ingest counts seq from 0 again
    taken: dict[str, FrameRef] = field(default_factory=dict)
    last: dict[str, _Last] = field(default_factory=dict)
    connections: int = 0
    big_read: asyncio.Lock = field(default_factory=asyncio.Lock)
    memory_bytes: int = 0
    disk_bytes: int = 0
    oom_kills: int = 0
    rendering: bool = False  # a video_out picture is being drawn: the next put is dropped, not queued
    output: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=LAST_WORDS))
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class AppsService(Service):
    """Runs the site's Panorama applications."""

    name = "apps"

    def setup(self) -> None:
        state_dir = Path(self.config.site.state_dir).resolve()
        self.apps_dir = state_dir / "apps"
        self.apps = {
            name: _App(name, app, app.user_id(name), AppModels(self.config, name, app, self.audit_trail))
            for name, app in self.config.apps.items()
            if app.enabled
        }
        self.readers = FrameReaders(self.config.site.shm_dir)
        self.newest: dict[str, FrameRef] = {}
        self.arrived_at: dict[str, float] = {}
        self.arrived = asyncio.Condition()

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
            inside = not app.entry.startswith("/") or app.entry.startswith("/panorama/")
            entry = app.code / app.entry.removeprefix("/panorama/")
            if not app.code.is_dir():
                problems.append(f"{config.where('apps', name, 'code')}: {app.code} is not a folder")
            elif inside and not entry.is_file():
                problems.append(f"{config.where('apps', name, 'entry')}: {entry} does not exist")
            elif (unreadable := _unreadable(app.code)) is not None:
                problems.append(f"{config.where('apps', name, 'code')}: {unreadable}")
            problems += environment_problems(config, name, app)
            owner = _host_user(app.user_id(name))
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
                    open_backend(file, model.backend, model.providers).close()
                except EdgeSightError as exc:
                    problems.append(f"{config.where('apps', name, 'models', node, 'path')}: {exc}")
        return problems

    async def main(self) -> None:
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        bus = self.config.bus
        topics = [
            topic("frames", camera) for camera in sorted({c for a in self.apps.values() for c in a.config.cameras})
        ]
        servers = []
        try:
            for app in self.apps.values():
                servers.append(await self._open_channel(app))
            async with Subscriber(bus.subscribe, self.name, topics, hwm=100) as frames:
                self.set_state(ServiceState.READY)
                async with TaskGroup() as group:
                    group.create_task(self._receive(frames), name="frames")
                    for app in self.apps.values():
                        gate = LineGate(app.name, app.output)
                        group.create_task(self._keep_running(app, gate), name=f"app-{app.name}")
                        group.create_task(self._watch(app), name=f"watch-{app.name}")
                        group.create_task(self._report(app), name=f"status-{app.name}")
                        logs = app_dirs(self.apps_dir.parent, app.name)[LOGS]
                        group.create_task(follow_log_files(logs, gate), name=f"logs-{app.name}")
        finally:
            for server in servers:
                server.close()
            for app in self.apps.values():
                await self._kill(app)
                app.state = "stopped"
                app.models.close()
            self.readers.close()

    # -- each app's process ------------------------------------------------------------------
    def _spec(self, app: _App) -> SandboxSpec:
        base = self.apps_dir / app.name
        dirs = app_dirs(self.apps_dir.parent, app.name)
        python = environment_python(self.apps_dir.parent, app.name, app.config) or Path(sys.executable)
        binds = [
            Bind(str(app.config.code.resolve()), str(PANORAMA)),
            Bind(str(dirs[LOGS]), str(LOGS), writable=True),
            Bind(str(dirs[STORAGE]), str(STORAGE), writable=True),
            Bind(str(base / "channel"), CHANNEL_DIR),
            Bind(str(SDK), SDK_DIR),
        ]
        # the Pythons it runs on, at their own paths (a venv names its base by absolute path)
        prefixes = {Path(sys.prefix), Path(sys.base_prefix)}
        if python != Path(sys.executable):
            venv = python.parent.parent
            prefixes.add(venv)
            home = _venv_home(venv)
            if home is not None:
                prefixes.add(home)
        for prefix in sorted(prefixes):
            if prefix != Path("/usr") and not prefix.is_relative_to("/usr"):
                binds.append(Bind(str(prefix), str(prefix)))
        interpreter = str(python) if app.config.interpreter == "python3" else "/bin/bash"
        entry = app.config.entry if app.config.entry.startswith("/") else str(PANORAMA / app.config.entry)
        env = {
            "PATH": f"{python.parent}:/usr/local/bin:/usr/bin:/bin",
            "HOME": "/tmp",
            "LANG": "C.UTF-8",
            "PYTHONPATH": SDK_DIR,
            "PYTHONUNBUFFERED": "1",
            "AppGraph_Uid": app.name,
            **app.config.env,
        }
        limits = app.config.limits
        return SandboxSpec(
            app=app.name,
            uid=app.uid,
            binds=binds,
            argv=[interpreter, entry],
            env=env,
            network=app.config.network,
            ports=[(p.host_port, p.app_port, p.protocol) for p in app.config.ports],
            processes=limits.processes,
            open_files=limits.open_files,
            memory_bytes=0 if app.cgroup is not None else limits.memory_mb << 20,
            cgroup_procs=app.cgroup.procs_files() if app.cgroup is not None else [],
        )

    def _prepare(self, app: _App) -> None:
        """The app's folders, owned by its uid where it writes; its cgroup."""
        base = self.apps_dir / app.name
        base.mkdir(parents=True, exist_ok=True)
        for folder in app_dirs(self.apps_dir.parent, app.name).values():
            folder.mkdir(parents=True, exist_ok=True)
            os.chown(folder, app.uid, app.uid)
            folder.chmod(0o700)
        limits = app.config.limits
        if app.cgroup is None:
            name = f"{self.config.site.name}.{app.name}"
            app.cgroup = Cgroup.create(name, limits.memory_mb << 20, limits.processes, limits.cpu_share)
            if app.cgroup is None:
                log.warning("no cgroup for the app: rlimits and the service's memory watch", extra={"app": app.name})
        app.oom_kills = app.cgroup.oom_kills() if app.cgroup is not None else 0

    async def _keep_running(self, app: _App, gate: LineGate) -> None:
        owner = _host_user(app.uid)
        if owner is not None:  # never kill a person's processes or chown to them
            app.state, app.error = "failed", f"uid {app.uid} is the host user {owner!r}'s: set apps.{app.name}.uid"
            app.changed.set()
            log.error("app not started", extra={"app": app.name, "error": app.error})
            await asyncio.Event().wait()
        backoff = FIRST_BACKOFF_S
        while True:
            app.output.clear()
            app.state, app.killed_for = "starting", None  # error: why it last stopped, until it stops again
            app.asked, app.frames, app.skipped, app.taken = False, 0, 0, {}
            unreadable = _unreadable(app.config.code)
            if unreadable:  # the same thing every time: said once, looked at again every 30 s
                app.state, app.error = "failed", f"apps.{app.name}.code: {unreadable}"
                app.changed.set()
                log.error("app not started", extra={"app": app.name, "error": app.error})
                await asyncio.sleep(MAX_BACKOFF_S)
                continue
            self._prepare(app)
            spec = self._spec(app)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PYTHONSAFEPATH": "1",
                SPEC_VARIABLE: spec.to_json(),
            }
            app.process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(LAUNCHER),  # by path, not -m: it needs nothing of EdgeSight's packages
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                cwd="/",
                env=env,
                start_new_session=True,
            )
            app.started = time.monotonic()
            metrics.RUNNING.labels(app.name).set(1)
            app.changed.set()
            log.info(
                "app started",
                extra={"app": app.name, "pid": app.process.pid, "uid": app.uid, "network": app.config.network},
            )
            assert app.process.stdout is not None
            await relay_lines(app.process.stdout, gate)
            code = await app.process.wait()
            await self._kill(app)  # whatever of it is left
            metrics.RUNNING.labels(app.name).set(0)
            if time.monotonic() - app.started > STABLE_AFTER_S:
                backoff = FIRST_BACKOFF_S
            if app.cgroup is not None and app.cgroup.oom_kills() > app.oom_kills:
                app.killed_for = "memory"
            why = app.killed_for or ("sandbox" if code == SANDBOX_FAILED else "exited")
            app.state = "failed" if why == "sandbox" else "restarting"
            app.last_restart = why
            app.error = {
                "memory": f"over its memory limit of {app.config.limits.memory_mb} MB; killed",
                "hung": f"asked for no frame for {app.config.hang_timeout_s} s; killed",
                "disk": f"its logs and storage hold {app.disk_bytes >> 20} MB, over its disk limit of "
                f"{app.config.limits.disk_mb} MB; killed (free {self.apps_dir / app.name})",
            }.get(why, app.output[-1][:1000] if app.output else f"exited with code {code}")
            app.restarts += 1
            metrics.RESTARTS.labels(app.name, why).inc()
            app.changed.set()
            log.error(
                "app stopped; restarting",
                extra={
                    "app": app.name,
                    "code": code,
                    "why": why,
                    "backoff_s": backoff,
                    "output": "\n".join(app.output),
                },
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_S)

    async def _kill(self, app: _App) -> None:
        """The app's sandbox and every process of its uid (nothing of it survives a restart)."""
        await stop(app.process, STOP_GRACE_S)
        for pid in processes_of(app.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _watch(self, app: _App) -> None:
        """Kills an app that has stopped asking for frames, or whose memory or disk is over its limit."""
        limit = app.config.limits.memory_mb << 20
        disk_limit = app.config.limits.disk_mb << 20
        folders = list(app_dirs(self.apps_dir.parent, app.name).values())
        for tick in itertools.count():
            await asyncio.sleep(1.0)
            process = app.process
            if process is None or process.returncode is not None:
                continue
            if tick % DISK_EVERY == 0:
                app.disk_bytes = await asyncio.to_thread(disk_bytes, folders)
                if app.disk_bytes > disk_limit:
                    log.error(
                        "app over its disk limit; killing it", extra={"app": app.name, "limit_mb": disk_limit >> 20}
                    )
                    app.killed_for = "disk"
                    await self._kill(app)
                    continue
            pids = await asyncio.to_thread(processes_of, app.uid)
            app.memory_bytes = await asyncio.to_thread(resident_bytes, pids)
            metrics.MEMORY.labels(app.name).set(app.memory_bytes)
            oom = app.cgroup is not None and app.cgroup.oom_kills() > app.oom_kills
            if app.memory_bytes > limit or oom:
                log.error("app over its memory limit; killing it", extra={"app": app.name, "limit_mb": limit >> 20})
                app.killed_for = "memory"
                await self._kill(app)
                continue
            if app.asked and not app.waiting and time.monotonic() - app.last_get > app.config.hang_timeout_s:
                log.error("app hung; killing it", extra={"app": app.name, "limit_s": app.config.hang_timeout_s})
                app.killed_for = "hung"
                app.state = "hung"
                await self._kill(app)

    async def _report(self, app: _App) -> None:
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
                await self.publisher.publish("apps", app.name, self.status(app))

    def status(self, app: _App) -> AppStatus:
        cgroup = "cgroup limits" if app.cgroup is not None else "rlimits + memory watch"
        return AppStatus(
            app=app.name,
            instance=self.instance,
            state=app.state,  # type: ignore[arg-type]
            ts_ns=time.time_ns(),
            cameras=list(app.config.cameras),
            frames=app.frames,
            skipped=app.skipped,
            restarts=app.restarts,
            last_restart=app.last_restart,  # type: ignore[arg-type]
            error=app.error[:1000],
            memory_mb=round(app.memory_bytes / (1 << 20), 1),
            sandbox=f"uid {app.uid}, network {app.config.network}, {cgroup}",
        )

    # -- frames from the bus -----------------------------------------------------------------
    async def _receive(self, frames: Subscriber) -> None:
        async for received in frames:
            ref = received.message
            if not isinstance(ref, FrameRef) or ref.camera != received.key:
                continue
            previous = self.newest.get(ref.camera)
            for app in self.apps.values():
                if (
                    app.asked
                    and previous is not None
                    and ref.camera in app.config.cameras
                    and app.taken.get(ref.camera) is not previous
                ):
                    app.skipped += 1  # newest wins: the app was busy with an older frame
            async with self.arrived:
                self.newest[ref.camera] = ref
                self.arrived_at[ref.camera] = time.monotonic()
                self.arrived.notify_all()

    # -- each app's channel ------------------------------------------------------------------
    async def _open_channel(self, app: _App) -> asyncio.AbstractServer:
        folder = self.apps_dir / app.name / "channel"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o711)  # the app's uid may reach the socket in it, not list or change it
        path = folder / "channel.sock"
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(lambda r, w: self._serve(app, r, w), path=str(path))
        os.chown(path, app.uid, app.uid)
        path.chmod(0o600)
        return server

    async def _serve(self, app: _App, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if app.connections >= MAX_CONNECTIONS:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            writer.close()
            return
        app.connections += 1
        widen_send_buffer(writer)
        try:
            while True:
                length = header_length(await reader.readexactly(4))
                header, sizes = unpack_header(await reader.readexactly(length))
                if sum(sizes) <= BIG_MESSAGE:
                    await self._request(app, header, [await reader.readexactly(size) for size in sizes], writer)
                    continue
                async with app.big_read:  # one large request per app in memory, read to answered
                    await self._request(app, header, [await reader.readexactly(size) for size in sizes], writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the app's thread or process ended
        except asyncio.CancelledError:
            # the service stops: asyncio's stream callback would log this handler's cancellation as an
            # error ("Exception in callback"), so it ends here, quietly, like a closed connection
            return
        except ChannelError as exc:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            log.warning(
                "app broke its channel's protocol; connection closed", extra={"app": app.name, "error": str(exc)}
            )
        finally:
            app.connections -= 1
            writer.close()

    async def _request(
        self, app: _App, header: dict[str, Any], buffers: list[bytes], writer: asyncio.StreamWriter
    ) -> None:
        try:
            answer, out = await self._answer(app, header, buffers)
        except RequestError as exc:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            answer, out = {"error": "request", "message": str(exc)[:1000]}, []
        writer.writelines(pack(answer, out))
        await writer.drain()

    async def _answer(
        self, app: _App, header: dict[str, Any], buffers: list[bytes]
    ) -> tuple[dict[str, Any], list[Any]]:
        op = header.get("op")
        if op == "hello":
            parameters = {port: typed_parameter(p.type, p.value) for port, p in app.config.parameters.items()}
            return {
                "app": app.name,
                "cameras": list(app.config.cameras),
                "video_in": app.config.video_in,
                "video_out": app.config.video_out,
                "parameters": parameters,
                "models": sorted(app.config.models),
            }, []
        if op == "get":
            return await self._get(app, header.get("timeout"))
        if op == "put":
            await self._put(app, header, buffers)
            return {}, []
        if op in ("call", "model_info"):
            model = header.get("model")
            if not isinstance(model, str) or model not in app.config.models:
                return {
                    "error": "model",
                    "message": f"model node {str(model)[:64]!r} is not in apps.{app.name}.models "
                    f"({sorted(app.config.models)})",
                }, []
            try:
                if op == "model_info":
                    return await asyncio.to_thread(app.models.info, model), []
                feeds = model_feeds(header.get("inputs"), buffers)
                outputs = await asyncio.to_thread(app.models.run, model, feeds)
            except EdgeSightError as exc:
                return {"error": "model", "message": str(exc)[:2000]}, []
            except Exception as exc:  # the runtime's own errors (ONNX Runtime's types): the app's to handle
                return {"error": "model", "message": f"{type(exc).__name__}: {str(exc)[:2000]}"}, []
            metrics.MODEL_CALLS.labels(app.name, model).inc()
            return {"outputs": [{"dtype": o.dtype.name, "shape": list(o.shape)} for o in outputs]}, outputs
        raise RequestError(f"unknown op {str(op)[:32]!r}")

    # -- video_in.get ------------------------------------------------------------------------
    def _fresh(self, app: _App, camera: str) -> bool:
        ref = self.newest.get(camera)
        return ref is not None and app.taken.get(camera) is not ref

    def _ready(self, app: _App) -> bool:
        """Every camera has a first frame, and one of them a new one."""
        cameras = app.config.cameras
        return all(c in app.last or c in self.newest for c in cameras) and any(self._fresh(app, c) for c in cameras)

    async def _get(self, app: _App, timeout: Any) -> tuple[dict[str, Any], list[Any]]:
        if timeout is not None and (not isinstance(timeout, int | float) or not math.isfinite(timeout) or timeout < 0):
            raise RequestError(f"timeout must be a number of seconds or None, got {str(timeout)[:32]}")
        end = None if timeout is None else time.monotonic() + float(timeout)
        app.asked, app.waiting = True, True
        if app.state == "starting":
            app.state = "running"
            app.changed.set()
        new: set[str] = set()  # cameras whose frame this get hands over for the first time
        try:
            while True:
                remaining = None if end is None else max(0.0, end - time.monotonic())
                try:
                    async with self.arrived:
                        await asyncio.wait_for(self.arrived.wait_for(lambda: self._ready(app)), remaining)
                except asyncio.TimeoutError:
                    return {
                        "error": "timeout",
                        "message": f"no new frame from {app.config.cameras} within {timeout} s",
                    }, []
                fresh = {c: self.newest[c] for c in app.config.cameras if self._fresh(app, c)}
                for camera, ref in fresh.items():
                    app.taken[camera] = ref
                pictures = await asyncio.to_thread(self._copy_all, list(fresh.values()))
                for ref, pixels in zip(fresh.values(), pictures, strict=True):
                    if pixels is None:
                        app.skipped += 1  # overwritten before it was read
                    else:
                        app.last[ref.camera] = _Last(pixels, ref.capture_ns)
                        new.add(ref.camera)
                if new and all(c in app.last for c in app.config.cameras):
                    break
        finally:
            app.waiting = False
            app.last_get = time.monotonic()
        streams, buffers = [], []
        now = time.monotonic()
        for camera in app.config.cameras:
            last = app.last[camera]
            pixels = last.pixels if camera in new else last.pixels.copy()  # the app may write on what it got
            app.frames += camera in new
            streams.append(
                {
                    "camera": camera,
                    "uri": redact_url(self.config.cameras[camera].url),
                    "capture_ns": last.capture_ns,
                    "cached": camera not in new,
                    "stale": now - self.arrived_at.get(camera, 0.0) > STALE_AFTER_S,
                    "shape": list(pixels.shape),
                }
            )
            buffers.append(pixels)
        return {"streams": streams}, buffers

    def _copy_all(self, refs: list[FrameRef]) -> list[npt.NDArray[np.uint8] | None]:
        """Each frame's BGR copy, privacy masks applied: an app never holds a masked area."""
        pictures: list[npt.NDArray[np.uint8] | None] = []
        for ref in refs:
            try:
                pixels = self.readers.copy(ref, "bgr")
            except (StaleFrameError, ShmError):
                pictures.append(None)
                continue
            pictures.append(apply_privacy_masks(pixels, self.config.cameras[ref.camera].privacy_masks))
        return pictures

    # -- video_out.put -----------------------------------------------------------------------
    async def _put(self, app: _App, header: dict[str, Any], buffers: list[bytes]) -> None:
        streams = header.get("streams")
        if not isinstance(streams, list) or len(streams) != len(buffers) or len(streams) > len(app.config.cameras):
            raise RequestError("put: one stream per buffer, at most one per camera")
        if app.rendering:
            return  # newest wins: an app that puts faster than its pictures are drawn costs no more CPU here
        pictures = [
            output_picture(app.config.cameras, stream, buffer) for stream, buffer in zip(streams, buffers, strict=True)
        ]
        app.rendering = True
        try:
            for stream, picture in zip(streams, pictures, strict=True):
                masks = self.config.cameras[stream["camera"]].privacy_masks
                labels, rects = stream.get("labels", []), stream.get("rects", [])
                jpeg = await asyncio.to_thread(render_output, picture, labels, rects, masks)
                if jpeg is not None and self.publisher is not None:
                    video = AppVideo(app=app.name, camera=stream["camera"], ts_ns=time.time_ns(), jpeg=jpeg)
                    await self.publisher.publish("apps", app.name, video)
        finally:
            app.rendering = False

    # -- health ------------------------------------------------------------------------------
    def health_counters(self) -> dict[str, float]:
        return {
            "apps": len(self.apps),
            "running": sum(1 for app in self.apps.values() if app.state == "running"),
            "restarts": sum(app.restarts for app in self.apps.values()),
        }

    def health_detail(self) -> dict[str, str]:
        return {name: app.state for name, app in self.apps.items()}


def _unreadable(code: Path) -> str | None:
    """Why the app's own uid cannot read its code folder (the sandbox shows it as it is), if it cannot."""
    try:
        mode = code.stat().st_mode
    except OSError as exc:
        return f"{code}: {exc.strerror}"
    if not mode & 0o005:
        return f"{code} is not readable by the app's own uid (mode {mode & 0o777:o}); chmod -R o+rX it"
    return None


def _host_user(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _venv_home(env: Path) -> Path | None:
    """The prefix of the Python a virtual environment was made from (``home`` in pyvenv.cfg)."""
    try:
        for line in (env / "pyvenv.cfg").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    except OSError:
        pass
    return None

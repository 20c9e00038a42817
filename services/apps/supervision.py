"""Keeping each app running: restarted with backoff when it stops, killed when it hangs or grows too big.

An app that exits is restarted (``common/backoff.py``) and its last words logged; one that has not
asked for a frame for ``hang_timeout_s`` is killed (``why="hung"``), one over its memory limit too
(``why="memory"``), one whose logs and storage pass its disk limit too (``why="disk"``). Nothing of
an app survives its process: every process of its uid is killed with it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import time
from pathlib import Path

from common.backoff import RestartBackoff
from common.process import stop
from services.apps import metrics
from services.apps.launch import host_user, prepare, sandbox_spec, start, unreadable
from services.apps.output import LineGate, relay_lines
from services.apps.paths import app_dirs
from services.apps.running_app import RunningApp
from services.apps.sandbox import SANDBOX_FAILED, disk_bytes, processes_of, resident_bytes

__all__ = ["FIRST_BACKOFF_S", "MAX_BACKOFF_S", "AppSupervisor"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
STOP_GRACE_S = 5.0
DISK_EVERY = 10  # seconds between looks at an app's logs and storage on disk


class AppSupervisor:
    """Runs the apps of one site (their state under ``apps_dir``), each in its sandbox, for as long as the service."""

    def __init__(self, apps_dir: Path, site_name: str) -> None:
        self.apps_dir = apps_dir
        self.site_name = site_name

    async def keep_running(self, app: RunningApp, gate: LineGate) -> None:
        """Starts the app and starts it again each time it stops; what it prints goes through ``gate``."""
        owner = host_user(app.uid)
        if owner is not None:  # never kill a person's processes or chown to them
            self._refuse(app, f"uid {app.uid} is the host user {owner!r}'s: set apps.{app.name}.uid")
            await asyncio.Event().wait()
        backoff = RestartBackoff(FIRST_BACKOFF_S, MAX_BACKOFF_S)
        while True:
            app.output.clear()
            app.state, app.killed_for = "starting", None  # error: why it last stopped, until it stops again
            app.asked, app.frames, app.skipped, app.taken = False, 0, 0, {}
            problem = unreadable(app.config.code)
            if problem:  # the same thing every time: said once, looked at again every 30 s
                self._refuse(app, f"apps.{app.name}.code: {problem}")
                await asyncio.sleep(MAX_BACKOFF_S)
                continue
            code = await self._run_once(app, gate)
            wait = backoff.next(time.monotonic() - app.started)
            self._note_stop(app, code, wait)
            await asyncio.sleep(wait)

    @staticmethod
    def _refuse(app: RunningApp, error: str) -> None:
        app.state, app.error = "failed", error
        app.changed.set()
        log.error("app not started", extra={"app": app.name, "error": app.error})

    async def _run_once(self, app: RunningApp, gate: LineGate) -> int:
        """One process of the app, from its sandbox's making to the end of whatever is left of it."""
        prepare(app, self.apps_dir, self.site_name)
        app.process = await start(sandbox_spec(app, self.apps_dir))
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
        await self.kill(app)  # whatever of it is left
        metrics.RUNNING.labels(app.name).set(0)
        return code

    def _note_stop(self, app: RunningApp, code: int, backoff_s: float) -> None:
        """Why the app stopped, in its state, error, metrics and log, before it waits ``backoff_s``."""
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
            extra={"app": app.name, "code": code, "why": why, "backoff_s": backoff_s, "output": "\n".join(app.output)},
        )

    async def kill(self, app: RunningApp) -> None:
        """The app's sandbox and every process of its uid (nothing of it survives a restart)."""
        await stop(app.process, STOP_GRACE_S)
        for pid in processes_of(app.uid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def watch(self, app: RunningApp) -> None:
        """Kills an app that has stopped asking for frames, or whose memory or disk is over its limit."""
        folders = list(app_dirs(self.apps_dir.parent, app.name).values())
        for tick in itertools.count():
            await asyncio.sleep(1.0)
            process = app.process
            if process is None or process.returncode is not None:
                continue
            if tick % DISK_EVERY == 0 and await self._over_disk(app, folders):
                continue
            if await self._over_memory(app):
                continue
            if app.asked and not app.waiting and time.monotonic() - app.last_get > app.config.hang_timeout_s:
                log.error("app hung; killing it", extra={"app": app.name, "limit_s": app.config.hang_timeout_s})
                app.killed_for = "hung"
                app.state = "hung"
                await self.kill(app)

    async def _over_disk(self, app: RunningApp, folders: list[Path]) -> bool:
        """True (and the app killed) when its logs and storage hold more than its disk limit."""
        limit = app.config.limits.disk_mb << 20
        app.disk_bytes = await asyncio.to_thread(disk_bytes, folders)
        if app.disk_bytes <= limit:
            return False
        log.error("app over its disk limit; killing it", extra={"app": app.name, "limit_mb": limit >> 20})
        app.killed_for = "disk"
        await self.kill(app)
        return True

    async def _over_memory(self, app: RunningApp) -> bool:
        """True (and the app killed) when its processes hold more than its memory limit, or its cgroup
        killed one for memory."""
        limit = app.config.limits.memory_mb << 20
        pids = await asyncio.to_thread(processes_of, app.uid)
        app.memory_bytes = await asyncio.to_thread(resident_bytes, pids)
        metrics.MEMORY.labels(app.name).set(app.memory_bytes)
        oom = app.cgroup is not None and app.cgroup.oom_kills() > app.oom_kills
        if app.memory_bytes <= limit and not oom:
            return False
        log.error("app over its memory limit; killing it", extra={"app": app.name, "limit_mb": limit >> 20})
        app.killed_for = "memory"
        await self.kill(app)
        return True

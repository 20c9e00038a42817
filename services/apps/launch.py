"""Starting one app's process: its folders and cgroup, its sandbox's spec, and the launcher that makes it.

The launcher (``sandbox.py``) runs as root and is started by path, not as ``-m services.apps.sandbox``:
it needs nothing of EdgeSight's packages, and only its spec (``SPEC_VARIABLE``, JSON) crosses over.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pwd
import sys
from pathlib import Path

from services.apps.environments import environment_python
from services.apps.paths import LOGS, PANORAMA, STORAGE, app_dirs
from services.apps.running_app import RunningApp
from services.apps.sandbox import CHANNEL_DIR, SDK_DIR, SPEC_VARIABLE, Bind, Cgroup, SandboxSpec

__all__ = ["LAUNCHER", "SDK", "channel_dir", "host_user", "prepare", "sandbox_spec", "start", "unreadable"]

log = logging.getLogger(__name__)

SDK = Path(__file__).resolve().parent / "sdk"
LAUNCHER = Path(__file__).resolve().parent / "sandbox.py"


def channel_dir(apps_dir: Path, app: str) -> Path:
    """Where the service serves ``app``'s channel socket; the app sees it as ``/run/edgesight``."""
    return apps_dir / app / "channel"


def prepare(app: RunningApp, apps_dir: Path, site_name: str) -> None:
    """The app's folders, owned by its uid where it writes; its cgroup."""
    (apps_dir / app.name).mkdir(parents=True, exist_ok=True)
    for folder in app_dirs(apps_dir.parent, app.name).values():
        folder.mkdir(parents=True, exist_ok=True)
        os.chown(folder, app.uid, app.uid)
        folder.chmod(0o700)
    limits = app.config.limits
    if app.cgroup is None:
        name = f"{site_name}.{app.name}"
        app.cgroup = Cgroup.create(name, limits.memory_mb << 20, limits.processes, limits.cpu_share)
        if app.cgroup is None:
            log.warning("no cgroup for the app: rlimits and the service's memory watch", extra={"app": app.name})
    app.oom_kills = app.cgroup.oom_kills() if app.cgroup is not None else 0


def sandbox_spec(app: RunningApp, apps_dir: Path) -> SandboxSpec:
    """What the launcher makes for ``app``: its binds, command, environment, network and limits."""
    python = environment_python(apps_dir.parent, app.name, app.config) or Path(sys.executable)
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
        binds=_binds(app, apps_dir, python),
        argv=[interpreter, entry],
        env=env,
        network=app.config.network,
        ports=[(p.host_port, p.app_port, p.protocol) for p in app.config.ports],
        processes=limits.processes,
        open_files=limits.open_files,
        memory_bytes=0 if app.cgroup is not None else limits.memory_mb << 20,
        cgroup_procs=app.cgroup.procs_files() if app.cgroup is not None else [],
    )


def _binds(app: RunningApp, apps_dir: Path, python: Path) -> list[Bind]:
    """Its code, logs, storage, channel and the SDK at Panorama's paths, and the Pythons it runs on."""
    dirs = app_dirs(apps_dir.parent, app.name)
    binds = [
        Bind(str(app.config.code.resolve()), str(PANORAMA)),
        Bind(str(dirs[LOGS]), str(LOGS), writable=True),
        Bind(str(dirs[STORAGE]), str(STORAGE), writable=True),
        Bind(str(channel_dir(apps_dir, app.name)), CHANNEL_DIR),
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
    return binds


async def start(spec: SandboxSpec) -> asyncio.subprocess.Process:
    """The launcher for ``spec``, in a session of its own, its output (and the app's) on one pipe."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONSAFEPATH": "1",
        SPEC_VARIABLE: spec.to_json(),
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(LAUNCHER),  # by path, not -m: it needs nothing of EdgeSight's packages
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd="/",
        env=env,
        start_new_session=True,
    )


def unreadable(code: Path) -> str | None:
    """Why the app's own uid cannot read its code folder (the sandbox shows it as it is), if it cannot."""
    try:
        mode = code.stat().st_mode
    except OSError as exc:
        return f"{code}: {exc.strerror}"
    if not mode & 0o005:
        return f"{code} is not readable by the app's own uid (mode {mode & 0o777:o}); chmod -R o+rX it"
    return None


def host_user(uid: int) -> str | None:
    """The name of the host's user with ``uid``, if any: an app must never run as (or kill for) a person."""
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

"""What `make demo` owns, so that it touches nothing it did not start.

    python scripts/demo_site.py run -- COMMAND ...            # runs the demo's steps (scripts/demo.sh does this)
    python scripts/demo_site.py kill-ingest --under PID --site FILE [--wait S]

``run`` makes a private folder (``$TMPDIR/edgesight-demo.*``) and one for the frame rings
(``/dev/shm/edgesight-demo.*``), picks free ports from the OS for everything the demo listens on, writes the
demo's site file (``examples/demo.yaml`` with those) into the folder and runs COMMAND in a process group of
its own, with ``EDGESIGHT_RUN_DIR``, ``EDGESIGHT_DEMO_SITE``, the ports, the console password and
``EDGESIGHT_DEMO_HOLD_S`` in its environment. When COMMAND ends, or on Ctrl-C, SIGTERM or SIGHUP, it stops
that process group (SIGTERM, SIGKILL after ``GRACE_S``) and removes both folders; a signal after the demo
made ``$EDGESIGHT_RUN_DIR/.holding`` (its steps done, the console held up) ends it with exit 0. A folder
given in ``$EDGESIGHT_RUN_DIR`` is the caller's: used, never removed.

``kill-ingest`` SIGKILLs the ingest that the supervisor ``PID`` started for site file ``FILE`` (found in
that supervisor's own process tree, never by name alone) and prints its pid.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import yaml

from common.registry import metrics_ports

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "demo.yaml"
METRICS = tuple(metrics_ports())  # every process that serves /metrics (common/registry.py): each its own port
PORT_VARIABLES = ("EDGESIGHT_DEMO_RTSP_PORT", "EDGESIGHT_DEMO_MQTT_PORT", "EDGESIGHT_DEMO_CONSOLE_PORT")
HOLD_S_WITHOUT_TERMINAL = 30.0
HOLDING = ".holding"  # made in the run folder by the demo once it holds the console up: its steps are done
GRACE_S = 20.0  # above the supervisor's stop_grace_s (10 s by default): it stops its services first


# -- ports --------------------------------------------------------------------------------------------
class Ports:
    """Free TCP ports picked by the OS, each claimed for as long as this object is open by an abstract
    Unix socket named after it: a second demo on this machine skips a port the first one holds, even
    before its server has bound it (a released port is soon handed out again), and no file is left."""

    def __init__(self) -> None:
        self._claims: list[socket.socket] = []

    def pick(self, count: int) -> list[int]:
        picked: list[int] = []
        probes: list[socket.socket] = []
        try:
            while len(picked) < count:
                probe = socket.socket()
                probes.append(probe)  # held until all are picked: one pick never repeats another
                probe.bind(("0.0.0.0", 0))
                port = int(probe.getsockname()[1])
                claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    claim.bind(f"\0edgesight-demo-port-{port}")
                except OSError:
                    claim.close()  # another demo holds it
                    continue
                self._claims.append(claim)
                picked.append(port)
        finally:
            for probe in probes:
                probe.close()
        return picked

    def close(self) -> None:
        for claim in self._claims:
            claim.close()
        self._claims.clear()


# -- the site file --------------------------------------------------------------------------------------
_VARIABLE = re.compile(r"\$\{(\w+)(?::-[^}]*)?\}")


def write_site(folder: Path, shm_dir: Path, values: Mapping[str, str], metrics_ports: Mapping[str, int]) -> Path:
    """``examples/demo.yaml`` with ``values`` (its ``${NAME}`` references: run dir, ports) written in, the
    rings in ``shm_dir``, and a metrics port per service; other references (the password) stay references."""
    text = _VARIABLE.sub(lambda found: values.get(found[1], found[0]), EXAMPLE.read_text())
    site: dict[str, Any] = yaml.safe_load(text)
    site["site"]["shm_dir"] = str(shm_dir)
    site["metrics"]["ports"] = dict(metrics_ports)
    # the demo narrates with status tables; each service's info lines (~50 per run) would bury them
    site.setdefault("logging", {"level": "warning"})
    path = folder / "demo.yaml"
    header = f"# made by scripts/demo_site.py from {EXAMPLE.relative_to(REPO)} for this run: its ports and folders\n"
    path.write_text(header + yaml.safe_dump(site, sort_keys=False, default_flow_style=None, width=120))
    return path


def hold_seconds(environ: Mapping[str, str], interactive: bool) -> str:
    """How long the demo keeps the console up at the end: ``""`` (until Ctrl-C) at a terminal, else
    ``$EDGESIGHT_DEMO_HOLD_S`` or 30 s, so that CI and pipes get their exit."""
    given = environ.get("EDGESIGHT_DEMO_HOLD_S", "").strip()
    if given:
        try:
            return f"{float(given):g}"
        except ValueError:
            raise SystemExit(f"EDGESIGHT_DEMO_HOLD_S={given!r}: give seconds, e.g. 600") from None
    return "" if interactive else f"{HOLD_S_WITHOUT_TERMINAL:g}"


@contextlib.contextmanager
def demo_folders(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """The run's folders, ports and site file as environment variables; folders removed and ports released
    on leaving (a folder from ``$EDGESIGHT_RUN_DIR`` is kept)."""
    given = environ.get("EDGESIGHT_RUN_DIR", "")
    folder = Path(given) if given else Path(tempfile.mkdtemp(prefix="edgesight-demo."))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / HOLDING).unlink(missing_ok=True)  # a kept folder's, from its last run
    # the rings on a tmpfs, in a folder of this run's own: a second demo's rings carry the same names
    shm_dir = Path(tempfile.mkdtemp(prefix="edgesight-demo.", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    ports = Ports()
    try:
        picked = iter(ports.pick(len(PORT_VARIABLES) + len(METRICS)))
        values = {name: environ.get(name) or str(next(picked)) for name in PORT_VARIABLES}  # yours, if given
        values["EDGESIGHT_RUN_DIR"] = str(folder)
        site = write_site(folder, shm_dir, values, {name: next(picked) for name in METRICS})
        (folder / "tmp").mkdir(exist_ok=True)
        yield {**values, "EDGESIGHT_DEMO_SITE": str(site), "TMPDIR": str(folder / "tmp")}
    finally:
        ports.close()
        shutil.rmtree(shm_dir, ignore_errors=True)
        if not given:
            shutil.rmtree(folder, ignore_errors=True)


# -- run --------------------------------------------------------------------------------------------------
def _stat(pid: str) -> list[str]:
    """``/proc/<pid>/stat`` after the name (which may hold spaces): state, ppid, pgrp, ..."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs: zombies do not count (one reparented to a container's init
    may never be reaped)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                fields = _stat(entry.name)
                if fields[2] == str(group) and fields[0] != "Z":
                    return True
    return False


def _stop_group(group: int, grace_s: float) -> None:
    """SIGTERM to the demo's own process group, SIGKILL to what is left of it after ``grace_s``."""
    for signum, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        if not _group_alive(group):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signum)
        deadline = time.monotonic() + wait_s
        while _group_alive(group) and time.monotonic() < deadline:
            time.sleep(0.1)


def cmd_run(command: list[str], grace_s: float = GRACE_S) -> int:
    started = time.monotonic()
    stop_signal: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop_signal.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    environ = dict(os.environ)
    hold_s = hold_seconds(environ, sys.stdin is not None and sys.stdin.isatty())
    with demo_folders(environ) as variables:
        environ.update(variables, EDGESIGHT_DEMO_HOLD_S=hold_s)
        environ.setdefault("EDGESIGHT_CONSOLE_PASSWORD", secrets.token_urlsafe(12))  # the console has no default
        # a session of its own: a terminal's Ctrl-C reaches this process alone, which stops the group in order
        child = subprocess.Popen(command, env=environ, start_new_session=True)
        while child.poll() is None and not stop_signal:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=0.2)
        _stop_group(child.pid, grace_s)  # the group outlives its leader while a member is left
        child.wait()
        # the script's last step, holding the console up until Ctrl-C: a signal then is the normal end
        holding = (Path(variables["EDGESIGHT_RUN_DIR"]) / HOLDING).exists()
    kept = os.environ.get("EDGESIGHT_RUN_DIR")
    removed = "" if kept else f"; removed {variables['EDGESIGHT_RUN_DIR']}"
    how = f"stopped by {signal.Signals(stop_signal[0]).name}" if stop_signal else "ended"
    print(f"-- the demo {how} after {time.monotonic() - started:.0f} s{removed}", flush=True)
    if stop_signal:
        return 0 if holding else 128 + stop_signal[0]
    return child.returncode if child.returncode >= 0 else 128 - child.returncode


# -- kill-ingest ------------------------------------------------------------------------------------------
def _parents() -> dict[int, int]:
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                parents[int(entry.name)] = int(_stat(entry.name)[1])
    return parents


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for pid, parent in _parents().items():
        children.setdefault(parent, []).append(pid)
    found, queue = [], list(children.get(root, []))
    while queue:
        pid = queue.pop()
        found.append(pid)
        queue.extend(children.get(pid, []))
    return found


def serves_site(pid: int, service: str, site: Path) -> bool:
    """Whether ``pid`` runs ``services.<service>`` with ``--config`` naming ``site`` (relative to its cwd)."""
    try:
        argv = (Path(f"/proc/{pid}") / "cmdline").read_bytes().decode(errors="replace").split("\0")
        cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
    except OSError:
        return False
    if f"services.{service}" not in argv or "--config" not in argv[:-1]:
        return False
    return (cwd / argv[argv.index("--config") + 1]).resolve() == site.resolve()


def own_ingest(supervisor: int, site: Path) -> list[int]:
    """The ingest processes of ``site`` in the process tree of ``supervisor``."""
    return [pid for pid in descendants(supervisor) if serves_site(pid, "ingest", site)]


def cmd_kill_ingest(supervisor: int, site: Path, wait_s: float) -> int:
    deadline = time.monotonic() + wait_s
    while not (found := own_ingest(supervisor, site)) and time.monotonic() < deadline:
        time.sleep(0.2)  # not started yet, or being restarted
    if not found:
        print(f"no ingest of {site} under pid {supervisor}", file=sys.stderr)
        return 1
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(*found)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="demo_site.py", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run COMMAND with the demo's own folder, ports and site file")
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND ...")
    kill = commands.add_parser("kill-ingest", help="SIGKILL the ingest of SITE under supervisor PID")
    kill.add_argument("--under", type=int, required=True, metavar="PID")
    kill.add_argument("--site", type=Path, required=True, metavar="FILE")
    kill.add_argument("--wait", type=float, default=0.0, metavar="SECONDS", help="for it to (re)start")
    args = parser.parse_args(argv)
    if args.command == "run":
        command = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not command:
            parser.error("run: give the command after --")
        return cmd_run(command)
    return cmd_kill_ingest(args.under, args.site, args.wait)


if __name__ == "__main__":
    sys.exit(main())

"""Fixtures shared by every test layer: the assets folder, bus endpoints in a temp dir, free ports."""

from __future__ import annotations

import fcntl
import os
import random
import socket
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.assets import asset_search_path
from common.registry import metrics_ports
from tests.support import SLOWDOWN

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _umask_restored() -> Iterator[None]:
    """A service run in-process sets the process's umask (``common.files.restrict_umask``): every test
    starts with the umask the session had, whatever an earlier one ran."""
    mask = os.umask(0o022)
    os.umask(mask)
    yield
    os.umask(mask)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """EDGESIGHT_TEST_SLOWDOWN scales pytest-timeout's limits as it scales the tests' own deadlines."""
    if SLOWDOWN == 1:
        return
    for item in items:
        marker = item.get_closest_marker("timeout")
        limit = float(marker.args[0] if marker is not None and marker.args else config.getini("timeout") or 0)
        if limit:
            item.add_marker(pytest.mark.timeout(limit * SLOWDOWN), append=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or $EDGESIGHT_ASSETS): found once; a clear failure when missing."""
    for folder in asset_search_path():
        if (folder / "media" / "people.mp4").is_file():
            return folder
    pytest.fail("shared assets not found: put the shared/ folder beside the checkout or set EDGESIGHT_ASSETS")


def _port_range() -> tuple[int, int]:
    """Ports below the kernel's ephemeral range: bind(0) (a service's ``--metrics-port 0``, the supervisor,
    any client socket of any process) never picks one of them, so a port given here stays ours."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return (10_000, low) if low > 12_000 else (1_024, low)


_PORTS_GIVEN: set[int] = set()
_random = random.SystemRandom()  # a test seeding the module's generator must not make two runs pick alike
_port_locks: int | None = None


def _claim_across_processes(port: int) -> bool:
    """Locks byte ``port`` of a file every test process on this machine shares, for as long as this process
    lives (the kernel drops the lock when it exits, however it exits): another clone's ``make test`` running
    beside this one never hands out the same port, even between its check and its server's bind."""
    global _port_locks
    if _port_locks is None:
        try:
            _port_locks = os.open(
                Path(tempfile.gettempdir()) / "edgesight-test-ports.lock", os.O_RDWR | os.O_CREAT, 0o666
            )
        except OSError:
            _port_locks = -1  # not shareable here: the random pick and the bind check still hold
    if _port_locks < 0:
        return True
    try:
        fcntl.lockf(_port_locks, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on, never given twice in this process nor to another test
    process, and outside the range bind(0) picks from (see :func:`_port_range`). Binding port 0 and closing
    the socket had handed one port to two callers."""
    low, high = _port_range()
    for _ in range(10_000):
        port = _random.randrange(low, high)
        if port in _PORTS_GIVEN or not _claim_across_processes(port):
            continue
        _PORTS_GIVEN.add(port)  # claimed now, usable or not: never tried again
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue  # in use by something that is not a test
        return port
    raise RuntimeError(f"no free port left in {low}..{high}")


def write_site(tmp_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """A site file whose bus, shm and state live under ``tmp_path``, with free metrics ports;
    ``extra`` adds sections (e.g. ``{"cameras": {...}}``); its ``site`` keys go into ``site:``."""
    ports = {name: free_port() for name in metrics_ports()}
    run = tmp_path / "run"
    extra = dict(extra or {})
    site = {
        "name": "test",
        "state_dir": str(tmp_path / "state"),
        "shm_dir": str(tmp_path / "shm"),
        **extra.pop("site", {}),
    }
    text = textwrap.dedent(f"""\
        site: {yaml.safe_dump(site, default_flow_style=True, sort_keys=False, width=100_000).strip()}
        bus:
          publish: pub+connect:ipc://{run}/bus-in.sock
          subscribe: [sub+connect:ipc://{run}/bus-out.sock]
          broker: {{frontend: xsub+bind:ipc://{run}/bus-in.sock, backend: xpub+bind:ipc://{run}/bus-out.sock}}
          events: {{send: dealer+connect:ipc://{run}/events.sock, receive: router+bind:ipc://{run}/events.sock}}
          health_interval_s: 0.5
        metrics:
          host: 127.0.0.1
          ports: {ports}
        run: {{restart_backoff_s: 0.5, stop_grace_s: 5}}
        """)
    if extra:
        text += yaml.safe_dump(extra, sort_keys=False)
    path = tmp_path / "site.yaml"
    path.write_text(text)
    (tmp_path / "shm").mkdir(exist_ok=True)
    return path


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The services start under the usual login umask (0022): whatever they make private, they make so."""
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    """A minimal site file (see :func:`write_site`)."""
    return write_site(tmp_path)


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for child processes: this interpreter's packages and the checkout on the path."""
    return child_env()


def child_env() -> dict[str, str]:
    """:func:`python_env`'s value, for fixtures of a wider scope."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env

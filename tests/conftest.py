"""Fixtures shared by every test layer: the assets folder, bus endpoints in a temp dir, free ports."""

from __future__ import annotations

import os
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.assets import asset_search_path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """``../shared`` (or $EDGESIGHT_ASSETS): found once; a clear failure when missing."""
    for folder in asset_search_path():
        if (folder / "media" / "people.mp4").is_file():
            return folder
    pytest.fail("shared assets not found: put the shared/ folder beside the checkout or set EDGESIGHT_ASSETS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_site(tmp_path: Path, extra: dict[str, Any] | None = None) -> Path:
    """A site file whose bus, shm and state live under ``tmp_path``, with free metrics ports;
    ``extra`` adds sections (e.g. ``{"cameras": {...}}``); its ``site`` keys go into ``site:``."""
    ports = {
        name: free_port() for name in ("run", "broker", "ingest", "inference", "rules", "uplink", "apps", "console")
    }
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
def site_file(tmp_path: Path) -> Path:
    """A minimal site file (see :func:`write_site`)."""
    return write_site(tmp_path)


@pytest.fixture
def python_env() -> dict[str, str]:
    """Environment for child processes: this interpreter's packages and the checkout on the path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env

"""Site files and service processes for benchmarks that run the real services."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from common.config import SiteConfig, load_config
from common.registry import metrics_ports


def write_site(folder: Path, name: str, extra: dict[str, Any]) -> tuple[Path, SiteConfig]:
    """A site file in ``folder`` whose bus is ipc under it and whose metrics ports are free ones."""
    run = folder / "run"
    site: dict[str, Any] = {
        "site": {"name": name, "state_dir": str(folder / "state"), "shm_dir": "/dev/shm"},
        "bus": {
            "publish": f"pub+connect:ipc://{run}/in.sock",
            "subscribe": [f"sub+connect:ipc://{run}/out.sock"],
            "broker": {"frontend": f"xsub+bind:ipc://{run}/in.sock", "backend": f"xpub+bind:ipc://{run}/out.sock"},
            "events": {
                "send": f"dealer+connect:ipc://{run}/events.sock",
                "receive": f"router+bind:ipc://{run}/events.sock",
            },
            "frames_hwm": 1000,
            "health_interval_s": 0.5,
        },
        "metrics": {
            "host": "127.0.0.1",
            "ports": dict.fromkeys(metrics_ports(), 0),
        },
        "logging": {"level": "warning"},
        **extra,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(site))
    return path, load_config(path)


def service_command(service: str, site: Path) -> list[str]:
    return [sys.executable, "-m", f"services.{service}", "--config", str(site)]


def start(service: str, site: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(service_command(service, site), env={**os.environ, **env} if env else None)


def stop(processes: list[subprocess.Popen[bytes]], grace_s: float = 15.0) -> None:
    """SIGTERM every process, wait up to ``grace_s`` in all, then SIGKILL (and say so) what is left: a
    benchmark never hangs on a service that does not stop."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + grace_s
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            command: Any = process.args
            print(f"  (pid {process.pid}, {' '.join(map(str, command[2:4]))}, ignored SIGTERM: killed)", flush=True)
            process.kill()
            process.wait()

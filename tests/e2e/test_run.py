"""`edgesight run`: starts the services as processes, restarts one that dies, stops on time or signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from common.config import load_config
from tests.conftest import free_port, write_site


def pids_started(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r'msg="service started" child=broker pid=(\d+)', log.read_text())]


def wait_until(predicate, seconds: float = 15) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def test_run_restarts_a_killed_service_and_stops_by_itself(
    site_file: Path, tmp_path: Path, python_env: dict[str, str]
) -> None:
    log = tmp_path / "run.log"
    out = tmp_path / "run.out"
    with log.open("w") as stderr, out.open("w") as stdout:
        run = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "run", str(site_file), "--for", "8", "--status-interval", "1"],
            stdout=stdout,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: len(pids_started(log)) == 1)
        first = pids_started(log)[0]
        time.sleep(1.5)
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(pids_started(log)) == 2)
        port = load_config(site_file).metrics.port("run")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            assert 'edgesight_supervisor_restarts_total{service="broker"} 1.0' in response.read().decode()
        assert run.wait(timeout=30) == 0
    second = pids_started(log)[1]
    assert not alive(first) and not alive(second), "every service is stopped when run stops"
    assert 'msg="service exited; restarting" child=broker code=-9' in log.read_text()
    table = out.read_text()
    assert re.search(r"broker\s+\d+\s+ready\s+\d+\s+1\s", table), table
    assert "stopped" in table.splitlines()[-1]


def test_run_forwards_sigterm(site_file: Path, tmp_path: Path, python_env: dict[str, str]) -> None:
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "run", str(site_file)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: "to_state=ready" in log.read_text())
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=20) == 0
    child = pids_started(log)[0]
    assert not alive(child)
    assert "msg=stopped" in log.read_text()


def test_run_refuses_a_service_that_is_not_installed(site_file: Path, python_env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "run", str(site_file), "--services", "broker,teleporter"],
        capture_output=True,
        text=True,
        env=python_env,
        check=False,
    )
    assert result.returncode == 2
    assert "not installed: teleporter" in result.stderr


def test_run_starts_one_ingest_per_camera_group(tmp_path: Path, python_env: dict[str, str]) -> None:
    cameras = {
        "west-door": {"url": "people.mp4", "loop": True, "fps": 5},
        "east-door": {"url": "people.mp4", "loop": True, "fps": 5, "ingest_group": "east"},
    }
    site = write_site(tmp_path, {"cameras": cameras})
    config = load_config(site)
    east_port = free_port()
    text = site.read_text().replace("ports: {", f"ports: {{'ingest@east': {east_port}, ", 1)
    site.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", "7", "--status-interval", "2"],
        capture_output=True,
        text=True,
        env=python_env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    tables = result.stdout.split("service ")
    last_live = next(t for t in reversed(tables) if "ready" in t)
    rows = {line.split()[0]: line for line in last_live.splitlines()[1:] if line.strip()}
    assert "cameras=1" in rows["ingest"] and "streaming=1" in rows["ingest"], last_live
    assert "cameras=1" in rows["ingest@east"] and "streaming=1" in rows["ingest@east"], last_live
    assert f"metrics_port={east_port}" in result.stderr
    assert f"metrics_port={config.metrics.port('ingest')}" in result.stderr

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
        wait_until(lambda: "to_state=ready" in log.read_text())
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


def run_for(
    site: Path, seconds: int, python_env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], str, dict[str, str]]:
    """`edgesight run SITE --for SECONDS` (exit 0 asserted): the result, the last status table with a
    ready service, and its rows by service name."""
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", str(seconds), "--status-interval", "2"],
        capture_output=True,
        text=True,
        env=python_env,
        timeout=seconds + 60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    last_live = next(t for t in reversed(result.stdout.split("service ")) if "ready" in t)
    rows = {line.split()[0]: line for line in last_live.splitlines()[1:] if line.strip()}
    return result, last_live, rows


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
    result, last_live, rows = run_for(site, 7, python_env)
    assert "cameras=1" in rows["ingest"] and "streaming=1" in rows["ingest"], last_live
    assert "cameras=1" in rows["ingest@east"] and "streaming=1" in rows["ingest@east"], last_live
    assert f"metrics_port={east_port}" in result.stderr
    assert f"metrics_port={config.metrics.port('ingest')}" in result.stderr


def test_run_starts_inference_replicas_that_split_the_cameras(tmp_path: Path, python_env: dict[str, str]) -> None:
    cameras = {name: {"url": "people.mp4", "loop": True, "fps": 5} for name in ("dock", "gate", "yard")}
    models = {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "threads": 1}}
    run = {"services": ["broker", "ingest", "inference"], "inference_replicas": 2}
    site = site_with_run(tmp_path, run, {"cameras": cameras, "models": models})
    result, last_live, rows = run_for(site, 12, python_env)
    # three cameras, sorted (dock, gate, yard), dealt out by index: 0 -> dock + yard, 1 -> gate
    assert "cameras=2" in rows["inference"] and "cameras=1" in rows["inference@1"], last_live
    for name in ("inference", "inference@1"):
        frames = float(re.search(r"frames=(\S+)", rows[name]).group(1))  # type: ignore[union-attr]
        assert frames > 5, (name, last_live)
    assert "EDGESIGHT_INFERENCE_SHARD" not in result.stderr  # no complaint about the shard it was given


def site_with_run(tmp_path: Path, run: dict[str, object], extra: dict[str, object] | None = None) -> Path:
    """A test site (see write_site) whose ``run:`` section also holds ``run``."""
    import yaml

    site = write_site(tmp_path, extra)
    data = yaml.safe_load(site.read_text())
    data["run"] = {**data["run"], **run}
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return site


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_children_die_with_a_sigkilled_run(tmp_path: Path, python_env: dict[str, str]) -> None:
    """A SIGKILLed `run` used to leave its services as orphans that fought the next `run` for ports."""
    site = site_with_run(tmp_path, {"services": ["broker", "rules", "uplink"]})
    log = tmp_path / "run.log"
    with log.open("w") as stderr:
        run = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "run", str(site)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: log.read_text().count("to_state=ready") >= 3, 30)
        children = children_of(run.pid)
        assert len(children) == 3
        run.kill()
        run.wait()
        wait_until(lambda: not any(alive(pid) for pid in children), 15)


def test_a_stalled_service_is_restarted_and_the_table_shows_why(tmp_path: Path, python_env: dict[str, str]) -> None:
    """A service whose event loop stalls still answers /readyz: only /healthz tells, and `run` acts on it."""
    site = site_with_run(tmp_path, {"services": ["broker"], "liveness_timeout_s": 2})
    log, out = tmp_path / "run.log", tmp_path / "run.out"
    with log.open("w") as stderr, out.open("w") as stdout:
        run = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", "14", "--status-interval", "1"],
            stdout=stdout,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: len(pids_started(log)) == 1)
        wait_until(lambda: "to_state=ready" in log.read_text())
        first = pids_started(log)[0]
        os.kill(first, signal.SIGSTOP)  # frozen: neither its loop nor its HTTP thread runs
        wait_until(lambda: len(pids_started(log)) == 2, 20)
        assert run.wait(timeout=30) == 0
    assert not alive(first)
    assert 'msg="service unresponsive; killing it" child=broker' in log.read_text()
    assert "broker last error: /healthz failed for 2 s" in out.read_text()


def test_run_for_exits_1_when_a_service_never_became_ready(tmp_path: Path, python_env: dict[str, str]) -> None:
    extra = {"models": {"m": {"path": "nosuch.onnx"}}, "cameras": {"c": {"url": "rtsp://127.0.0.1:9/x"}}}
    site = site_with_run(tmp_path, {"services": ["broker", "inference"]}, extra)
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", "6", "--status-interval", "2"],
        capture_output=True,
        text=True,
        env=python_env,
        timeout=60,
    )
    assert result.returncode == 1
    assert 'msg="services never became ready" services=inference' in result.stderr
    assert "inference last error:" in result.stdout and "nosuch.onnx" in result.stdout

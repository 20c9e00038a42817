"""`edgesight run`: starts the services as processes, restarts one that dies, stops on time or signal."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from common.config import load_config
from tests.conftest import free_port, write_site
from tests.support import http_get, scaled, wait_until


def pids_started(log: Path) -> list[int]:
    return [int(pid) for pid in re.findall(r'msg="service started" child=broker pid=(\d+)', log.read_text())]


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
        command = [sys.executable, "-m", "common.cli.main", "run", str(site_file), "--status-interval", "1"]
        run = subprocess.Popen(
            # long enough for every step below while five services start on a loaded machine
            [*command, "--for", f"{scaled(25):g}"],
            stdout=stdout,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: len(pids_started(log)) == 1, what="broker started")
        first = pids_started(log)[0]
        wait_until(lambda: "to_state=ready" in log.read_text(), what="a service ready")
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: len(pids_started(log)) == 2, what="broker restarted")
        port = load_config(site_file).metrics.port("run")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=scaled(5)) as response:
            assert 'edgesight_supervisor_restarts_total{service="broker"} 1.0' in response.read().decode()
        assert run.wait(timeout=scaled(90)) == 0
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
        wait_until(lambda: "to_state=ready" in log.read_text(), what="a service ready")
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=scaled(30)) == 0
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


Table = dict[str, str]  # a status table's rows by service name; its "last error" lines under "<name> last error"


def tables(text: str) -> list[Table]:
    """The complete status tables in ``run``'s output, oldest first (a line still being written is left out)."""
    found: list[Table] = []
    for line in text[: text.rfind("\n") + 1].splitlines():
        if line.startswith("service "):
            found.append({})
        elif found and line.startswith("  ") and " last error: " in line:
            found[-1][line.split(": ", 1)[0].strip()] = line
        elif found and line.strip():
            found[-1][line.split()[0]] = line
    return found


def state(row: str) -> str:
    return row.split()[2]


def run_until(
    site: Path, python_env: dict[str, str], done: Callable[[Table], bool], *, code: int = 0, all_ready: bool = True
) -> tuple[str, str, Table]:
    """`edgesight run SITE` until a status table satisfies ``done`` (and, with ``all_ready``, every service
    in it has been ready in one), then SIGTERM; ``run`` must exit ``code``: 1 when a service never became
    ready, 0 otherwise. Returns its stderr, its stdout and that table. (A fixed ``--for`` ran out while
    the services still started on a loaded machine; this waits as long as that takes, and no longer.)"""
    out, err = site.parent / "run.out", site.parent / "run.log"
    with out.open("w") as stdout, err.open("w") as stderr:
        # --for: for run's never-ready check, which a SIGTERM'd run with --for applies too; and a safety net
        command = [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", "3600"]
        run = subprocess.Popen([*command, "--status-interval", "1"], stdout=stdout, stderr=stderr, env=python_env)
        try:
            ready: set[str] = set()
            last: list[Table] = [{}]

            def satisfied() -> bool:
                for table in tables(out.read_text()):
                    ready.update(
                        name for name, row in table.items() if "last error" not in name and state(row) == "ready"
                    )
                    last[0] = table
                table = last[0]
                services = {name for name in table if "last error" not in name}
                return bool(table) and (not all_ready or services <= ready) and done(table)

            try:
                wait_until(satisfied, 90, "a status table as expected")
            except AssertionError as exc:
                raise AssertionError(f"{exc}: {last[0]}\n{err.read_text()[-3000:]}") from None
            run.send_signal(signal.SIGTERM)
            exited = run.wait(timeout=scaled(60))
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert exited == code, err.read_text()[-3000:]
    return err.read_text(), out.read_text(), last[0]


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

    def both_streaming(rows: Table) -> bool:
        groups = [rows.get(name, "") for name in ("ingest", "ingest@east")]
        return all("cameras=1" in row and "streaming=1" in row for row in groups)

    stderr, _, rows = run_until(site, python_env, both_streaming)
    assert "cameras=1" in rows["ingest"] and "streaming=1" in rows["ingest"], rows
    assert "cameras=1" in rows["ingest@east"] and "streaming=1" in rows["ingest@east"], rows
    assert f"metrics_port={east_port}" in stderr
    assert f"metrics_port={config.metrics.port('ingest')}" in stderr


def test_run_starts_inference_replicas_that_split_the_cameras(tmp_path: Path, python_env: dict[str, str]) -> None:
    cameras = {name: {"url": "people.mp4", "loop": True, "fps": 5} for name in ("dock", "gate", "yard")}
    models = {"people": {"path": "yolox_nano.onnx", "classes": ["person"], "threads": 1}}
    run = {"services": ["broker", "ingest", "inference"], "inference_replicas": 2}
    site = site_with_run(tmp_path, run, {"cameras": cameras, "models": models})

    def frames(row: str) -> float:
        found = re.search(r"frames=(\S+)", row)
        return float(found.group(1)) if found else 0.0

    def split_and_inferring(rows: Table) -> bool:
        replicas = [rows.get(name, "") for name in ("inference", "inference@1")]
        return "cameras=2" in replicas[0] and "cameras=1" in replicas[1] and all(frames(r) > 5 for r in replicas)

    stderr, _, rows = run_until(site, python_env, split_and_inferring)
    # three cameras, sorted (dock, gate, yard), dealt out by index: 0 -> dock + yard, 1 -> gate
    assert "cameras=2" in rows["inference"] and "cameras=1" in rows["inference@1"], rows
    for name in ("inference", "inference@1"):
        assert frames(rows[name]) > 5, (name, rows)
    assert "EDGESIGHT_INFERENCE_SHARD" not in stderr  # no complaint about the shard it was given


def test_run_shows_how_inference_sized_itself(tmp_path: Path, python_env: dict[str, str]) -> None:
    """No threads, engines or replicas in the site file: inference chooses them from the cores and its
    cameras (common/models/sizing.py), logs the choice once and shows it in the table."""
    from common.config import ModelConfig
    from common.models.sizing import size_model, usable_cores

    cameras = {name: {"url": "people.mp4", "loop": True, "fps": 5} for name in ("dock", "gate")}
    models = {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}}
    site = site_with_run(
        tmp_path, {"services": ["broker", "ingest", "inference"]}, {"cameras": cameras, "models": models}
    )
    expected = size_model(ModelConfig(path="yolox_nano.onnx"), cameras=2, cores=usable_cores())

    def inferring(rows: Table) -> bool:
        found = re.search(r"frames=(\S+)", rows.get("inference", ""))
        return found is not None and float(found.group(1)) > 5

    stderr, _, rows = run_until(site, python_env, inferring)
    assert f"engines.people={expected.engines}" in rows["inference"], rows
    assert f"threads.people={expected.threads}" in rows["inference"], rows
    assert "inference@1" not in rows  # auto: one process, its engines share the cores
    sized = [line for line in stderr.splitlines() if "model sized" in line]
    assert len(sized) == 1 and f"engines={expected.engines}" in sized[0] and "why=" in sized[0], sized


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
        wait_until(lambda: log.read_text().count("to_state=ready") >= 3, what="three services ready")
        children = children_of(run.pid)
        assert len(children) == 3
        run.kill()
        run.wait()
        wait_until(lambda: not any(alive(pid) for pid in children), 30, "the children gone")


def test_a_stalled_service_is_restarted_and_the_table_shows_why(tmp_path: Path, python_env: dict[str, str]) -> None:
    """A service whose event loop stalls still answers /readyz: only /healthz tells, and `run` acts on it."""
    site = site_with_run(tmp_path, {"services": ["broker"], "liveness_timeout_s": 2})
    log, out = tmp_path / "run.log", tmp_path / "run.out"
    with log.open("w") as stderr, out.open("w") as stdout:
        duration = f"{scaled(20):g}"  # the start, 2 s of liveness, the restart and a table, on a loaded machine
        run = subprocess.Popen(
            [sys.executable, "-m", "common.cli.main", "run", str(site), "--for", duration, "--status-interval", "1"],
            stdout=stdout,
            stderr=stderr,
            env=python_env,
        )
        wait_until(lambda: len(pids_started(log)) == 1, what="broker started")
        wait_until(lambda: "to_state=ready" in log.read_text(), what="broker ready")
        first = pids_started(log)[0]
        os.kill(first, signal.SIGSTOP)  # frozen: neither its loop nor its HTTP thread runs
        wait_until(lambda: len(pids_started(log)) == 2, what="broker restarted")
        assert run.wait(timeout=scaled(90)) == 0
    assert not alive(first)
    assert 'msg="service unresponsive; killing it" child=broker' in log.read_text()
    assert "broker last error: /healthz failed for 2 s" in out.read_text()


def test_run_for_exits_1_when_a_service_never_became_ready(tmp_path: Path, python_env: dict[str, str]) -> None:
    extra: dict[str, object] = {
        "models": {"m": {"path": "nosuch.onnx"}},
        "cameras": {"c": {"url": "rtsp://127.0.0.1:9/x"}},
    }
    site = site_with_run(tmp_path, {"services": ["broker", "inference"]}, extra)

    def broker_ready_inference_failed(table: Table) -> bool:
        return state(table.get("broker", "- - -")) == "ready" and "nosuch.onnx" in table.get("inference last error", "")

    stderr, stdout, _ = run_until(site, python_env, broker_ready_inference_failed, code=1, all_ready=False)
    assert 'msg="services never became ready" services=inference' in stderr
    assert "inference last error:" in stdout and "nosuch.onnx" in stdout


def test_run_states_say_what_is_happening_and_runs_own_healthz_stays_green(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """The first tables said `exited` for a broker still starting, and run's /healthz went red after 10 s
    (its loop never beat): `starting`, then `ready`; `restarting` through the backoff after a kill."""
    site = site_with_run(tmp_path, {"services": ["broker"], "restart_backoff_s": 5})
    log, out = tmp_path / "run.log", tmp_path / "run.out"
    port = load_config(site).metrics.port("run")
    with log.open("w") as stderr, out.open("w") as stdout:
        command = [sys.executable, "-m", "common.cli.main", "run", str(site), "--status-interval", "0.1"]
        run = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=python_env)
        started = time.monotonic()
        try:

            def broker_states() -> list[str]:
                return [state(table["broker"]) for table in tables(out.read_text()) if "broker" in table]

            wait_until(lambda: "ready" in broker_states(), what="a table with the broker ready")
            before_ready = broker_states()[: broker_states().index("ready")]
            # a table every 0.1 s: the first comes long before a Python process is serving
            assert before_ready and set(before_ready) == {"starting"}, broker_states()
            os.kill(pids_started(log)[0], signal.SIGKILL)
            wait_until(lambda: "restarting" in broker_states(), what="a table with the broker restarting")
            wait_until(lambda: len(pids_started(log)) == 2, what="broker restarted")
            wait_until(lambda: broker_states()[-1] == "ready", what="the broker ready again")
            states = broker_states()
            assert set(states[states.index("restarting") :]) == {"restarting", "starting", "ready"}, states
            # the endpoint starts green: a loop that never beats shows after stall_after_s (10 s)
            time.sleep(max(0.0, started + 12 - time.monotonic()))
            assert http_get(f"http://127.0.0.1:{port}/healthz") == (200, "ok\n")
            run.send_signal(signal.SIGTERM)
            assert run.wait(timeout=scaled(60)) == 0
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
    assert "stopped" in out.read_text().splitlines()[-1]


def test_a_taken_port_and_a_users_common_py_are_said_plainly(tmp_path: Path, python_env: dict[str, str]) -> None:
    """A second `run` of a site (its metrics port taken) gets one line naming the key, not a traceback;
    a file named common.py in the working folder does not shadow EdgeSight's own package."""
    import socket

    site = site_with_run(tmp_path, {"services": ["broker"]})
    port = load_config(site).metrics.port("run")
    edgesight = str(Path(sys.executable).parent / "edgesight")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        result = subprocess.run(
            [edgesight, "run", str(site), "--for", "5"], capture_output=True, text=True, env=python_env, timeout=60
        )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "(metrics.ports.run)" in result.stderr, result.stderr
    assert "another `edgesight run`" in result.stderr

    folder = tmp_path / "users-folder"
    folder.mkdir()
    (folder / "common.py").write_text("raise SystemExit('a user file named common.py was imported')\n")
    # as a user runs it: no empty PYTHONPATH entry (that would put the working folder first by itself)
    paths = [entry for entry in python_env["PYTHONPATH"].split(os.pathsep) if entry]
    user_env = {**python_env, "PYTHONPATH": os.pathsep.join(paths)}
    checked = subprocess.run(
        [edgesight, "config", "check", str(site)],
        capture_output=True,
        text=True,
        env=user_env,
        cwd=folder,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stderr

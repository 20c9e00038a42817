"""`make demo` touches only what it started (#25): its own ingest, not another's; ports the OS picked for
this run; its folders gone when it ends, on SIGTERM and Ctrl-C too. Through scripts/demo_site.py, which
scripts/demo.sh runs itself under."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.registry import metrics_ports
from tests.conftest import REPO
from tests.support import scaled, wait_until

HELPER = REPO / "scripts" / "demo_site.py"
FIXED_PORTS = {8080, 8554, 18830, *range(9400, 9408)}  # what the demo used before #25


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"


def sleeper(argv_tail: list[str]) -> list[str]:
    """A python that sleeps, with a command line that looks like an ingest's after the code."""
    return [sys.executable, "-c", "import time; time.sleep(600)", *argv_tail]


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    started: list[subprocess.Popen[Any]] = []
    yield started
    for process in started:
        process.terminate()  # a demo_site.py run cleans up on SIGTERM; SIGKILL would leave its folders
        try:
            process.wait(timeout=scaled(30))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def helper(*arguments: str, env: dict[str, str], **options: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(HELPER), *arguments], env=env, text=True, **options)


def test_kill_ingest_kills_the_demos_own_ingest_and_spares_a_decoy(
    tmp_path: Path, python_env: dict[str, str], processes: list[subprocess.Popen[Any]]
) -> None:
    site = tmp_path / "demo.yaml"
    site.write_text("")
    # someone else's ingest, started first: `pgrep -f "services.ingest --config" | head -n1` picked it
    decoy = subprocess.Popen(sleeper(["-m", "services.ingest", "--config", "/somewhere/else.yaml"]))
    # one naming this very site file but not started by the demo's supervisor
    stranger = subprocess.Popen(sleeper(["-m", "services.ingest", "--config", str(site)]))
    # the demo's supervisor and its ingest, as `edgesight run` starts it (a relative path, from its cwd)
    code = "import subprocess, sys; print(subprocess.Popen(sys.argv[1:]).wait(), flush=True)"
    ingest = ["-m", "services.ingest", "--config", site.name, "--instance", "ingest-0"]
    supervisor = subprocess.Popen(
        [sys.executable, "-c", code, *sleeper(ingest)], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    processes += [decoy, stranger, supervisor]

    kill = helper(
        "kill-ingest",
        "--under",
        str(supervisor.pid),
        "--site",
        str(site),
        "--wait",
        f"{scaled(30):g}",
        env=python_env,
        stdout=subprocess.PIPE,
    )
    killed, _ = kill.communicate(timeout=scaled(60))
    assert kill.returncode == 0
    assert supervisor.communicate(timeout=scaled(30))[0].strip() == "-9", "the supervisor's own ingest was SIGKILLed"
    assert len(killed.split()) == 1 and int(killed) not in (decoy.pid, stranger.pid)
    assert alive(decoy.pid) and alive(stranger.pid), "no other ingest was touched"


@pytest.mark.slow
def test_kill_ingest_under_edgesight_run(
    tmp_path: Path, python_env: dict[str, str], processes: list[subprocess.Popen[Any]]
) -> None:
    """The same with the real supervisor and ingest, on a demo site made by the helper."""
    env = {**python_env, "TMPDIR": str(tmp_path), "EDGESIGHT_CONSOLE_PASSWORD": "not-used-here"}
    decoy = subprocess.Popen(sleeper(["-m", "services.ingest", "--config", "/somewhere/else.yaml"]))
    processes.append(decoy)
    log = tmp_path / "run.log"
    script = (
        '.venv/bin/edgesight run "$EDGESIGHT_DEMO_SITE" --services broker,ingest --for 120 >"$LOG.out" 2>"$LOG" &\n'
        "run=$!\n"
        f'"{sys.executable}" {HELPER} kill-ingest --under $run --site "$EDGESIGHT_DEMO_SITE" --wait 60\n'
        "until grep -q 'service exited; restarting.* child=ingest' \"$LOG\"; do sleep 0.2; done\n"
    )
    demo = helper("run", "--", "bash", "-c", script, env={**env, "LOG": str(log)}, cwd=REPO, stdout=subprocess.PIPE)
    processes.append(demo)
    output, _ = demo.communicate(timeout=scaled(110))
    assert demo.returncode == 0, output
    killed = int(output.split()[0])
    assert killed != decoy.pid and not alive(killed)
    text = log.read_text()
    assert re.search(r'msg="service exited; restarting" child=ingest code=-9', text), text
    assert alive(decoy.pid)


def test_two_demos_at_once_get_different_ports_none_of_the_fixed_ones(
    tmp_path: Path, python_env: dict[str, str], processes: list[subprocess.Popen[Any]]
) -> None:
    env = {**python_env, "TMPDIR": str(tmp_path)}
    release = tmp_path / "release"
    for name in ("a", "b"):
        script = f'cp "$EDGESIGHT_DEMO_SITE" {tmp_path}/{name}.yaml; until [ -e {release} ]; do sleep 0.1; done'
        processes.append(helper("run", "--", "bash", "-c", script, env=env, stdout=subprocess.DEVNULL))
    wait_until(lambda: all((tmp_path / f"{n}.yaml").exists() for n in "ab"), scaled(60), "both sites written")
    release.touch()

    def ports(name: str) -> list[int]:
        site = yaml.safe_load((tmp_path / f"{name}.yaml").read_text())
        rtsp = int(re.findall(r":(\d+)/", site["cameras"]["lobby"]["url"])[0])
        return [rtsp, site["uplink"]["mqtt"]["port"], site["console"]["port"], *site["metrics"]["ports"].values()]

    a, b = ports("a"), ports("b")
    wanted = 3 + len(metrics_ports())  # the camera, the broker, the console, and a metrics port each
    assert len(a) == len(set(a)) == wanted and len(b) == len(set(b)) == wanted
    assert not set(a) & set(b), "two demos never share a port"
    assert not (set(a) | set(b)) & FIXED_PORTS
    for process in processes:
        assert process.wait(timeout=scaled(30)) == 0


@pytest.mark.parametrize("ending", ["exit", "SIGTERM", "SIGINT", "SIGINT while holding"])
def test_the_demos_folders_and_processes_are_gone_when_it_ends(
    ending: str, tmp_path: Path, python_env: dict[str, str], processes: list[subprocess.Popen[Any]]
) -> None:
    env = {**python_env, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    script = (
        f'sleep 600 & echo $! > {out}.sleeper; touch "$EDGESIGHT_RUN_DIR/key.pem"\n'
        f'cp "$EDGESIGHT_DEMO_SITE" {out}.yaml; echo "$EDGESIGHT_RUN_DIR" > {out}\n'
    )
    if ending.endswith("holding"):  # its steps done, the console held up until Ctrl-C: the normal end
        script += 'touch "$EDGESIGHT_RUN_DIR/.holding"\n'
    if ending.endswith("holding"):  # its steps done, the console held up until Ctrl-C: the normal end
        script += 'touch "$EDGESIGHT_RUN_DIR/.holding"\n'
    release = tmp_path / "release"
    script += f"until [ -e {release} ]; do sleep 0.1; done\n" if ending == "exit" else "wait\n"
    demo = helper("run", "--", "bash", "-c", script, env=env, stdout=subprocess.PIPE)
    processes.append(demo)
    wait_until(lambda: out.exists() and out.read_text().strip(), scaled(60), "the demo started")
    folder = Path(out.read_text().strip())
    shm = Path(yaml.safe_load(Path(f"{out}.yaml").read_text())["site"]["shm_dir"])
    left = int(Path(f"{out}.sleeper").read_text())
    assert folder.is_dir() and folder.parent == tmp_path / "tmp" and shm.is_dir()
    if ending == "exit":
        release.touch()  # the command ends by itself, leaving its background sleep behind
    else:
        demo.send_signal(getattr(signal, ending.split()[0]))
    output, _ = demo.communicate(timeout=scaled(60))
    assert demo.returncode == (128 + getattr(signal, ending) if ending in ("SIGTERM", "SIGINT") else 0)
    assert not folder.exists() and not shm.exists(), output
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not alive(left), "what the demo started in the background is stopped with it"
    assert f"removed {folder}" in output


def test_the_console_is_held_until_ctrl_c_at_a_terminal_else_for_a_while() -> None:
    sys.path.insert(0, str(HELPER.parent))
    try:
        import demo_site
    finally:
        sys.path.remove(str(HELPER.parent))
    assert demo_site.hold_seconds({}, interactive=True) == ""
    assert demo_site.hold_seconds({}, interactive=False) == "30"
    assert demo_site.hold_seconds({"EDGESIGHT_DEMO_HOLD_S": "600"}, interactive=False) == "600"
    assert demo_site.hold_seconds({"EDGESIGHT_DEMO_HOLD_S": "5"}, interactive=True) == "5"

"""``scripts/gpu-check.sh``, the first run on a machine with an NVIDIA GPU, proven here on the stand-in of
TensorRT and cuda-python (tests/standin): every step passes, as root the GPU is seen as uid 10001, the engine
cache is reused, batches 1-4 match ONNX Runtime. And on this machine as it is (no GPU, no TensorRT) it
fails in a line that says so, not in a traceback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.gpu_check import Check, Options
from benchmarks.gpu_report import Records, Report, Step, StepFailed
from tests.conftest import REPO
from tests.support import scaled

SCRIPT = REPO / "scripts" / "gpu-check.sh"
STEPS = ["environment", "versions", "uid-10001", "build", "cache", "outputs", "batches", "throughput"]


def gpu_check(*arguments: str, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name != "OUT" and name != "PYTHONPATH" and not name.startswith("EDGESIGHT_STANDIN_")
    }
    command = [str(SCRIPT), "--python", python, *arguments]
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=scaled(100), cwd=REPO)


def test_every_step_passes_on_the_standin(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu-check.json"
    result = gpu_check("--standin", "--json", str(report_path), "--frames", "3", "--seconds", "0.3")
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert lines[0] == "STAND-IN: no GPU; figures are ONNX Runtime on the CPU underneath"
    report = json.loads(report_path.read_text())
    assert report["standin"] is True and report["finished"] and report["passed"]
    assert report["notice"] == "STAND-IN: no GPU; figures are ONNX Runtime on the CPU underneath"
    steps = report["steps"]
    assert list(steps) == STEPS
    root = os.geteuid() == 0  # CI runs as root: there the service user's step must pass, not skip
    for name, step in steps.items():
        wanted = "SKIP" if name == "uid-10001" and not root else "PASS"
        assert step["status"] == wanted, f"{name}: {step['summary']}"
        assert any(line.startswith(f"{wanted} {name} ") for line in lines), f"no line for {name}"
    assert "TensorRT 10.3.0 (stand-in)" in steps["versions"]["summary"]
    if root:
        assert steps["uid-10001"]["details"]["cuda_python"]["groups"] == [44]  # group video, as pods run
    assert steps["build"]["details"]["builds"] == 1
    assert steps["cache"]["details"]["builds"] == 1  # opened twice, built once
    assert steps["cache"]["details"]["standin_builds"] == 1
    assert steps["outputs"]["details"]["frames"] == 3
    assert steps["outputs"]["details"]["worst"]["within"] == 1.0
    batches = steps["batches"]["details"]["batches"]
    assert list(batches) == ["1", "2", "3", "4"] and all(batch["matched"] for batch in batches.values())
    throughput = steps["throughput"]["details"]
    assert throughput["tensorrt_batch1_fps"] > 0 and throughput["tensorrt_batch4_fps"] > 0
    assert throughput["onnxruntime_cpu_batch1_fps"] > 0
    assert lines[-1].startswith("gpu-check: PASS")


def test_without_tensorrt_or_a_gpu_it_fails_saying_so(tmp_path: Path) -> None:
    report_path = tmp_path / "gpu-check.json"
    result = gpu_check("--json", str(report_path))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output
    versions = next(line for line in result.stdout.splitlines() if line.startswith("FAIL versions"))
    assert "TensorRT cannot run here: backend tensorrt needs TensorRT and cuda-python" in versions
    assert "STAND-IN" not in output
    assert result.stdout.splitlines()[-1].startswith("gpu-check: FAIL (versions)")
    report = json.loads(report_path.read_text())
    assert report["standin"] is False and not report["passed"] and report["failed"] == ["versions"]
    assert all(report["steps"][name]["status"] == "SKIP" for name in STEPS[2:])


# -- as an attacker: what a local user plants where the check, run as root, would read or write

PLANT = """
import os, sys
folder, payload = sys.argv[1], sys.argv[2]
os.makedirs(folder, exist_ok=True)
for name in ("edgesight-attack.pth", "usercustomize.py"):
    with open(os.path.join(folder, name), "w") as planted:
        planted.write(payload)
"""


@pytest.fixture
def planted_user_site() -> Iterator[Path]:
    """A ``.pth`` (and a ``usercustomize``) planted by ``nobody`` in the user site-packages of HOME=/tmp, which
    any local user can create; it appends its uid and groups to the marker file it yields, when Python runs it."""
    marker_folder = Path(tempfile.mkdtemp(prefix="edgesight-attack-"))
    marker_folder.chmod(0o1777)  # the services' user, as whom the planted code would run, must write there
    marker = marker_folder / "ran"
    home = Path("/tmp/.local")
    site = home / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    made = [folder for folder in (site, *site.parents) if folder.is_relative_to(home) and not folder.exists()]
    payload = f"import os; open({str(marker)!r}, 'a').write(f'{{os.getuid()}} {{sorted(os.getgroups())}}\\n')\n"
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    plant = [sys.executable, "-I", "-c", PLANT, str(site), payload]
    if subprocess.run([*as_nobody, *plant], cwd="/", capture_output=True).returncode != 0:
        subprocess.run(plant, cwd="/", check=True)  # a /tmp/.local already there, not nobody's: planted as root
    try:
        yield marker
    finally:
        for name in ("edgesight-attack.pth", "usercustomize.py"):
            (site / name).unlink(missing_ok=True)
        for folder in made:  # deepest first
            shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(marker_folder, ignore_errors=True)


@pytest.fixture
def jetson_like_venv() -> Iterator[Path]:
    """The python of a venv made with ``--system-site-packages``, as the script makes .venv on a Jetson (a venv
    without them turns the user site off, one with them leaves it on), seeing this venv's packages too; in a
    folder of /tmp that uid 10001 can read, as it can read a checkout's .venv."""
    folder = Path(tempfile.mkdtemp(prefix="edgesight-venv-"))
    folder.chmod(0o755)
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(folder)], check=True
        )
        python = folder / "bin" / "python"
        found = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            text=True,
            capture_output=True,
            check=True,
        )
        ours = sysconfig.get_paths()["purelib"]
        Path(found.stdout.strip(), "edgesight-checkout.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
        yield python
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def as_service_user_with_home_tmp(python: str) -> None:
    """Python run as uid 10001 in group video with HOME=/tmp, as the probe was: the plant it meets runs."""
    subprocess.run(
        ["setpriv", "--reuid", "10001", "--regid", "10001", "--groups", "44", python, "-c", "pass"],
        env={"PATH": os.defpath, "HOME": "/tmp"},
        cwd="/",
        check=True,
    )


def test_the_service_user_probe_does_not_run_a_planted_user_site(
    tmp_path: Path, planted_user_site: Path, jetson_like_venv: Path
) -> None:
    report_path = tmp_path / "gpu-check.json"
    arguments = ["--json", str(report_path), "--frames", "1", "--seconds", "0.1", "--budget", "60"]
    result = gpu_check("--standin", *arguments, python=str(jetson_like_venv))
    steps = json.loads(report_path.read_text())["steps"]
    ran = planted_user_site.read_text() if planted_user_site.exists() else ""
    assert not ran, f"the planted .pth ran as uid 10001 (uid, groups: {ran.strip()})"
    assert steps["versions"]["status"] == "PASS", result.stdout + result.stderr
    assert steps["uid-10001"]["status"] == "PASS", steps["uid-10001"]["summary"]
    assert steps["uid-10001"]["details"]["cuda_python"]["groups"] == [44]
    as_service_user_with_home_tmp(str(jetson_like_venv))  # the plant is live
    assert set(planted_user_site.read_text().splitlines()) == {"10001 [44]"}


def test_the_driver_probe_does_not_run_a_planted_user_site(planted_user_site: Path) -> None:
    """The proof of the review: where this interpreter's probe fails (no cuda-python), the step asks the driver
    through /usr/bin/python3, whose user site is on. No GPU here: the step fails, but runs nothing planted."""
    system = subprocess.run(
        ["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
        text=True,
        capture_output=True,
        check=True,
    )
    # the plant is in this Python's user site: the system's must be the same version for it to be met
    assert system.stdout.strip() == str(sys.version_info[:2]), "/usr/bin/python3 is another Python version"
    check = Check(Options(standin=False, frames=1, seconds=0.1, verbose=False), Records(False))
    try:
        with pytest.raises(StepFailed) as failed:
            check.service_user()
    finally:
        check.close()
    assert "driver" in failed.value.details, failed.value
    ran = planted_user_site.read_text() if planted_user_site.exists() else ""
    assert not ran, f"the planted .pth ran as uid 10001 (uid, groups: {ran.strip()})"
    as_service_user_with_home_tmp("/usr/bin/python3")  # the plant is live
    assert set(planted_user_site.read_text().splitlines()) == {"10001 [44]"}


def test_the_report_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    report_path = tmp_path / "out" / "gpu-check.json"
    report_path.parent.mkdir()
    (report_path.parent / "gpu-check.json.partial").symlink_to(victim)
    report = Report(report_path, standin=True)
    report.add(Step("environment", "PASS", "as given", 0.0))
    assert report.close() == 0
    assert victim.read_text() == "untouched\n"
    assert json.loads(report_path.read_text())["steps"]["environment"]["status"] == "PASS"
    assert not report_path.is_symlink()


def test_a_failure_before_python_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    report_path = tmp_path / "gpu-check.json"
    report_path.symlink_to(victim)
    result = gpu_check("--json", str(report_path), "--python", str(tmp_path / "no-python"))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL environment" in result.stdout
    assert victim.read_text() == "untouched\n"
    assert not report_path.is_symlink()
    assert json.loads(report_path.read_text())["failed"] == ["environment"]

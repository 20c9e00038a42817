"""An app's own environment, built with uv by `edgesight panorama env`: its packages first, EdgeSight's after.

Nothing is downloaded: the app's package is a tiny project made here (its build backend is in its own
folder), numpy comes from EdgeSight's environment, and uv runs offline."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from common.config import load_config
from services.apps.environments import environment_dir, environment_problems, environment_python

BACKEND = '''\
"""A PEP 517 build backend that needs nothing installed: a wheel of tiny_pkg/."""
import base64
import hashlib
import zipfile
from pathlib import Path

DIST = "tiny_pkg-0.1.dist-info"


def _hash(data):
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = "tiny_pkg-0.1-py3-none-any.whl"
    files = {f"tiny_pkg/{p.name}": p.read_bytes() for p in Path("tiny_pkg").glob("*.py")}
    files[f"{DIST}/METADATA"] = b"Metadata-Version: 2.1\\nName: tiny-pkg\\nVersion: 0.1\\n"
    files[f"{DIST}/WHEEL"] = b"Wheel-Version: 1.0\\nGenerator: tiny\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n"
    record = "".join(f"{n},{_hash(d)},{len(d)}\\n" for n, d in files.items()) + f"{DIST}/RECORD,,\\n"
    with zipfile.ZipFile(Path(wheel_directory) / name, "w") as wheel:
        for member, data in files.items():
            wheel.writestr(member, data)
        wheel.writestr(f"{DIST}/RECORD", record)
    return name
'''


def tiny_project(folder: Path) -> Path:
    """A pyproject project named tiny-pkg whose module says hello."""
    (folder / "tiny_pkg").mkdir(parents=True)
    (folder / "tiny_pkg" / "__init__.py").write_text('GREETING = "hello from the app\'s own package"\n')
    (folder / "backend.py").write_text(BACKEND)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n\n'
        '[project]\nname = "tiny-pkg"\nversion = "0.1"\n'
    )
    return folder


def site_with(tmp_path: Path, requirements: list[str]) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    site = tmp_path / "site.yaml"
    site.write_text(
        textwrap.dedent(f"""\
        site: {{name: t, state_dir: {tmp_path / "state"}}}
        cameras: {{door: {{url: "rtsp://cam/door"}}}}
        apps:
          counter:
            code: {code}
            cameras: [door]
            requirements: {requirements}
        """)
    )
    return site


def edgesight_env(site: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`edgesight panorama env --config SITE counter` under umask 077: what it makes is still readable."""
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", "panorama", "env", "--config", str(site), "counter"],
        capture_output=True,
        text=True,
        env={**env, "UV_OFFLINE": "1"},  # nothing may be downloaded
        preexec_fn=lambda: os.umask(0o077),
        check=False,
        timeout=300,
    )


def test_an_apps_environment_has_its_own_package_and_edgesights_numpy(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    tiny = tiny_project(tmp_path / "tiny")
    site = site_with(tmp_path, [f"tiny-pkg @ {tiny.as_uri()}", "numpy"])  # numpy unpinned: EdgeSight's serves
    config = load_config(str(site))
    app = config.apps["counter"]
    [missing] = environment_problems(config, "counter", app)
    assert "apps.counter.requirements" in missing and "is missing" in missing

    result = edgesight_env(site, python_env)
    assert result.returncode == 0, result.stdout + result.stderr
    for step in ("apps.counter: building its environment", "[1/4]", "[2/4]", "[3/4]", "[4/4]", "apps.counter: ready"):
        assert step in result.stdout, result.stdout
    assert "EdgeSight's own numpy serve" in result.stdout  # said, and not downloaded (uv is offline)
    assert "tiny-pkg" in result.stdout  # uv's own output, streamed

    python = environment_python(tmp_path / "state", "counter", app)
    assert python == environment_dir(tmp_path / "state", "counter") / "bin" / "python"
    script = "import numpy, tiny_pkg; print(tiny_pkg.GREETING); print(tiny_pkg.__file__); print(numpy.__file__)"
    ran = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=True, env={})
    greeting, tiny_file, numpy_file = ran.stdout.splitlines()
    assert greeting == "hello from the app's own package"
    assert Path(tiny_file).is_relative_to(environment_dir(tmp_path / "state", "counter"))
    assert Path(numpy_file).is_relative_to(sys.prefix)  # EdgeSight's own, at the end of sys.path
    assert environment_problems(config, "counter", app) == []

    for root, dirs, files in os.walk(environment_dir(tmp_path / "state", "counter")):
        for path in [Path(root), *(Path(root) / name for name in (*dirs, *files))]:
            mode = path.lstat().st_mode
            if not stat.S_ISLNK(mode):
                assert mode & 0o444 == 0o444 and not mode & 0o022, f"{path}: {stat.filemode(mode)}"
                assert not stat.S_ISDIR(mode) or mode & 0o111 == 0o111, f"{path}: {stat.filemode(mode)}"

    changed = site_with(tmp_path, [f"tiny-pkg @ {tiny.as_uri()}", "numpy", "shapely"])
    config = load_config(str(changed))
    [stale] = environment_problems(config, "counter", config.apps["counter"])
    assert stale.startswith(f"{changed}:") and "is stale" in stale, stale
    assert stale.endswith(f"`edgesight panorama env --config {changed} counter`")


@pytest.mark.parametrize("requirement", ["edgesight-no-such-package-anywhere==0.0.1"])
def test_a_build_that_fails_leaves_the_environment_stale(
    tmp_path: Path, python_env: dict[str, str], requirement: str
) -> None:
    site = site_with(tmp_path, [requirement])
    result = edgesight_env(site, python_env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "apps.counter: its environment was not built" in result.stderr
    config = load_config(str(site))
    [problem] = environment_problems(config, "counter", config.apps["counter"])
    assert "is stale" in problem  # the venv is there, the stamp is not


def test_panorama_import_builds_the_environment_where_the_written_site_file_says(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    tiny = tiny_project(tmp_path / "tiny")
    app = tmp_path / "greeter"
    app.mkdir()
    (app / "app.py").write_text(
        "import panoramasdk\n\n\nclass Greeter(panoramasdk.base):\n    def interface(self):\n"
        "        return {'parameters': (), 'inputs': (('media[]', 'video_in', 'in'),), 'outputs': ()}\n"
    )
    (app / "Dockerfile").write_text(
        "FROM public.ecr.aws/panorama/panorama-application\nCOPY . /panorama\n"
        "RUN pip3 install --no-cache-dir -r /panorama/requirements.txt\n"
    )
    (app / "requirements.txt").write_text(f"tiny-pkg @ {tiny.as_uri()}\n")
    base = tmp_path / "base.yaml"
    base.write_text(f"site: {{name: t, state_dir: {tmp_path / 'elsewhere'}}}\n")
    out = tmp_path / "site.yaml"
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "panorama", "import", str(app), "--camera", "door=rtsp://cam/door",
         "--base", str(base), "--out", str(out)],
        capture_output=True, text=True, env={**python_env, "UV_OFFLINE": "1"}, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_config(str(out))
    assert config.apps["greeter"].requirements == [f"tiny-pkg @ {tiny.as_uri()}"]  # once, from both
    assert f"apps.greeter: building its environment in {tmp_path / 'elsewhere'}" in result.stdout
    assert environment_problems(config, "greeter", config.apps["greeter"]) == []

"""Building an app's own environment with uv: ``edgesight panorama env``, never the apps service.

* ``uv venv --python <apps.<app>.python, else the Python EdgeSight's environment is built on>``;
* where that Python has EdgeSight's major.minor version, a ``.pth`` file puts EdgeSight's own
  site-packages at the *end* of the environment's ``sys.path``: numpy, OpenCV and the SDK's own
  dependencies come from EdgeSight, and whatever the app installs itself comes first. A requirement
  that names numpy or OpenCV without a version (``numpy``, ``opencv-python``) is left to EdgeSight's
  copy; pin a version to get the app's own. On another Python, numpy is installed too;
* ``uv pip install --python <env>/bin/python -r <the requirements>``;
* everything readable, nothing writable, by other users (the app runs as its own uid);
* the stamp (``environments.py``) written last: a build that stops half-way leaves it "stale".
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

from common.config import AppConfig, SiteConfig
from common.errors import EdgeSightError
from services.apps.environments import (
    edgesight_python,
    environment_dir,
    has_own_environment,
    shared_site_packages,
    write_stamp,
)
from services.apps.requirements import bare_name, requirement_name

__all__ = ["EnvironmentBuildError", "build_environment", "build_environments"]

REQUIREMENTS = "edgesight-requirements.txt"  # what was handed to uv, kept for whoever looks
SHARED_PTH = "zz_edgesight_shared.pth"  # "zz": after any .pth of the app's own packages
# an unpinned requirement of one of these is met by EdgeSight's own package (the right side): the one the
# SDK and OpenCV were built with (and cv2 without the GUI libraries a headless box lacks)
_OPENCV = "opencv-python-headless"
SHARED = {"numpy": "numpy", "opencv-python": _OPENCV, _OPENCV: _OPENCV}


class EnvironmentBuildError(EdgeSightError):
    """An app's environment could not be built (uv missing, a requirement that does not resolve)."""


Say = Callable[[str], None]


def _stream(command: Sequence[str], say: Say, *, cwd: Path | None = None) -> None:
    """Runs ``command``, each line of its output said as it comes; a failure is an EnvironmentBuildError."""
    try:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise EnvironmentBuildError(f"{command[0]}: {exc.strerror or exc}") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            say(f"    {line.rstrip()}")
    if process.returncode:
        raise EnvironmentBuildError(f"`{shlex.join(command)}` failed (exit {process.returncode})")


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentBuildError(f"uv is not installed beside EdgeSight ({exc}); pip install uv") from exc


def _interpreter_facts(python: Path) -> tuple[str, str]:
    """``(major.minor, purelib)`` of an environment's interpreter."""
    script = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_paths()['purelib'])"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=False)
    if result.returncode:
        raise EnvironmentBuildError(f"{python} does not run: {result.stderr.strip()}")
    version, purelib = result.stdout.splitlines()[:2]
    return version, purelib


def _shared(requirement: str) -> bool:
    """An unpinned requirement (a bare name) of numpy or OpenCV, which EdgeSight's own environment holds."""
    bare = bare_name(requirement)
    name = SHARED.get(bare) if bare is not None else None
    if name is None:
        return False
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _open_to_readers(folder: Path) -> None:
    """Everything under ``folder`` readable (and folders and programs enterable) by other users, writable
    only by us: the app runs as its own unprivileged uid."""
    for root, dirs, files in os.walk(folder):
        for path in [Path(root), *(Path(root) / name for name in (*dirs, *files))]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue  # bin/python points at the interpreter, which is not ours to change
            mode = stat.S_IMODE(info.st_mode) | 0o444
            if stat.S_ISDIR(info.st_mode) or mode & 0o111:
                mode |= 0o111
            path.chmod(mode & ~0o022)


def _remove(folder: Path, say: Say) -> None:
    if folder.exists() or folder.is_symlink():
        say("  removing the previous one")
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()


def _to_install(app: AppConfig, version: str, purelib: str, say: Say) -> list[str]:
    """The requirements uv installs: on EdgeSight's Python, without those EdgeSight's own packages
    serve (which its ``.pth`` shares); on another, with numpy."""
    edgesight = "{}.{}".format(*sys.version_info[:2])
    requirements = list(app.requirements)
    if version == edgesight:
        Path(purelib, SHARED_PTH).write_text("\n".join(shared_site_packages()) + "\n")
        shared = [line for line in requirements if _shared(line)]
        requirements = [line for line in requirements if line not in shared]
        say(f"  [2/4] Python {version}, as EdgeSight's: its packages come after the app's own on sys.path")
        if shared:
            say(f"        EdgeSight's own {', '.join(shared)} serve (pin a version to install the app's own)")
    else:
        if not any(requirement_name(line) == "numpy" for line in requirements):
            requirements.append("numpy")
        say(f"  [2/4] Python {version}, not EdgeSight's {edgesight}: nothing shared, numpy installed too")
    return requirements


def build_environment(state_dir: Path, name: str, app: AppConfig, *, say: Say = print) -> Path:
    """Builds ``name``'s own environment from scratch (see the module's docstring) and returns its
    interpreter; raises EnvironmentBuildError, leaving it "stale", where a step fails."""
    folder = environment_dir(state_dir, name)
    python_spec = app.python or edgesight_python()
    uv = _uv()
    say(f"apps.{name}: building its environment in {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove(folder, say)
    say(f"  [1/4] a virtual environment on {python_spec}")
    _stream([uv, "venv", "--no-project", "--python", python_spec, str(folder)], say, cwd=folder.parent)
    python = folder / "bin" / "python"
    requirements = _to_install(app, *_interpreter_facts(python), say)
    (folder / REQUIREMENTS).write_text("".join(f"{line}\n" for line in requirements))
    if requirements:
        say(f"  [3/4] installing {len(requirements)} requirement(s) with uv")
        install = ["pip", "install", "--python", str(python), "--compile-bytecode", "-r", str(folder / REQUIREMENTS)]
        _stream([uv, *install], say, cwd=app.code if app.code.is_dir() else folder)
    else:
        say("  [3/4] nothing to install")
    say("  [4/4] readable by the app's own user, writable by none")
    _open_to_readers(folder)
    write_stamp(folder, app)
    say(f"apps.{name}: ready ({python})")
    return python


def build_environments(config: SiteConfig, names: Iterable[str] = (), *, say: Say = print) -> int:
    """Builds the environments of ``names`` (default: every app with requirements or a python); the exit
    status of ``edgesight panorama env``."""
    names = list(names)
    unknown = [name for name in names if name not in config.apps]
    if unknown:
        print(f"{config.source}: no app {unknown} under apps: (apps: {sorted(config.apps)})", file=sys.stderr)
        return 2
    chosen = names or [name for name, app in config.apps.items() if has_own_environment(app)]
    failed = []
    for name in chosen:
        app = config.apps[name]
        if not has_own_environment(app):
            say(f"apps.{name}: no requirements and no python; it runs on EdgeSight's shared environment")
            continue
        try:
            build_environment(Path(config.site.state_dir), name, app, say=say)
        except (EnvironmentBuildError, OSError) as exc:
            print(f"apps.{name}: its environment was not built: {exc}", file=sys.stderr)
            failed.append(name)
    if not chosen:
        say(f"{config.source}: no app has requirements; every app runs on EdgeSight's shared environment")
    return 1 if failed else 0

"""Where an app's own environment lives, and whether it can be used as it is.

An app with ``apps.<app>.requirements`` or ``apps.<app>.python`` runs on a virtual environment of its
own at ``state_dir/apps/<app>/env``, built ahead of time by ``edgesight panorama env``
(``environment_build.py``), never when the service runs. A stamp written last in it (a hash of the
Python, EdgeSight's shared site-packages and the requirements) locks it to what it was built for: an
environment whose build was interrupted, or whose requirements changed since, is "stale" to
:func:`environment_problems`, which ``edgesight config check`` and the apps service's check report.
"""

from __future__ import annotations

import hashlib
import json
import sys
import sysconfig
from pathlib import Path

from common.config import AppConfig, SiteConfig

__all__ = [
    "edgesight_python",
    "environment_dir",
    "environment_problems",
    "environment_python",
    "has_own_environment",
    "shared_site_packages",
    "write_stamp",
]

STAMP = "edgesight-env.json"  # in the environment's folder; its absence means "not built to the end"
STAMP_FORMAT = 1


def environment_dir(state_dir: Path, app_name: str) -> Path:
    """Where ``app_name``'s own environment lives: ``state_dir/apps/<app>/env``."""
    return state_dir / "apps" / app_name / "env"


def has_own_environment(app: AppConfig) -> bool:
    """Whether the app needs an environment of its own (requirements or a python); else it runs on EdgeSight's."""
    return bool(app.requirements) or app.python is not None


def environment_python(state_dir: Path, name: str, app: AppConfig) -> Path | None:
    """The interpreter ``name`` runs on: its environment's, or None where it has no requirements and no
    ``python`` (it runs on EdgeSight's shared environment). Whether that environment is built is
    :func:`environment_problems`'s question."""
    return environment_dir(state_dir, name) / "bin" / "python" if has_own_environment(app) else None


def edgesight_python() -> str:
    """The interpreter EdgeSight's own virtual environment is built on."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def shared_site_packages() -> list[str]:
    """EdgeSight's own site-packages, which an environment on its Python version reads after the app's."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _digest(app: AppConfig) -> str:
    """What the environment is built from: its Python, the shared site-packages and the requirements."""
    key = {
        "format": STAMP_FORMAT,
        "python": app.python or edgesight_python(),
        "shared": shared_site_packages(),
        "requirements": app.requirements,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def write_stamp(folder: Path, app: AppConfig) -> None:
    """Marks the environment in ``folder`` as built for ``app``: the last step of a build, atomically."""
    temporary = folder / f".{STAMP}.tmp"
    data = {"digest": _digest(app), "python": app.python or edgesight_python(), "requirements": app.requirements}
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.chmod(0o644)
    temporary.replace(folder / STAMP)


def _build_command(config: SiteConfig, name: str) -> str:
    return f"edgesight panorama env --config {config.source} {name}"


def environment_problems(config: SiteConfig, name: str, app: AppConfig) -> list[str]:
    """Why ``name``'s own environment cannot be used as it is ("missing" or "stale"), with the site file
    location and the command that builds it; empty when it needs none or it is built for these
    requirements."""
    if not has_own_environment(app):
        return []
    where = config.where("apps", name, "requirements" if app.requirements else "python")
    folder = environment_dir(Path(config.site.state_dir), name)
    build = _build_command(config, name)
    if not (folder / "bin" / "python").exists() and not (folder / STAMP).exists():
        return [f"{where}: app {name!r} has packages of its own but its environment {folder} is missing; build it "
                f"with `{build}`"]  # fmt: skip
    try:
        stamp = json.loads((folder / STAMP).read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        stamp = None
    if stamp != _digest(app):
        return [f"{where}: app {name!r}'s environment {folder} is stale (built for other requirements or Python, or "
                f"its build did not finish); rebuild it with `{build}`"]  # fmt: skip
    return []

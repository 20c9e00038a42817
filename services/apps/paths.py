"""The paths Panorama applications hard-code, and where each app's really live."""

from __future__ import annotations

from pathlib import Path

__all__ = ["LOGS", "PANORAMA", "STORAGE", "app_dirs"]

PANORAMA = Path("/panorama")  # the code package's files
LOGS = Path("/opt/aws/panorama/logs")
STORAGE = Path("/opt/aws/panorama/storage")


def app_dirs(state_dir: Path, app: str) -> dict[Path, Path]:
    """Where each Panorama path of ``app`` but /panorama really lives (logs and storage survive restarts)."""
    base = state_dir / "apps" / app
    return {LOGS: base / "logs", STORAGE: base / "storage"}

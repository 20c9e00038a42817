"""Fixtures for tests that start real services."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.config import load_config
from tests.support import wait_for


@pytest.fixture
def broker(site_file: Path, python_env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], str, Any]]:
    """A broker process, ready; yields (process, metrics base URL, config)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "services.broker", "--config", str(site_file), "--instance", "b1"],
        env=python_env,
        stderr=subprocess.PIPE,
        text=True,
    )
    config = load_config(site_file)
    base = f"http://127.0.0.1:{config.metrics.port('broker')}"
    try:
        wait_for(f"{base}/readyz")
        yield process, base, config
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

"""The metrics every service exposes, as real Prometheus tools see them."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import deadline, http_get, prometheus_query, tool


def test_metrics_pass_promtool_lint(broker: tuple[Any, str, Any]) -> None:
    _, base, _ = broker
    _, text = http_get(f"{base}/metrics")
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_prometheus_scrapes_the_broker(
    broker: tuple[Any, str, Any], tmp_path: Path, prometheus: Callable[[Path], str]
) -> None:
    _, base, _ = broker
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: edgesight\n    static_configs: [{{targets: ['{base.removeprefix('http://')}']}}]\n"
    )
    check = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    url = prometheus(config)
    end = deadline(60)
    ready: list[dict[str, Any]] = []
    while time.monotonic() < end:
        ready = prometheus_query(url, 'edgesight_service_ready{job="edgesight",service="broker"}')
        if ready:
            break
        time.sleep(0.5)
    assert ready, (tmp_path / "prometheus.log").read_text()[-2000:]
    assert ready[0]["value"][1] == "1"
    (up,) = prometheus_query(url, 'up{job="edgesight"}')
    assert up["value"][1] == "1"
    # the loop heartbeat histogram is really observed, not just declared
    (beats,) = prometheus_query(url, 'edgesight_event_loop_lag_seconds_count{service="broker"}')
    assert float(beats["value"][1]) >= 1

"""The metrics every service exposes, as real Prometheus tools see them."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port
from tests.support import http_get, tool, wait_for


def test_metrics_pass_promtool_lint(broker: tuple[Any, str, Any]) -> None:
    _, base, _ = broker
    _, text = http_get(f"{base}/metrics")
    result = subprocess.run(
        [tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def query(prometheus: str, expression: str) -> list[dict[str, Any]]:
    _, body = http_get(f"{prometheus}/api/v1/query?{urllib.parse.urlencode({'query': expression})}")
    answer = json.loads(body)
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


@pytest.mark.slow
def test_prometheus_scrapes_the_broker(broker: tuple[Any, str, Any], tmp_path: Path) -> None:
    _, base, _ = broker
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: edgesight\n    static_configs: [{{targets: ['{base.removeprefix('http://')}']}}]\n"
    )
    check = subprocess.run([tool("promtool"), "check", "config", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    log = (tmp_path / "prometheus.log").open("w")
    prometheus = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(f"{url}/-/ready", seconds=30)
        deadline = time.monotonic() + 30
        ready: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            ready = query(url, 'edgesight_service_ready{job="edgesight",service="broker"}')
            if ready:
                break
            time.sleep(0.5)
        assert ready, (tmp_path / "prometheus.log").read_text()[-2000:]
        assert ready[0]["value"][1] == "1"
        (up,) = query(url, 'up{job="edgesight"}')
        assert up["value"][1] == "1"
        # the loop heartbeat histogram is really observed, not just declared
        (beats,) = query(url, 'edgesight_event_loop_lag_seconds_count{service="broker"}')
        assert float(beats["value"][1]) >= 1
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=10)
        log.close()

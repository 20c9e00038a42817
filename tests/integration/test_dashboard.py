"""The shipped Prometheus config, alert rules and Grafana dashboard against a real Prometheus scraping a
real pipeline under `edgesight run`: every query of every panel finds data, every rule loads."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from common.config import load_config
from tests.conftest import write_site
from tests.support import deadline, hall_camera, http_get, prometheus_query, tool

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SCRAPE_S = 30


def local_scrape_config(site: Path, rules: Path) -> str:
    """compose/prometheus/prometheus.yml with its targets moved to this site's ports (and `edgesight run`'s)."""
    config = yaml.safe_load((REPO / "compose" / "prometheus" / "prometheus.yml").read_text())
    ports = load_config(site).metrics
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "edgesight")
    job["static_configs"] = [
        {"targets": [f"127.0.0.1:{ports.port(c['labels']['service'])}"], "labels": c["labels"]}
        for c in job["static_configs"]
        if c["labels"]["service"] not in ("console", "fleet")  # this site has neither
    ] + [{"targets": [f"127.0.0.1:{ports.port('run')}"], "labels": {"service": "run"}}]
    config["scrape_configs"] = [job]
    return yaml.safe_dump(config)


def test_every_panel_of_the_dashboard_finds_data_in_a_real_prometheus(
    tmp_path: Path, python_env: dict[str, str], prometheus: Callable[[Path], str]
) -> None:
    site = write_site(
        tmp_path,
        {
            "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}},
            "cameras": {"hall": hall_camera()},
            "uplink": {"jsonl": {"path": "uplink.jsonl"}},
        },
    )
    config_file = tmp_path / "prometheus.yml"
    config_file.write_text(local_scrape_config(site, REPO / "compose" / "prometheus" / "alerts.yml"))
    check = subprocess.run([tool("promtool"), "check", "config", str(config_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    edgesight = str(Path(sys.executable).parent / "edgesight")
    run_log = (tmp_path / "run.log").open("w")
    pipeline = subprocess.Popen(
        # --for: a net should the test die; it stops the pipeline itself, when done (as long as that takes)
        [edgesight, "run", str(site), "--for", "900", "--status-interval", "100"],
        env=python_env,
        stdout=run_log,
        stderr=subprocess.STDOUT,
    )
    try:
        url = prometheus(config_file)
        end = deadline(120)
        while time.monotonic() < end:  # the pipeline is up: every target answers, a line was crossed
            up = prometheus_query(url, 'up{job="edgesight"}')
            if (
                len(up) == 6
                and all(r["value"][1] == "1" for r in up)
                and prometheus_query(url, "edgesight_line_crossings_total")
            ):
                break
            time.sleep(1)
        else:
            raise AssertionError(f"targets: {up}\n{(tmp_path / 'run.log').read_text()[-3000:]}")
        time.sleep(SCRAPE_S)

        dashboard = json.loads((REPO / "compose" / "grafana" / "dashboards" / "edgesight.json").read_text())
        empty = []
        expressions = []
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expression = re.sub(r"\$(camera|model)\b", ".*", target["expr"])  # the variables' "All"
                expressions.append(expression)
                if not prometheus_query(url, expression):
                    empty.append(f"{panel['title']}: {target['expr']}")
        assert len(expressions) >= 20
        assert not empty, "panels without data:\n" + "\n".join(empty)
        for variable in dashboard["templating"]["list"]:
            found = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["query"]["query"])
            assert found, variable["query"]
            metric, label = found.groups()
            _, body = http_get(f"{url}/api/v1/label/{label}/values?match[]={metric}")
            assert json.loads(body)["data"], variable["name"]

        _, body = http_get(f"{url}/api/v1/rules")
        groups = json.loads(body)["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        written = [
            r
            for g in yaml.safe_load((REPO / "compose/prometheus/alerts.yml").read_text())["groups"]
            for r in g["rules"]
        ]
        assert len(rules) == len(written) and all(rule["health"] == "ok" for rule in rules), rules
        _, body = http_get(f"{url}/api/v1/alerts")
        firing = [a["labels"]["alertname"] for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"]
        assert firing == [], firing  # a healthy pipeline raises nothing
    finally:
        pipeline.terminate()
        pipeline.wait(timeout=30)
        run_log.close()

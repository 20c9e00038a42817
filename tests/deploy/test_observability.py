"""What ships to watch a site: Prometheus' scrape config and alert rules (with promtool's own unit tests),
the Grafana dashboard and its provisioning, the compose stack around EdgeSight, and the k3s overlays'
monitoring parts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.config import load_config
from tests.deploy.test_manifests import COMPOSE, K3S, KUBERNETES_VERSION, compose_config, edgesight_services, kustomize
from tests.support import tool

PROMETHEUS = COMPOSE / "prometheus"
GRAFANA = COMPOSE / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "edgesight.json"
ALERTS_TEST = Path(__file__).parent / "alerts_test.yml"


def promtool(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("promtool"), *arguments], capture_output=True, text=True, check=False)


# --- Prometheus ------------------------------------------------------------------------------


def test_promtool_checks_the_config_and_the_rules() -> None:
    config = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout
    rules = promtool("check", "rules", str(PROMETHEUS / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr


def test_every_alert_passes_its_promtool_unit_test() -> None:
    result = promtool("test", "rules", str(ALERTS_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    alerts = {
        rule["alert"]
        for group in yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    tested = {
        case["alertname"]
        for test in yaml.safe_load(ALERTS_TEST.read_text())["tests"]
        for case in test["alert_rule_test"]
    }
    assert alerts == tested, f"alerts without a unit test: {alerts - tested}"
    wanted = {
        "EdgeSightCameraDown",
        "EdgeSightServiceDown",
        "EdgeSightServiceNotReady",
        "EdgeSightServiceRestarting",
        "EdgeSightSpoolGrowing",
        "EdgeSightSpoolStale",
        "EdgeSightSinkDisconnected",
        "EdgeSightInferenceSlow",
        "EdgeSightFramesBehind",
    }
    assert wanted <= alerts


def test_a_broken_alert_fails_its_unit_test(tmp_path: Path) -> None:
    rules = (PROMETHEUS / "alerts.yml").read_text().replace("edgesight_camera_up == 0", "edgesight_camera_up == 2")
    (tmp_path / "alerts.yml").write_text(rules)
    (tmp_path / "alerts_test.yml").write_text(
        ALERTS_TEST.read_text().replace("../../compose/prometheus/alerts.yml", str(tmp_path / "alerts.yml"))
    )
    result = promtool("test", "rules", str(tmp_path / "alerts_test.yml"))
    assert result.returncode != 0 and "EdgeSightCameraDown" in result.stdout + result.stderr


def test_compose_prometheus_scrapes_every_edgesight_service_on_its_metrics_port() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    (job,) = (j for j in config["scrape_configs"] if j["job_name"] == "edgesight")
    targets = {c["labels"]["service"]: c["targets"] for c in job["static_configs"]}
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    site = load_config(COMPOSE / "site.yaml")
    expected = set(edgesight_services(compose)) - {"apps"}  # apps runs only where the site has apps:
    assert set(targets) == expected
    for service, (target,) in targets.items():
        assert target == f"{service}:{site.metrics.port(service)}"


# --- Grafana -----------------------------------------------------------------------------------


def dashboard_expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of every panel, rows' nested panels included."""
    found = []
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                found.append((inner["title"], target["expr"]))
    return found


def test_the_dashboard_is_what_grafana_needs_to_load_it() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    datasource = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "edgesight.yml").read_text())
    (source,) = datasource["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    assert dashboard["uid"] == "edgesight-overview" and isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert len(panels) >= 12
    for panel in panels:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert all(t["datasource"]["uid"] == source["uid"] for t in panel["targets"]), panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]) and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert set(variables) == {"camera", "model"}
    assert all(v["datasource"]["uid"] == source["uid"] for v in variables.values())
    uses = " ".join(expr for _, expr in dashboard_expressions(dashboard))
    assert '$camera"' in uses and '$model"' in uses
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "edgesight.yml").read_text())
    (dashboards,) = provider["providers"]
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    mounts = dict(volume.split(":")[:2][::-1] for volume in compose["services"]["grafana"]["volumes"])
    assert mounts[dashboards["options"]["path"]] == "./grafana/dashboards"


def test_the_dashboard_charts_what_the_issue_asks_for() -> None:
    uses = " ".join(expr for _, expr in dashboard_expressions(json.loads(DASHBOARD.read_text())))
    for metric in (
        "edgesight_camera_up", "edgesight_camera_state", "edgesight_camera_decode_seconds_count",
        "edgesight_camera_frames_total", "edgesight_camera_frames_dropped_total", "edgesight_camera_reconnects_total",
        "edgesight_inference_seconds_bucket", "edgesight_inference_frame_age_seconds_bucket",
        "edgesight_inference_frames_skipped_total", "edgesight_rule_events_total", "edgesight_line_crossings_total",
        "edgesight_zone_occupancy", "edgesight_spool_events", "edgesight_spool_oldest_age_seconds",
        "edgesight_sink_sent_total", "edgesight_sink_failures_total", "edgesight_sink_connected",
        "edgesight_supervisor_restarts_total", "edgesight_event_loop_lag_seconds_bucket",
        "process_cpu_seconds_total", "process_resident_memory_bytes",
    ):  # fmt: skip
        assert metric in uses, metric
    assert "by (le, model, batch)" in uses  # latency per model and batch size


# --- compose --------------------------------------------------------------------------------------


def test_compose_brings_its_own_mosquitto_prometheus_and_grafana() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"mosquitto", "prometheus", "grafana"} <= set(services)
    for name in ("mosquitto", "prometheus", "grafana"):
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which is not in compose/"
    assert load_config(COMPOSE / "site.yaml").uplink.mqtt.host == "mosquitto"  # type: ignore[union-attr]
    assert "GRAFANA_ADMIN_PASSWORD" in str(services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"])


def test_compose_wants_a_grafana_password() -> None:
    result = compose_config(COMPOSE / "docker-compose.yml", GRAFANA_ADMIN_PASSWORD="")
    assert result.returncode != 0 and "GRAFANA_ADMIN_PASSWORD" in result.stderr


# --- k3s ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", ["cpu", "jetson"])
def test_every_pod_is_scraped_on_its_metrics_port_and_has_requests_and_limits(overlay: str) -> None:
    workloads = [doc for doc in kustomize(K3S / "overlays" / overlay) if doc["kind"] in ("Deployment", "StatefulSet")]
    for workload in workloads:
        template = workload["spec"]["template"]
        (container,) = template["spec"]["containers"]
        metrics = next(p["containerPort"] for p in container["ports"] if p["name"] == "metrics")
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == metrics
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == "edgesight"
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), workload["metadata"]["name"]
        assert "memory" in resources["limits"], workload["metadata"]["name"]
        if overlay == "cpu" or workload["metadata"]["name"] in ("edgesight-inference", "edgesight-ingest"):
            assert "cpu" in resources["limits"], workload["metadata"]["name"]


def test_the_jetson_overlay_runs_tensorrt_on_the_nvidia_runtime(tmp_path: Path) -> None:
    docs = kustomize(K3S / "overlays" / "jetson")
    workloads = {d["metadata"]["name"]: d for d in docs if d["kind"] in ("Deployment", "StatefulSet")}
    for name in ("edgesight-inference", "edgesight-apps", "edgesight-ingest"):
        assert workloads[name]["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia", name
    images = {c["image"] for w in workloads.values() for c in w["spec"]["template"]["spec"]["containers"]}
    assert images == {"edgesight:jetson"}
    inference = workloads["edgesight-inference"]["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in inference["containers"][0]["env"]}
    mounts = {m["mountPath"] for m in inference["containers"][0]["volumeMounts"]}
    assert env["EDGESIGHT_ENGINE_CACHE"] in mounts  # engines survive the pod (a build takes minutes)
    (configmap,) = (d for d in docs if d["kind"] == "ConfigMap")
    site = tmp_path / "site.yaml"
    site.write_text(configmap["data"]["site.yaml"])
    assert {model.backend for model in load_config(site).models.values()} == {"tensorrt"}
    cpu = kustomize(K3S / "overlays" / "cpu")
    assert all("runtimeClassName" not in d["spec"]["template"]["spec"] for d in cpu if "template" in d.get("spec", {}))


def test_the_operator_overlay_adds_a_servicemonitor_and_the_same_alert_rules() -> None:
    docs = kustomize(K3S / "overlays" / "cpu-operator")
    builtin = [d for d in docs if d["kind"] not in ("ServiceMonitor", "PrometheusRule")]
    for doc in builtin:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    (rule,) = (d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    (monitor,) = (d for d in docs if d["kind"] == "ServiceMonitor")
    (service,) = (d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "edgesight-metrics")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert pods and all(service["spec"]["selector"].items() <= labels.items() for labels in pods)

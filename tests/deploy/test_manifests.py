"""The compose file and the k3s kustomization: valid for their real tools, and in step with the code.

Nothing here runs containers (no Docker engine or cluster on the test machine); what can be checked
without one is checked with the real tools: docker-compose's validator, kubectl's kustomize and
kubernetes-validate's offline schemas.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from common.bus import Endpoint
from common.config import load_config
from common.config.metrics import DEFAULT_PORTS
from services.inference.shard import INFERENCE_REPLICA_VARIABLE, replica_shard
from tests.support import tool

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose"
K3S = REPO / "k3s"
KUBERNETES_VERSION = "1.32"  # k3s stable when this was written; the schemas are bundled offline


def compose_config(path: Path, **environment: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GRAFANA_ADMIN_PASSWORD": "test-only", **environment}
    env = {key: value for key, value in env.items() if value}  # "" unsets
    return subprocess.run(
        [tool("docker-compose"), "-f", str(path), "config", "-q"], capture_output=True, text=True, check=False, env=env
    )


def edgesight_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services that run EdgeSight (not Mosquitto, Prometheus or Grafana)."""
    return {name: s for name, s in compose["services"].items() if "EDGESIGHT_IMAGE" in str(s.get("image", ""))}


def kustomize(folder: Path) -> list[dict[str, Any]]:
    result = subprocess.run([tool("kubectl"), "kustomize", str(folder)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def service_module(command: list[str]) -> str:
    """``["services.broker", "--config", ...]`` (or a shell line running it) -> ``broker``, checked to be runnable."""
    found = re.search(r"\b(services\.[a-z_]+)\b", " ".join(command))
    assert found, command
    module = found.group(1)
    assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{module} has no __main__"
    return module.removeprefix("services.")


# --- docker compose ---------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    result = compose_config(COMPOSE / "docker-compose.yml")
    assert result.returncode == 0, result.stderr


def test_compose_misspelt_key_is_reported(tmp_path: Path) -> None:
    text = (COMPOSE / "docker-compose.yml").read_text().replace("shm_size:", "shm_sise:")
    (tmp_path / "docker-compose.yml").write_text(text)
    (tmp_path / "site.yaml").write_text((COMPOSE / "site.yaml").read_text())
    result = compose_config(tmp_path / "docker-compose.yml")
    assert result.returncode != 0
    assert "shm_sise" in result.stderr


def test_compose_services_match_the_code() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    config = load_config(COMPOSE / "site.yaml")
    services = edgesight_services(compose)
    assert set(services) == set(DEFAULT_PORTS) - {"run"}, "a service of the code is missing from compose"
    for name, service in services.items():
        assert service_module(service["command"]) == name
        # the healthcheck and the published port must be the port the service really listens on
        port = int(service["environment"]["EDGESIGHT_METRICS_PORT"])
        assert port == config.metrics.port(name) == DEFAULT_PORTS[name]
        listening = {port} | ({config.console.port} if name == "console" and config.console else set())
        for published in service.get("ports", []):
            assert int(published.rsplit(":", 1)[1]) in listening, f"{name} publishes {published}, not {listening}"
    # every service but the owner of /dev/shm joins its IPC namespace, or frames would not be shared
    owners = [n for n, s in services.items() if s.get("ipc") == "shareable"]
    assert owners == ["broker"]
    assert all(s["ipc"] in ("shareable", "service:broker") for s in services.values())


def test_compose_site_file_passes_config_check() -> None:
    config = load_config(COMPOSE / "site.yaml")
    assert config.metrics.host == "0.0.0.0"  # reachable through the published ports
    assert Endpoint.parse(config.bus.publish).address.startswith("ipc:///run/edgesight/")


def test_dockerfile_copies_what_exists() -> None:
    dockerfile = (COMPOSE / "Dockerfile").read_text()
    copies = re.findall(r"^COPY (?!--)(.+)$", dockerfile, flags=re.MULTILINE)  # not the build-stage copy
    assert copies, "no COPY lines found"
    for line in copies:
        for source in line.split()[:-1]:
            assert (REPO / source).exists(), f"Dockerfile copies {source}, which is not in the repository"


# --- k3s -----------------------------------------------------------------------------------


OVERLAYS = {"cpu": K3S / "base" / "site.yaml", "jetson": K3S / "overlays" / "jetson" / "site.yaml"}


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def manifests(overlay: str) -> list[dict[str, Any]]:
    return kustomize(K3S / "overlays" / overlay)


@pytest.fixture(scope="module")
def k3s_site(overlay: str) -> Path:
    return OVERLAYS[overlay]


def test_kustomization_is_valid_kubernetes(manifests: list[dict[str, Any]]) -> None:
    kinds = sorted(doc["kind"] for doc in manifests)
    expected = ["ConfigMap", *["Deployment"] * 7, "Namespace", *["Service"] * 4, "StatefulSet"]
    assert kinds == expected
    for doc in manifests:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_bad_replicas_type_is_reported(manifests: list[dict[str, Any]]) -> None:
    deployment = next(doc for doc in manifests if doc["kind"] == "Deployment")
    broken = {**deployment, "spec": {**deployment["spec"], "replicas": "one"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="replicas"):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_configmap_carries_the_site_file_and_it_passes_config_check(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    configmap = next(doc for doc in manifests if doc["kind"] == "ConfigMap")
    assert re.fullmatch(r"edgesight-site-[a-z0-9]{10}", configmap["metadata"]["name"]), "name must carry a hash"
    site = tmp_path / "site.yaml"
    site.write_text(configmap["data"]["site.yaml"])
    config = load_config(site)
    assert config.site.name == "my-site"


def test_deployments_run_services_and_probe_their_metrics_port(manifests: list[dict[str, Any]], k3s_site: Path) -> None:
    config = load_config(k3s_site)
    configmap = next(doc["metadata"]["name"] for doc in manifests if doc["kind"] == "ConfigMap")
    workloads = [doc for doc in manifests if doc["kind"] in ("Deployment", "StatefulSet")]
    assert len(workloads) == 8
    for workload in workloads:
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        name = service_module(container.get("command", []) + container["args"])
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["metrics"] == config.metrics.port(name)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        (site,) = (v for v in pod["volumes"] if v["name"] == "site")
        assert site["configMap"]["name"] == configmap  # kustomize renamed the reference
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        assert mounts["bus-keys"] == "/etc/edgesight-keys/bus"  # bus.curve's key files, when the Secret exists
        if name in ("inference", "rules", "uplink", "apps", "console", "fleet"):  # one audit trail per node
            (audit,) = (v for v in pod["volumes"] if v["name"] == "audit")
            assert audit["hostPath"]["path"] == mounts["audit"] == f"{config.site.state_dir}/audit.jsonl"


def test_broker_service_exposes_the_ports_the_site_file_uses(manifests: list[dict[str, Any]], k3s_site: Path) -> None:
    config = load_config(k3s_site)
    (service,) = (
        doc for doc in manifests if doc["kind"] == "Service" and doc["metadata"]["name"] == "edgesight-broker"
    )
    exposed = {p["port"] for p in service["spec"]["ports"]}
    used = [config.bus.publish, *config.bus.subscribe]
    for spec in used:
        address = Endpoint.parse(spec).address
        host, port = address.removeprefix("tcp://").rsplit(":", 1)
        assert host == "edgesight-broker"
        assert int(port) in exposed
    for spec in (config.bus.broker.frontend, config.bus.broker.backend):
        assert int(spec.rsplit(":", 1)[1]) in exposed


def test_frame_rings_are_on_the_node_where_the_site_file_puts_them(
    manifests: list[dict[str, Any]], k3s_site: Path
) -> None:
    config = load_config(k3s_site)
    ingest = next(doc for doc in manifests if doc["metadata"]["name"] == "edgesight-ingest")
    pod = ingest["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["frames"] == str(config.site.shm_dir)
    assert volumes["frames"]["hostPath"]["path"] == str(config.site.shm_dir)


def test_inference_replicas_take_their_number_from_the_pod_ordinal(manifests: list[dict[str, Any]]) -> None:
    inference = next(doc for doc in manifests if doc["kind"] == "StatefulSet")
    (container,) = inference["spec"]["template"]["spec"]["containers"]
    script = container["args"][0].replace("exec python", f"echo ${INFERENCE_REPLICA_VARIABLE} #")
    environment = {"HOSTNAME": "edgesight-inference-2", "PATH": "/usr/bin:/bin"}
    replica = subprocess.run(["sh", "-c", script], capture_output=True, text=True, env=environment, check=True)
    assert replica.stdout.strip() == "2"


def test_k3s_runs_as_many_inference_replicas_as_the_site_file_says(
    manifests: list[dict[str, Any]], tmp_path: Path
) -> None:
    """run.inference_replicas is the one count: each pod reads it from the site file it mounts, and the
    StatefulSet runs that many pods; a count of its own in the pod (a shard's ``/N``) could disagree."""
    configmap = next(doc for doc in manifests if doc["kind"] == "ConfigMap")
    site = tmp_path / "site.yaml"
    site.write_text(configmap["data"]["site.yaml"])
    replicas = load_config(site).run.inference_processes
    inference = next(doc for doc in manifests if doc["kind"] == "StatefulSet")
    assert inference["spec"]["replicas"] == replicas, "the StatefulSet's replicas differ from run.inference_replicas"
    (container,) = inference["spec"]["template"]["spec"]["containers"]
    assert not _replica_counts(container), "the pod sets a replica count of its own"
    config = load_config(site)
    shards = [replica_shard({INFERENCE_REPLICA_VARIABLE: str(n)}, config) for n in range(replicas)]
    assert shards == [(n, replicas) for n in range(replicas)]


def test_compose_runs_as_many_inference_replicas_as_the_site_file_says() -> None:
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    config = load_config(COMPOSE / "site.yaml")
    replicas = [s for s in edgesight_services(compose).values() if service_module(s["command"]) == "inference"]
    numbers = sorted(int(s["environment"][INFERENCE_REPLICA_VARIABLE]) for s in replicas)
    assert numbers == list(range(config.run.inference_processes)), "one inference service per replica, numbered"
    assert not any(_replica_counts(s) for s in replicas), "an inference service sets a replica count of its own"


def _replica_counts(workload: dict[str, Any]) -> list[str]:
    """What in a container or compose service could say how many replicas there are: a shard's count, or a
    variable naming replicas (the replica's own number aside)."""
    environment = workload.get("environment") or {e["name"]: e.get("value") for e in workload.get("env", [])}
    text = " ".join([*map(str, workload.get("command", [])), *map(str, workload.get("args", [])), *environment])
    return [word for word in re.findall(r"\bEDGESIGHT_INFERENCE_\w+", text) if word != INFERENCE_REPLICA_VARIABLE]


def test_rules_reach_the_uplink_service(manifests: list[dict[str, Any]], k3s_site: Path) -> None:
    config = load_config(k3s_site)
    (service,) = (
        doc for doc in manifests if doc["kind"] == "Service" and doc["metadata"]["name"] == "edgesight-uplink"
    )
    host, port = Endpoint.parse(config.bus.events.send).address.removeprefix("tcp://").rsplit(":", 1)
    assert host == "edgesight-uplink"
    assert int(port) in {p["port"] for p in service["spec"]["ports"]}
    assert int(config.bus.events.receive.rsplit(":", 1)[1]) == int(port)


def test_the_fleet_writes_the_site_file_and_the_models_where_the_others_read_them(
    manifests: list[dict[str, Any]], k3s_site: Path
) -> None:
    """An update_rules job saves the site file as the console does (compose: the same writable mount; k3s:
    a ConfigMap, read-only for both); an install_model job fills state_dir/models, which inference reads."""
    compose = edgesight_services(yaml.safe_load((COMPOSE / "docker-compose.yml").read_text()))
    site_mount = "./site.yaml:/etc/edgesight/site.yaml"
    assert site_mount in compose["console"]["volumes"] and site_mount in compose["fleet"]["volumes"]
    assert "state:/var/lib/edgesight" in compose["fleet"]["volumes"]  # models/ in the volume inference mounts too
    assert "state:/var/lib/edgesight" in compose["inference"]["volumes"]
    state_dir = str(load_config(k3s_site).site.state_dir)
    pods = {
        doc["metadata"]["name"]: doc["spec"]["template"]["spec"]
        for doc in manifests
        if "template" in doc.get("spec", {})
    }
    fleet, inference = pods["edgesight-fleet"], pods["edgesight-inference"]
    fleet_mounts = {m["name"]: m for m in fleet["containers"][0]["volumeMounts"]}
    assert fleet_mounts["models"]["mountPath"] == f"{state_dir}/models" and not fleet_mounts["models"].get("readOnly")
    inference_mounts = {m["name"]: m["mountPath"] for m in inference["containers"][0]["volumeMounts"]}
    (inference_models,) = (v for v in inference["volumes"] if v["name"] == "models")
    (fleet_models,) = (v for v in fleet["volumes"] if v["name"] == "models")
    assert fleet_models["hostPath"]["path"] == inference_models["hostPath"]["path"]
    assert inference_mounts["models"] in [
        e["value"] for e in inference["containers"][0]["env"] if e["name"] == "EDGESIGHT_ASSETS"
    ]
    assert fleet["containers"][0]["volumeMounts"][0] == {
        "name": "site",
        "mountPath": "/etc/edgesight",
        "readOnly": True,
    }


def test_compose_and_k3s_let_inference_size_itself(manifests: list[dict[str, Any]], tmp_path: Path) -> None:
    """The same rule everywhere: the shipped site files leave replicas, engines and threads to `auto`, which
    the inference process resolves itself (common/models/sizing.py), as under `edgesight run`; no container
    pins ONNX Runtime's threads behind the site file's back."""
    configmap = next(doc for doc in manifests if doc["kind"] == "ConfigMap")
    k3s_site = tmp_path / "site.yaml"
    k3s_site.write_text(configmap["data"]["site.yaml"])
    for config in (load_config(COMPOSE / "site.yaml"), load_config(k3s_site)):
        assert config.run.inference_replicas == "auto"
        for model in config.models.values():
            assert (model.engines, model.threads) == ("auto", "auto")
    compose = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    inference = next(doc for doc in manifests if doc["kind"] == "StatefulSet")
    workloads = [*edgesight_services(compose).values(), *inference["spec"]["template"]["spec"]["containers"]]
    for workload in workloads:
        environment = workload.get("environment") or {e["name"]: e.get("value") for e in workload.get("env", [])}
        assert not {"OMP_NUM_THREADS", "ORT_NUM_THREADS"} & set(environment), workload

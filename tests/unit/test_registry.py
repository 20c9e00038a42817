"""common/registry.py: the one list of services, and every list made from it still naming each of them."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import get_args
from unittest import mock

import pytest

from common import registry
from common.bus import security
from common.cli import main, supervisor
from common.config import RunConfig, SiteConfig, site
from common.config.metrics import DEFAULT_PORTS, MetricsConfig
from common.registry import PEERS, SERVICES, Peer, Service
from contracts import Control, encode, topic

REPO = Path(__file__).resolve().parents[2]


def _demo_site() -> ModuleType:
    spec = importlib.util.spec_from_file_location("demo_site", REPO / "scripts" / "demo_site.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEMO_METRICS = _demo_site().METRICS


def _keygen_help() -> str:
    """`edgesight bus keygen --help`, its whitespace folded."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), pytest.raises(SystemExit):
        main.main(["bus", "keygen", "--help"])
    return " ".join(printed.getvalue().split())


KEYGEN_HELP = _keygen_help()


@pytest.mark.parametrize("service", SERVICES, ids=lambda s: s.name)
def test_every_list_names_every_service(service: Service) -> None:
    """A service added to the registry is everywhere a service is listed; one missing from any fails here."""
    name = service.name
    assert name in get_args(site.ServiceName), "run.services (common/config/site.py ServiceName)"
    assert RunConfig(services=[name]).services == [name]
    assert name in RunConfig.model_json_schema()["properties"]["services"]["items"]["enum"]
    assert DEFAULT_PORTS[name] == service.metrics_port, "metrics.ports (common/config/metrics.py DEFAULT_PORTS)"
    assert MetricsConfig().port(name) == service.metrics_port
    assert name in DEMO_METRICS, "scripts/demo_site.py METRICS"
    assert name in supervisor.KNOWN_SERVICES, "what `edgesight run` starts (common/cli/supervisor.py)"
    assert name in supervisor.installed_services(), f"services/{name}/__main__.py: `edgesight run` cannot start it"
    assert (name in security.DEFAULT_CLIENTS) == service.curve_client, "bus keygen's clients (common/bus/security.py)"
    if service.curve_client:
        assert f"default: {' '.join(security.DEFAULT_CLIENTS)}" in KEYGEN_HELP, "bus keygen --help"
    assert (name in main.DEEP_CHECKS) == service.deep_check, "`edgesight config check` (common/cli/main.py)"
    assert service.module == f"services.{name}"
    assert importlib.util.find_spec(service.module) is not None


@pytest.mark.parametrize("peer", PEERS, ids=lambda p: p.name)
def test_every_list_names_every_peer(peer: Peer) -> None:
    assert (peer.name in DEFAULT_PORTS) == (peer.metrics_port is not None)
    if peer.metrics_port is not None:
        assert DEFAULT_PORTS[peer.name] == peer.metrics_port and peer.name in DEMO_METRICS
    assert (peer.name in security.DEFAULT_CLIENTS) == peer.curve_client
    assert (security.CONTROL_SENDERS.get(peer.name, {}) is None) == peer.operator
    assert all(peer.name in senders for senders in security.STREAM_SENDERS.values()) or not peer.operator
    assert peer.name not in get_args(site.ServiceName) and peer.name not in supervisor.KNOWN_SERVICES


def test_service_name_is_the_registry_in_its_order() -> None:
    """ServiceName stays a Literal (mypy cannot compute one from a tuple): it must be the registry's names."""
    assert site.ServiceName is registry.ServiceName
    assert get_args(site.ServiceName) == registry.SERVICE_NAMES == tuple(s.name for s in SERVICES)
    assert supervisor.KNOWN_SERVICES == registry.SERVICE_NAMES, "`edgesight run` starts them in the registry's order"


def test_derived_lists_have_nothing_the_registry_lacks() -> None:
    processes = {*registry.SERVICE_NAMES, *(peer.name for peer in PEERS)}
    assert list(DEFAULT_PORTS) == ["run", *registry.SERVICE_NAMES]  # the schema's default keeps this order
    assert set(DEMO_METRICS) == set(DEFAULT_PORTS)
    assert list(security.DEFAULT_CLIENTS) == [*registry.SERVICE_NAMES, "run", "cli"]
    assert set(security.CONTROL_SENDERS) <= processes
    for rights in security.CONTROL_SENDERS.values():
        assert rights is None or set(rights) <= set(registry.SERVICE_NAMES)
    for senders in security.STREAM_SENDERS.values():
        assert senders <= processes
    assert set(main.DEEP_CHECKS) <= set(registry.SERVICE_NAMES)
    for module, _ in main.HANDED_OVER.values():  # a command handed over belongs to a service of the registry
        assert ".".join(module.split(".")[:2]) in {s.module for s in SERVICES}, module


def test_the_security_policy_is_unchanged() -> None:
    """Deriving the Curve lists changed nobody's rights."""
    shutdown, both = frozenset({"shutdown"}), frozenset({"shutdown", "reload"})
    fleet = {"ingest": shutdown, "inference": both, "rules": both, "uplink": shutdown, "apps": both}
    fleet |= {"console": shutdown, "fleet": shutdown}
    assert dict(security.CONTROL_SENDERS) == {
        "run": None,
        "cli": None,
        "console": {"rules": frozenset({"reload"})},
        "fleet": fleet,
    }
    assert dict(security.STREAM_SENDERS) == {b"apps/": frozenset({"apps", "run", "cli"})}


class _Frame:
    """What ControlGuard reads of a zmq.Frame: its bytes and the key name its connection authenticated with."""

    def __init__(self, data: bytes, user: str | None = None) -> None:
        self.bytes = data
        self.user = user

    def get(self, _: str) -> str:
        assert self.user is not None
        return self.user


@pytest.mark.parametrize(
    ("sender", "target", "command", "allowed"),
    [
        ("fleet", "ingest", "shutdown", True),  # restart_service ingest@east: the instance is in the body
        ("fleet", "inference", "reload", True),
        ("fleet", "rules", "reload", True),
        ("fleet", "apps", "reload", True),
        ("fleet", "console", "shutdown", True),
        ("fleet", "broker", "shutdown", False),  # the bus itself: never from a job
        ("fleet", "*", "shutdown", False),  # control/*/ reaches the broker too
        ("fleet", "ingest", "pause", False),
        ("fleet", "uplink", "reload", False),
        ("console", "rules", "reload", True),
        ("console", "rules", "shutdown", False),
        ("ingest", "rules", "reload", False),
    ],
)
def test_the_broker_lets_through_only_the_control_a_key_may_send(
    sender: str, target: str, command: str, allowed: bool
) -> None:
    keys = mock.Mock(names={}, service="broker")
    guard = security.ControlGuard(keys)
    body = encode(Control(id="job-1", command=command, instance="ingest-east"))  # type: ignore[arg-type]
    frames = [_Frame(topic("control", target), sender), _Frame(body)]
    assert guard.allows(frames) is allowed  # type: ignore[arg-type]


def test_every_service_folder_is_registered() -> None:
    """services/<name>/service.py is a service: the registry must know it, or nothing starts or keys it."""
    folders = {path.parent.name for path in (REPO / "services").glob("*/service.py")}
    assert folders == set(registry.SERVICE_NAMES), "add it to common/registry.py (and ServiceName there)"
    for name in registry.SERVICE_NAMES:
        assert (REPO / "services" / name / "__main__.py").is_file(), name


def test_ports_and_names_are_unique() -> None:
    names = [*registry.SERVICE_NAMES, *(peer.name for peer in PEERS)]
    assert len(names) == len(set(names))
    ports = list(DEFAULT_PORTS.values())
    assert len(ports) == len(set(ports)), DEFAULT_PORTS
    assert set(registry.BY_NAME) == set(registry.SERVICE_NAMES)


def test_optional_services_follow_their_section() -> None:
    """`edgesight run` without a list leaves out apps and console where the site file lacks their section;
    `config check` still checks an empty apps, never an absent console."""
    bare = SiteConfig.model_validate({"site": {"name": "s"}})
    assert [s.name for s in SERVICES if s.needs_section] == ["apps", "console", "fleet"]
    started = [name for name in registry.SERVICE_NAMES if main._section(bare, name)]
    assert started == ["broker", "ingest", "inference", "rules", "uplink"]
    checked = [name for name in main.DEEP_CHECKS if main._section(bare, name) is not None]
    assert checked == ["ingest", "inference", "apps"]
    console = SiteConfig.model_validate({"site": {"name": "s"}, "console": {}})
    assert main._section(console, "console") and main._section(console, "console") is not None
    assert not main._section(console, "fleet"), "a site without fleet: never starts the fleet service"


def test_the_registry_imports_nothing_of_the_project() -> None:
    """contracts → common → services: the registry names services by string, and imports no project module
    (common.config, common.bus and common.cli all read it)."""
    code = (
        "import sys, common.registry; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('common', 'contracts', 'services')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert result.stdout.strip() == "['common', 'common.registry']", result.stdout

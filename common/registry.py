"""The services of EdgeSight and the other processes on its bus: the one list the others are made from.

A :class:`Service` is a process ``python -m services.<name>``; a :class:`Peer` is a process of the
appliance that is no service but speaks on the bus (the supervisor ``edgesight run``, the ``edgesight``
command line). Adding a service is adding it here (and to ``ServiceName``, next to it); made from
these two tuples:

- ``ServiceName`` in ``common.config.site`` (``run.services``): this module's Literal, which mypy
  holds every entry's name to; tests/unit/test_registry.py holds it to the entries (a Literal cannot
  be computed from a tuple for mypy);
- ``DEFAULT_PORTS`` in ``common.config.metrics`` (``metrics.ports``) and the demo's ports;
- ``KNOWN_SERVICES`` in ``common.cli.supervisor``: what ``edgesight run`` starts, in this order;
- ``DEFAULT_CLIENTS``, ``CONTROL_SENDERS`` and ``STREAM_SENDERS`` in ``common.bus.security``;
- the CLI's deep checks and optional services in ``common.cli.main``.

Services are named by string, never imported: this module imports nothing of the project, so that
``contracts`` → ``common`` → ``services`` holds and ``common.config``, ``common.bus`` and
``common.cli`` may all read it without a cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, get_args

__all__ = [
    "BY_NAME",
    "PEERS",
    "SERVICES",
    "SERVICE_NAMES",
    "Peer",
    "Service",
    "ServiceName",
    "curve_clients",
    "metrics_ports",
    "operators",
]

# The names of SERVICES, in their order: mypy checks each entry's name against it, a test the converse
ServiceName = Literal["broker", "ingest", "inference", "rules", "uplink", "apps", "console", "fleet"]


@dataclasses.dataclass(frozen=True)
class Service:
    """A service: the process ``python -m services.<name> --config FILE`` (compose, k3s and ``edgesight run``
    start it so)."""

    name: ServiceName
    metrics_port: int  # its default metrics.ports.<name>: /metrics, /healthz, /readyz
    # `edgesight run` without a list (no --services, no run.services) starts every installed service, this
    # one only where the site file gives it this section (non-empty)
    needs_section: str | None = None
    # `edgesight config check` runs `python -m services.<name> --config FILE --check` (unless its
    # needs_section is absent): its part of the site file checked deeper than the schema
    deep_check: bool = False
    curve_client: bool = True  # connects to the bus with a key pair of its own (`edgesight bus keygen` makes it)
    # Control its key may send on a Curve bus: {target service: commands}; the broker drops any other
    may_control: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=dict, hash=False)
    # stream prefixes it alone speaks for (and operators): the broker drops what another key sends there
    own_streams: tuple[bytes, ...] = ()

    @property
    def module(self) -> str:
        """What ``python -m`` runs (a string: never imported here)."""
        return f"services.{self.name}"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A process on the bus that is no service."""

    name: str
    metrics_port: int | None  # its default metrics.ports.<name>, if it serves /metrics
    curve_client: bool = True
    operator: bool = False  # may send any Control to any service, and speak on any service's own streams


def _fleet_rights() -> dict[str, frozenset[str]]:
    """The fleet's Control rights: ``shutdown`` to every service but the broker, ``reload`` to those whose
    loaded state a job changes (models: inference, apps; the site file's rules: rules)."""
    reloaded = {"inference", "rules", "apps"}
    return {
        name: frozenset({"shutdown", "reload"} if name in reloaded else {"shutdown"})
        for name in get_args(ServiceName)
        if name != "broker"
    }


# In the order `edgesight run` starts them (and lists them): the broker, that the others connect to, first
SERVICES: tuple[Service, ...] = (
    Service("broker", 9401),
    Service("ingest", 9402, deep_check=True),
    Service("inference", 9403, deep_check=True),
    Service("rules", 9404),
    Service("uplink", 9405),
    Service("apps", 9406, needs_section="apps", deep_check=True, own_streams=(b"apps/",)),
    # the rule editor's save reloads the rules
    Service("console", 9407, needs_section="console", deep_check=True, may_control={"rules": frozenset({"reload"})}),
    # a signed fleet job: reload after an install or a rules update, restart_service (shutdown; the
    # supervisor, compose or k3s starts it again) of any service but the broker, whose loss cuts the bus
    Service("fleet", 9408, needs_section="fleet", deep_check=False, may_control=_fleet_rights()),
)

PEERS: tuple[Peer, ...] = (
    Peer("run", 9400, operator=True),  # the supervisor, `edgesight run`
    Peer("cli", None, operator=True),  # `edgesight bus tail` and the other commands
)

SERVICE_NAMES: tuple[ServiceName, ...] = tuple(service.name for service in SERVICES)
BY_NAME: Mapping[str, Service] = {service.name: service for service in SERVICES}


def metrics_ports() -> dict[str, int]:
    """Default metrics port by process name: the peers' that serve one, then every service's."""
    peers = {peer.name: peer.metrics_port for peer in PEERS if peer.metrics_port is not None}
    return {**peers, **{service.name: service.metrics_port for service in SERVICES}}


def curve_clients() -> tuple[str, ...]:
    """Every process with a Curve key pair of its own: the services, then the peers."""
    services = [service.name for service in SERVICES if service.curve_client]
    return (*services, *(peer.name for peer in PEERS if peer.curve_client))


def operators() -> tuple[str, ...]:
    """Peers that may send any Control and speak on any stream."""
    return tuple(peer.name for peer in PEERS if peer.operator)

"""``bus:`` — where services publish, subscribe and deliver events."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from common.bus.endpoint import Endpoint
from common.config._types import Section
from common.errors import BusError

__all__ = ["BrokerEndpoints", "BusConfig", "CurveConfig", "EventEndpoints"]

_RUN = "ipc:///run/edgesight"


def _check(spec: str) -> str:
    try:
        Endpoint.parse(spec.replace("{service}", "x"))
    except BusError as exc:
        raise ValueError(str(exc)) from None
    return spec


class BrokerEndpoints(Section):
    frontend: str = Field(f"xsub+bind:{_RUN}/bus-in.sock", description="Where publishers connect.")
    backend: str = Field(f"xpub+bind:{_RUN}/bus-out.sock", description="Where subscribers connect.")

    _valid = field_validator("frontend", "backend")(classmethod(lambda cls, v: _check(v)))


class EventEndpoints(Section):
    send: str = Field(f"dealer+connect:{_RUN}/events.sock", description="Rules services send events here.")
    receive: str = Field(f"router+bind:{_RUN}/events.sock", description="The uplink receives events here.")

    _valid = field_validator("send", "receive")(classmethod(lambda cls, v: _check(v)))


class CurveConfig(Section):
    """CurveZMQ on every tcp endpoint: encrypted, and only listed clients are heard. Key pairs are
    ZeroMQ certificate files made by ``edgesight bus keygen`` (NAME.key public, NAME.key_secret secret)."""

    server_key: Path = Field(..., description="The public key of every socket that binds (clients check it).")
    server_secret_key: Path | None = Field(
        None, description="Its secret key file; only the services that bind tcp endpoints need it (broker, uplink)."
    )
    client_key: str = Field(
        ..., min_length=1, description="This service's secret key file; `{service}` is replaced by the service name."
    )
    authorized_keys: Path = Field(..., description="A folder of the client public keys (.key) binding sockets accept.")


class BusConfig(Section):
    """Defaults: every service talks through the broker over ipc on one host. For services on
    several hosts use tcp (``pub+connect:tcp://broker:5550``); for no broker on one host let each
    service bind its own (``pub+bind:ipc:///run/edgesight/{service}.sock``) and list them all in
    ``subscribe``."""

    publish: str = Field(f"pub+connect:{_RUN}/bus-in.sock", description="Broadcast endpoint; `{service}` is replaced.")
    subscribe: list[str] = Field(
        default_factory=lambda: [f"sub+connect:{_RUN}/bus-out.sock"],
        min_length=1,
        description="One or more endpoints a subscriber connects (or binds) to.",
    )
    broker: BrokerEndpoints = Field(default_factory=BrokerEndpoints)
    events: EventEndpoints = Field(default_factory=EventEndpoints)
    frames_hwm: int = Field(
        4,
        ge=1,
        le=1000,
        description="Messages queued per subscriber before the oldest are dropped. Higher rides out "
        "longer stalls; lower keeps frames fresher and shared memory reads less often stale.",
    )
    events_window: int = Field(1000, ge=1, le=100_000, description="Unacknowledged events before a sender waits.")
    ack_timeout_s: float = Field(5.0, gt=0, le=600, description="Resend an event not acknowledged within this time.")
    health_interval_s: float = Field(5.0, gt=0, le=300, description="How often every service publishes Health.")
    curve: CurveConfig | None = Field(None, description="Encrypt and authenticate tcp endpoints (CurveZMQ).")

    _valid = field_validator("publish")(classmethod(lambda cls, v: _check(v)))

    @field_validator("subscribe")
    @classmethod
    def _valid_subscribe(cls, value: list[str]) -> list[str]:
        return [_check(v) for v in value]

    def publish_endpoint(self, service: str) -> str:
        return self.publish.replace("{service}", service)

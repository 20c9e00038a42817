"""``metrics:`` and ``logging:`` — how every service is observed."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from common.config._types import Section
from common.registry import metrics_ports

__all__ = ["DEFAULT_PORTS", "LoggingConfig", "MetricsConfig"]

# run's, then every service's (common/registry.py)
DEFAULT_PORTS: dict[str, int] = metrics_ports()


class MetricsConfig(Section):
    host: str = Field("0.0.0.0", description="Address /metrics, /healthz and /readyz listen on.")
    ports: dict[str, Annotated[int, Field(ge=0, le=65535)]] = Field(
        default_factory=lambda: dict(DEFAULT_PORTS),
        description="Port per service; 0 picks a free one. A second instance on one host needs --metrics-port.",
    )

    def port(self, service: str) -> int:
        return self.ports.get(service, DEFAULT_PORTS.get(service, 0))

    @model_validator(mode="after")
    def _ports_not_shared(self) -> MetricsConfig:
        taken: dict[int, str] = {}
        for service in sorted({*DEFAULT_PORTS, *self.ports}):
            port = self.port(service)
            if port and port in taken:
                raise ValueError(f"port {port} is given to both {taken[port]} and {service}; one port per service")
            taken[port] = service
        return self


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = Field("text", description="text: key=value lines; json: one object per line.")

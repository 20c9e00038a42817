"""``metrics:`` and ``logging:`` — how every service is observed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from common.config._types import Section

__all__ = ["DEFAULT_PORTS", "LoggingConfig", "MetricsConfig"]

DEFAULT_PORTS = {"run": 9400, "broker": 9401, "ingest": 9402, "inference": 9403, "rules": 9404, "uplink": 9405}


class MetricsConfig(Section):
    host: str = Field("0.0.0.0", description="Address /metrics, /healthz and /readyz listen on.")
    ports: dict[str, int] = Field(
        default_factory=lambda: dict(DEFAULT_PORTS),
        description="Port per service; 0 picks a free one. A second instance on one host needs --metrics-port.",
    )

    def port(self, service: str) -> int:
        return self.ports.get(service, DEFAULT_PORTS.get(service, 0))


class LoggingConfig(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = Field("text", description="text: key=value lines; json: one object per line.")

"""What jobs and desired state need to know of this site, and whose documents it takes."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from common.fleet.topics import FleetTopics

__all__ = ["FleetSite", "Mode"]

Mode = Literal["aws", "retained"]


@dataclasses.dataclass(frozen=True)
class FleetSite:
    """What jobs and desired state need to know of this site: its names, topics, mode and trust."""

    site: str
    topics: FleetTopics
    mode: Mode
    trusted: Mapping[str, Ed25519PublicKey]
    allow_apps: bool = False
    job_timeout_s: float = 300.0
    packages: str | None = None  # desired models' URL template: {name}, {version}

    @property
    def thing(self) -> str:
        return self.topics.thing

    @property
    def retained(self) -> bool:
        """Statuses and reported state are retained (the retained mode), never on AWS IoT."""
        return self.mode == "retained"

    @property
    def signatures_required(self) -> bool:
        """Always in retained mode; on AWS IoT (whose policies already say who may queue jobs) when
        operators are listed."""
        return self.retained or bool(self.trusted)

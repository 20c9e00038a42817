"""What a fleet job works with: the site, its audit trail, what the bus shows, and a way to command services.

The service makes one :class:`JobContext`; each job works on its own copy (:meth:`JobContext.for_job`)
that carries the job's deadline (``fleet.job_timeout_s``) and its actor, ``fleet:<operator key id>``,
for the audit trail. An operation that cannot make its change live and healthy puts back what it
changed and raises :class:`JobFailed` with the reason, which becomes the job's ``statusDetails.reason``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from common._compat import timeout
from common.audit import AuditTrail
from common.config import SiteConfig, load_config
from common.errors import EdgeSightError
from common.registry import SERVICE_NAMES
from contracts import Control
from contracts.messages import NAME_PATTERN, ControlCommand
from services.fleet.download import DownloadFailed, download
from services.fleet.watch import SiteWatch

__all__ = ["MAX_REASON", "JobContext", "JobFailed", "Publish", "Target", "parse_target", "reason_of"]

log = logging.getLogger(__name__)

MAX_REASON = 1024  # a statusDetails value (AWS IoT Jobs' limit)
DEFAULT_HEALTHY_S = 10.0
DEFAULT_JOB_TIMEOUT_S = 300.0

# ``Publisher.publish``: (stream, key, message)
Publish = Callable[[str, str, Control], Awaitable[None]]


class JobFailed(Exception):
    """The job's change did not become live and healthy; what it changed was put back. ``reason`` is one
    line for the job's status and the audit trail."""

    def __init__(self, reason: str) -> None:
        reason = " ".join(reason.split()) or "failed"
        self.reason = reason if len(reason) <= MAX_REASON else reason[: MAX_REASON - 1] + "…"
        super().__init__(self.reason)


def reason_of(exc: BaseException) -> str:
    """A failure as a job's reason: a JobFailed's own, else what and where (an operation's bug, the bus)."""
    return exc.reason if isinstance(exc, JobFailed) else f"{type(exc).__name__}: {exc}"


@dataclasses.dataclass(frozen=True)
class Target:
    """A service, or one instance of it: ``ingest@east``, ``inference@1`` (``edgesight run`` names those
    processes' instances ``ingest-east``, ``inference-1``)."""

    service: str
    suffix: str | None = None

    def __str__(self) -> str:
        return self.service if self.suffix is None else f"{self.service}@{self.suffix}"


def parse_target(text: str) -> Target:
    """``rules``, ``ingest@east``: a service of ``common.registry`` and an optional instance suffix.

    >>> parse_target("inference@1")
    Target(service='inference', suffix='1')
    >>> parse_target("mail")
    Traceback (most recent call last):
    ...
    services.fleet.context.JobFailed: no service 'mail' (services: broker, ingest, ...)
    """
    service, separator, suffix = text.partition("@")
    if service not in SERVICE_NAMES:
        raise JobFailed(f"no service {service[:64]!r} (services: {', '.join(SERVICE_NAMES)})")
    if separator and not re.search(NAME_PATTERN, suffix):
        raise JobFailed(f"{text[:80]!r}: an instance is letters, digits, _ . - after the @")
    return Target(service, suffix if separator else None)


@dataclasses.dataclass
class JobContext:
    config: SiteConfig  # as the service started (a job reads the site file again: :meth:`load_site`)
    audit: AuditTrail
    watch: SiteWatch
    publish: Publish
    site_file: Path
    state_dir: Path
    actor: str = "fleet"
    deadline: float = math.inf  # on the monotonic clock

    def for_job(self, operator: str) -> JobContext:
        """This context for one job of ``operator``: its actor and its deadline."""
        deadline = time.monotonic() + self.job_timeout_s
        return dataclasses.replace(self, actor=f"fleet:{operator}", deadline=deadline)

    @property
    def healthy_s(self) -> float:
        """How long a change must be live and healthy before its job succeeds (``fleet.healthy_s``)."""
        fleet = self.config.fleet
        return fleet.healthy_s if fleet is not None else DEFAULT_HEALTHY_S

    @property
    def job_timeout_s(self) -> float:
        fleet = self.config.fleet
        return fleet.job_timeout_s if fleet is not None else DEFAULT_JOB_TIMEOUT_S

    @property
    def health_interval_s(self) -> float:
        return self.config.bus.health_interval_s

    @property
    def fleet_dir(self) -> Path:
        """``state_dir/fleet``: downloads, unpacked apps, site file backups."""
        return self.state_dir / "fleet"

    def left(self) -> float:
        """Seconds left until the job's deadline (0 once past it)."""
        return max(0.0, self.deadline - time.monotonic())

    def bounded(self, seconds: float) -> float:
        """``seconds``, but no longer than the job has left."""
        return min(seconds, self.left())

    async def control(
        self, target: str | Target, command: ControlCommand, *, camera: str | None = None, **args: str
    ) -> Control:
        """Sends ``command`` to ``target`` (every instance of a service, or the one ``service@suffix``
        names: as heard on the bus, else as ``edgesight run`` names it) and returns what was sent."""
        parsed = parse_target(target) if isinstance(target, str) else target
        instance = None
        if parsed.suffix is not None:
            heard = self.watch.instance_of(parsed.service, parsed.suffix)
            instance = heard or f"{parsed.service}-{parsed.suffix}"
        sent = Control(
            id=f"fleet-{uuid.uuid4().hex}",
            command=command,
            instance=instance,
            camera=camera,
            ts_ns=time.time_ns(),
            args=dict(args),
        )
        await self.publish("control", parsed.service, sent)
        log.info("control sent", extra={"target": str(parsed), "command": command, "id": sent.id})
        return sent

    async def record(self, action: str, target: str, **detail: Any) -> None:
        """One record in the site's audit trail as this job's actor; a trail that cannot be written is
        logged, never the job's failure."""
        try:
            await asyncio.to_thread(self.audit.record, action, target, actor=self.actor, **detail)
        except OSError as exc:
            log.error("cannot append to the audit trail", extra={"path": str(self.audit.path), "error": str(exc)})

    async def download(self, url: str, sha256: str | None, max_bytes: int) -> Path:
        """The file at ``url`` in ``state_dir/fleet/downloads`` (see :mod:`services.fleet.download`), by the
        job's deadline; a download cut off by it resumes in the next job that asks for it."""
        fleet = self.config.fleet
        try:
            async with timeout(None if math.isinf(self.deadline) else max(self.left(), 0.001)):
                return await download(
                    url,
                    sha256,
                    self.fleet_dir / "downloads",
                    max_bytes,
                    s3_endpoint_url=fleet.s3_endpoint_url if fleet else None,  # uplink.s3's where not set
                    s3_region=fleet.s3_region if fleet else None,
                )
        except DownloadFailed as exc:
            raise JobFailed(f"download failed: {exc}") from None
        except (TimeoutError, asyncio.TimeoutError):
            raise JobFailed("download failed: not done by the job's deadline (fleet.job_timeout_s)") from None

    async def load_site(self) -> SiteConfig:
        """The site file as it is now (keys, models, cameras may have changed since the service started)."""
        try:
            config: SiteConfig = await asyncio.to_thread(load_config, self.site_file)
        except EdgeSightError as exc:
            raise JobFailed(f"the site file does not load: {exc}") from None
        return config

"""The root of the site file: one section per key, each model in the module of that name."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, model_validator

from common.config._types import Name, Section, auto_or_count, auto_or_count_schema
from common.config.analytics import AnalyticsConfig
from common.config.apps import AppConfig
from common.config.bus import BusConfig
from common.config.cameras import CameraConfig, CameraDefaults
from common.config.console import ConsoleConfig
from common.config.fleet import FleetSection
from common.config.metrics import DEFAULT_PORTS, LoggingConfig, MetricsConfig
from common.config.models import ModelConfig
from common.config.rules import EventsConfig, TrackerConfig
from common.config.uplink import UplinkConfig
from common.registry import ServiceName
from common.shm.layout import segment_name

__all__ = ["RunConfig", "ServiceName", "SiteConfig", "SiteSection"]


class SiteSection(Section):
    name: Name = Field(..., description="Names this site in topics, shared memory and upstream.")
    state_dir: Path = Field(Path("/var/lib/edgesight"), description="Durable state: rule counters, uplink spool.")
    shm_dir: Path = Field(Path("/dev/shm"), description="Where frame rings live (a tmpfs).")
    asset_paths: list[Path] = Field(default_factory=list, description="Searched first for models and media.")
    timezone: str = Field("UTC", description="For rule schedules, e.g. Europe/Berlin.")
    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Public keys (.pub files, or folders of them) whose signed model packages may run. When set, "
        "plain model files are refused unless their model says allow_unsigned: true.",
    )
    device_key: Path | None = Field(
        None,
        description="This device's x25519 private key (`edgesight models keygen --device`): opens packages "
        "encrypted for it.",
    )
    max_package_mb: int = Field(1024, ge=1, le=1 << 16, description="A model package may expand to at most this.")


class RunConfig(Section):
    services: list[ServiceName] = Field(
        default_factory=list, description="Services `edgesight run` starts; empty means every installed one."
    )
    inference_replicas: Annotated[int | Literal["auto"], auto_or_count(1, 64), auto_or_count_schema(1, 64)] = Field(
        "auto",
        description="Inference processes; they split the cameras between them (replica i serves every n-th "
        "camera). auto: one process, whose models run several engines fed by load (models.<name>.engines); "
        "a number scales out across GPUs, nodes or pods (compose and k3s run as many).",
    )
    restart_backoff_s: float = Field(1.0, gt=0, le=60, description="First wait before restarting a dead service.")
    max_restart_backoff_s: float = Field(30.0, gt=0, le=3600)
    stop_grace_s: float = Field(10.0, gt=0, le=300, description="Time between SIGTERM and SIGKILL on stop.")
    liveness_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="A service whose /healthz fails this long is killed and restarted."
    )

    @property
    def inference_processes(self) -> int:
        """How many inference processes split the cameras: ``inference_replicas``, auto being one."""
        return 1 if self.inference_replicas == "auto" else int(self.inference_replicas)


class SiteConfig(Section):
    """One site file configures every service; each reads its own section and the shared ones."""

    site: SiteSection
    bus: BusConfig = Field(default_factory=BusConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    camera_defaults: CameraDefaults = Field(default_factory=CameraDefaults)
    cameras: dict[Name, CameraConfig] = Field(default_factory=dict)
    models: dict[Name, ModelConfig] = Field(default_factory=dict)
    tracker: TrackerConfig = Field(default_factory=TrackerConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    analytics: AnalyticsConfig = Field(default_factory=AnalyticsConfig)
    uplink: UplinkConfig = Field(default_factory=UplinkConfig)
    apps: dict[Name, AppConfig] = Field(default_factory=dict, description="AWS Panorama applications, run unchanged.")
    console: ConsoleConfig | None = Field(None, description="The web console; runs only where this section is.")
    fleet: FleetSection | None = Field(None, description="This site in a fleet; the fleet service runs where this is.")
    run: RunConfig = Field(default_factory=RunConfig)
    _source: str = PrivateAttr("<memory>")
    _key_lines: dict[tuple[str | int, ...], int] = PrivateAttr(default_factory=dict)

    @property
    def source(self) -> str:
        return self._source

    @source.setter
    def source(self, value: str) -> None:
        self._source = value

    @property
    def key_lines(self) -> dict[tuple[str | int, ...], int]:
        return self._key_lines

    @key_lines.setter
    def key_lines(self, value: dict[tuple[str | int, ...], int]) -> None:
        self._key_lines = value

    def where(self, *path: str | int) -> str:
        """``file:line: dotted.key`` of a key of this site file (its nearest ancestor's line when the key
        itself is not in the file), for messages about a key found wrong after loading."""
        key = tuple(path)
        while key and key not in self._key_lines:
            key = key[:-1]
        dotted = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")
        return f"{self._source}:{self._key_lines.get(key, 1)}: {dotted}"

    @model_validator(mode="after")
    def _console_port_free(self) -> SiteConfig:
        if self.console is not None:
            for service in sorted({*DEFAULT_PORTS, *self.metrics.ports}):
                if self.metrics.port(service) == self.console.port:
                    raise ValueError(
                        f"console.port {self.console.port} is also metrics.ports.{service}; give the console its own"
                    )
        return self

    @model_validator(mode="after")
    def _app_cameras_exist(self) -> SiteConfig:
        for name, app in self.apps.items():
            unknown = [camera for camera in app.cameras if camera not in self.cameras]
            if unknown:
                raise ValueError(
                    f"app {name!r} takes cameras {unknown} not defined under cameras: "
                    f"(defined: {sorted(self.cameras) or 'none'})"
                )
        return self

    @model_validator(mode="after")
    def _apps_apart(self) -> SiteConfig:
        """Each app its own uid and its own host ports: a shared uid would share files and limits."""
        owners: dict[int, str] = {}
        ports: dict[tuple[int, str], str] = {
            (self.metrics.port(service), "tcp"): f"metrics.ports.{service}" for service in DEFAULT_PORTS
        }
        if self.console is not None:
            ports[self.console.port, "tcp"] = "console.port"
        for name, app in self.apps.items():
            uid = app.user_id(name)
            if uid in owners:
                raise ValueError(f"apps {owners[uid]!r} and {name!r} have the same uid {uid}; give one apps.{name}.uid")
            owners[uid] = name
            for port in app.ports:
                key = (port.host_port, port.protocol)
                if key in ports:
                    raise ValueError(f"apps.{name}.ports: host port {port.host_port} is taken already, by {ports[key]}")
                ports[key] = f"apps.{name}"
        return self

    @model_validator(mode="after")
    def _camera_models_exist(self) -> SiteConfig:
        for name, camera in self.cameras.items():
            unknown = sorted(set(camera.models) - set(self.models))
            if unknown:
                raise ValueError(
                    f"camera {name!r} uses models {unknown} not defined under models: "
                    f"(defined: {sorted(self.models) or 'none'})"
                )
        return self

    @model_validator(mode="after")
    def _camera_rings_apart(self) -> SiteConfig:
        """Each camera its own frame ring: the ring's file name keeps only ``[A-Za-z0-9_-]`` of a name, so
        ``dock.1`` and ``dock_1`` would write one ring."""
        rings: dict[str, str] = {}
        for name in self.cameras:
            ring = segment_name(self.site.name, name)
            if ring in rings:
                raise ValueError(
                    f"cameras {rings[ring]!r} and {name!r} would share the frame ring {ring!r} (a ring's name keeps "
                    "letters, digits, '_' and '-' only); rename one"
                )
            rings[ring] = name
        return self

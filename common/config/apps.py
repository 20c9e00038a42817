"""``apps:`` — AWS Panorama applications run unchanged by the apps service, by name."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from common.config._types import Name, Section

__all__ = ["AppConfig", "AppLimits", "AppModel", "AppParameter", "AppPort"]

FIRST_APP_UID = 20000  # app uids: 20000-59999, above any login user and below nobody (65534)
APP_UIDS = 40000
ParameterType = Literal["float32", "int32", "string", "boolean"]


class AppModel(Section):
    """A model node of the application's graph, as an ONNX file EdgeSight's backends run."""

    path: str = Field(
        ...,
        min_length=1,
        description="An .onnx file, or a signed package (.espkg) holding one; found like models.*.path",
    )
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    allow_unsigned: bool = Field(False, description="With site.trusted_keys set: run this plain .onnx file anyway.")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


class AppParameter(Section):
    """A parameter node's value, fed to a port of the code node (``self.inputs.<port>.get()``)."""

    type: ParameterType
    value: bool | int | float | str

    @model_validator(mode="after")
    def _fits(self) -> AppParameter:
        fits = {
            "float32": isinstance(self.value, (int, float)) and not isinstance(self.value, bool),
            "int32": isinstance(self.value, int)
            and not isinstance(self.value, bool)
            and -(2**31) <= self.value < 2**31,
            "string": isinstance(self.value, str),
            "boolean": isinstance(self.value, bool),
        }[self.type]
        if not fits:
            raise ValueError(f"{self.value!r} is not a {self.type}")
        return self


class AppLimits(Section):
    """What one app may take; an app over ``memory_mb`` or ``disk_mb`` is killed and restarted
    (``why="memory"``, ``"disk"``)."""

    memory_mb: int = Field(1024, ge=32, le=1 << 20, description="Resident memory of all the app's processes.")
    processes: int = Field(64, ge=4, le=32768, description="Processes and threads the app may run at once.")
    open_files: int = Field(1024, ge=64, le=1 << 20, description="Open files per process.")
    disk_mb: int = Field(
        1024, ge=1, le=1 << 24, description="What its logs and storage may hold on disk (checked every 10 s)."
    )
    cpu_share: float = Field(
        1.0, gt=0, le=100, description="CPU weight against the other apps and services (1.0: an equal share)."
    )


class AppPort(Section):
    """A port of the host forwarded to the app (Panorama's ``networkRoutingRules``/``inboundPorts``)."""

    host_port: int = Field(..., ge=1, le=65535, description="The port on the appliance's address.")
    app_port: int = Field(..., ge=1, le=65535, description="The port the app listens on in its namespace.")
    protocol: Literal["tcp", "udp"] = "tcp"


class AppConfig(Section):
    """One Panorama application: its code package, the cameras on its ``video_in``, its model nodes
    and its parameters. ``/panorama`` is ``code``; logs and storage live under ``state_dir/apps/<name>``."""

    code: Path = Field(..., description="The code package's files: what the app sees as /panorama.")
    entry: str = Field("app.py", description="The entry point, relative to code (or /panorama/...).")
    interpreter: Literal["python3", "bash"] = Field("python3", description="descriptor.json's entry.path")
    cameras: list[Name] = Field(..., min_length=1, description="The cameras on video_in, in this order.")
    models: dict[str, AppModel] = Field(default_factory=dict, description="Model node name -> its ONNX file.")
    parameters: dict[str, AppParameter] = Field(default_factory=dict, description="Input port -> typed value.")
    video_in: str = Field("video_in", description="The code node's media input port.")
    video_out: str = Field("video_out", description="The code node's media output port (EdgeSight's HDMI).")
    hang_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="An app that has not asked for frames this long is restarted."
    )
    enabled: bool = True
    # -- the sandbox (bubblewrap): see "Panorama applications" in the README
    uid: int | None = Field(
        None, ge=1000, le=2**31 - 2, description="The app's own user id (default: one derived from its name)."
    )
    network: Literal["own", "none", "host"] = Field(
        "own",
        description="own: its own namespace with outbound access and `ports` forwarded; none: loopback only; "
        "host: the appliance's network",
    )
    ports: list[AppPort] = Field(default_factory=list, description="Host ports forwarded into the app's network.")
    env: dict[str, str] = Field(
        default_factory=dict, description="The app's environment beyond Panorama's own variables (nothing inherited)."
    )
    limits: AppLimits = Field(default_factory=AppLimits)
    # -- its own packages
    requirements: list[str] = Field(
        default_factory=list,
        description="pip requirement lines (from its Dockerfile and requirements.txt): the app gets its own "
        "virtual environment, built by `edgesight panorama env`",
    )
    python: str | None = Field(None, description="The Python its environment is built on (default: EdgeSight's).")

    def user_id(self, name: str) -> int:
        """The app's own uid: ``uid``, else one derived from its name (stable across restarts and edits)."""
        return self.uid if self.uid is not None else FIRST_APP_UID + zlib.crc32(name.encode()) % APP_UIDS

    @model_validator(mode="after")
    def _ports_distinct(self) -> AppConfig:
        if self.ports and self.network != "own":
            raise ValueError(f"ports are forwarded into the app's own network; network is {self.network!r}")
        seen = [(port.host_port, port.protocol) for port in self.ports]
        if len(seen) != len(set(seen)):
            raise ValueError("two ports forward the same host port")
        return self

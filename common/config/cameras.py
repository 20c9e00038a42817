"""``camera_defaults:`` and ``cameras:`` — sources, rates, shared-memory sizing, motion, masks, rules."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, model_validator

from common.config._types import Name, Polygon, Section
from common.config.rules import Rule, ZoneRule

__all__ = [
    "DEFAULT_INGEST_GROUP",
    "INGEST_GROUP_VARIABLE",
    "CameraConfig",
    "CameraDefaults",
    "MotionConfig",
    "PrivacyMask",
]

# The environment variable naming the camera group an ingest process serves.
INGEST_GROUP_VARIABLE = "EDGESIGHT_INGEST_GROUP"
DEFAULT_INGEST_GROUP = "default"


class MotionConfig(Section):
    """Frame differencing on a small luma image; Frigate's frame_height=100, threshold=30 are a known-good start."""

    enabled: bool = Field(True, description="Give each FrameRef a motion score so consumers may skip still frames.")
    frame_height: int = Field(
        100, ge=16, le=1080, description="Height of the luma image compared. Higher sees smaller motion, costs more."
    )
    threshold: int = Field(
        30, ge=1, le=255, description="Luma change that counts as motion. Lower is more sensitive, and to noise too."
    )
    min_area: float = Field(0.001, ge=0, le=1, description="Share of the frame that must change to count as motion.")


class PrivacyMask(Section):
    """An area nobody may see: hidden in the console's live view, snapshots and Panorama apps' frames."""

    polygon: Polygon
    mode: Literal["fill", "blur"] = Field(
        "fill", description="Fill with black or blur, wherever a frame is made for people to see."
    )
    inference: bool = Field(
        False,
        description="Hide the area from the models too. Off by default: the model still sees it, so "
        "objects passing through it are still tracked and counted.",
    )


class CameraDefaults(Section):
    """Settings every camera inherits; each camera may override any of them."""

    enabled: bool = True
    ingest_group: Name = Field(
        DEFAULT_INGEST_GROUP,
        description="Which ingest process serves the camera: the one started with EDGESIGHT_INGEST_GROUP=<group>. "
        "Split a site's cameras over several groups to scale ingest out.",
    )
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTSP transport; tcp survives lossy networks.")
    fps: float = Field(10.0, gt=0, le=120, description="Publish at most this many frames per second (evenly spaced).")
    max_width: int | None = Field(None, ge=64, le=7680, description="Resize wider frames down to this width.")
    pixel_format: Literal["bgr24", "rgb24"] = Field("bgr24", description="Pixel format in shared memory.")
    decoder: str | None = Field(None, description="FFmpeg decoder name (e.g. h264_v4l2m2m); default picks one.")
    stall_timeout_s: float = Field(10.0, gt=0, le=600, description="No frame for this long -> reconnect.")
    max_backoff_s: float = Field(30.0, gt=0, le=3600, description="Longest wait between reconnect attempts.")
    loop: bool = Field(False, description="Files only: start again at the end.")
    realtime: bool = Field(True, description="Files only: pace frames at the file's own rate.")
    backpressure: bool = Field(
        True,
        description="Files read with realtime: false only: publish a frame only while inference has answered "
        "all but 2 of those before it, so the file goes as fast as the pipeline does and decoding never "
        "starves the model. Off: decode as fast as the CPU allows (newest wins downstream).",
    )
    ring_slots: int = Field(
        8,
        ge=2,
        le=256,
        description="Frames kept in shared memory. More covers slower consumers; each slot costs one frame of RAM.",
    )
    max_frame_width: int = Field(1920, ge=16, le=7680, description="Largest frame width; sizes the ring's slots.")
    max_frame_height: int = Field(1080, ge=16, le=4320, description="Largest frame height; sizes the ring's slots.")
    motion: MotionConfig = Field(default_factory=MotionConfig)
    privacy_masks: list[PrivacyMask] = Field(default_factory=list)
    models: list[Name] = Field(default_factory=list, description="Models run on this camera; empty means all.")


class CameraConfig(CameraDefaults):
    url: str = Field(
        ...,
        min_length=1,
        description="rtsp://, rtsps://, http(s):// (also HLS), a file path or /dev/videoN. "
        "Put credentials in ${ENV} or ${file:/run/secrets/...}.",
    )
    username: str | None = Field(None, description="Put into the URL if it has no credentials of its own.")
    password: SecretStr | None = Field(None, description="Use ${ENV} or ${file:...}; never logged or exported.")
    rules: dict[Name, Rule] = Field(default_factory=dict, description="This camera's rules, by name.")

    @model_validator(mode="after")
    def _zones_exist(self) -> CameraConfig:
        zones = {name for name, rule in self.rules.items() if isinstance(rule, ZoneRule)}
        for name, rule in self.rules.items():
            zone = getattr(rule, "zone", None)
            if zone is not None and zone not in zones:
                raise ValueError(
                    f"rule {name!r} names zone {zone!r}, which is not a zone rule of this camera "
                    f"(zones: {sorted(zones) or 'none'})"
                )
        return self

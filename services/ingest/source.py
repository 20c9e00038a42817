"""Where a camera's video comes from, how to open it with PyAV, and how to talk about it safely.

Credentials may sit in the URL (``rtsp://user:pass@host/…``) or in the camera's ``username`` /
``password``; either way they reach FFmpeg and nothing else: :meth:`Source.redact` scrubs them
from every string that is logged, published or exported.
"""

from __future__ import annotations

import dataclasses
import platform
import urllib.parse
from pathlib import Path
from typing import Any, Literal

from common.assets import find_asset
from common.config import CameraConfig
from common.errors import AssetError
from common.urls import redact

__all__ = ["Source", "SourceKind", "hardware_decoders"]

SourceKind = Literal["rtsp", "http", "file", "v4l2"]


@dataclasses.dataclass(frozen=True)
class Source:
    url: str  # what FFmpeg opens, credentials included
    kind: SourceKind
    transport: Literal["tcp", "udp"] = "tcp"
    secrets: tuple[str, ...] = ()

    @classmethod
    def parse(
        cls,
        url: str,
        *,
        transport: Literal["tcp", "udp"] = "tcp",
        username: str | None = None,
        password: str | None = None,
        asset_paths: tuple[Path, ...] = (),
    ) -> Source:
        """``rtsp(s)://``, ``http(s)://`` (HLS included), ``/dev/videoN``, a file path or ``file://``.

        A relative file path is looked up on the asset search path; raises AssetError when absent.
        """
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("rtsp", "rtsps", "http", "https"):
            kind: SourceKind = "rtsp" if scheme.startswith("rtsp") else "http"
            if username and not parts.username:
                userinfo = urllib.parse.quote(username, safe="")
                if password:
                    userinfo += ":" + urllib.parse.quote(password, safe="")
                parts = parts._replace(netloc=f"{userinfo}@{parts.netloc}")
                url = urllib.parse.urlunsplit(parts)
            secrets = tuple(
                s
                for s in {parts.password, urllib.parse.unquote(parts.password or ""), password}
                if s  # quoted and unquoted forms both scrubbed
            )
            return cls(url, kind, transport, secrets)
        if scheme in ("", "file"):
            path = Path(urllib.parse.unquote(parts.path) if scheme == "file" else url)
            if str(path).startswith("/dev/video"):
                return cls(str(path), "v4l2")
            return cls(str(find_asset(path, asset_paths)), "file")
        raise AssetError(f"unsupported camera URL scheme {scheme!r} (rtsp, rtsps, http, https, file, /dev/videoN)")

    @classmethod
    def for_camera(cls, camera: CameraConfig, asset_paths: tuple[Path, ...] = ()) -> Source:
        return cls.parse(
            camera.url,
            transport=camera.transport,
            username=camera.username,
            password=camera.password.get_secret_value() if camera.password else None,
            asset_paths=asset_paths,
        )

    @property
    def is_live(self) -> bool:
        return self.kind != "file"

    def redact(self, text: str) -> str:
        """``text`` with every credential of this source (and any URL's password and tokens) as ``***``."""
        return redact(text, self.secrets)

    def __str__(self) -> str:
        return self.redact(self.url)

    def open_arguments(self, timeout_s: float, read_timeout_s: float | None = None) -> dict[str, Any]:
        """Keyword arguments for ``av.open``: demuxer options and open/read timeouts."""
        options: dict[str, str] = {}
        arguments: dict[str, Any] = {"timeout": (timeout_s, read_timeout_s or timeout_s)}
        if self.kind == "rtsp":
            # Video only: audio tracks would be demuxed and thrown away.
            options |= {"rtsp_transport": self.transport, "allowed_media_types": "video", "max_delay": "500000"}
        elif self.kind == "v4l2":
            arguments["format"] = "v4l2"
        if options:
            arguments["options"] = options
        return arguments


def hardware_decoders(codec: str) -> list[str]:
    """FFmpeg decoders worth trying before software for ``codec`` on this machine.

    Jetson (aarch64) exposes its decoder through V4L2 memory-to-memory devices.
    """
    if platform.machine() in ("aarch64", "arm64") and any(Path("/dev").glob("video*")):
        return [f"{codec}_v4l2m2m"] if codec in ("h264", "hevc") else []
    return []

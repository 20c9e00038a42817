"""Topic frames of the broadcast bus.

A topic is ``<stream>/<key>/``: the trailing ``/`` makes ZeroMQ's prefix subscription exact,
so subscribing to ``frames/cam1/`` never also delivers ``frames/cam10/``.
"""

from __future__ import annotations

import re
from typing import Literal

from contracts.messages import NAME_PATTERN

__all__ = ["KEY_PATTERN", "Stream", "parse_topic", "topic"]

Stream = Literal["frames", "detections", "cameras", "scene", "health", "control", "events", "acks", "apps"]
STREAMS: frozenset[str] = frozenset(
    {"frames", "detections", "cameras", "scene", "health", "control", "events", "acks", "apps"}
)
# A key is a name (camera, service: also used in shm segment names and metric labels) or ``*`` for all.
KEY_PATTERN = re.compile(NAME_PATTERN + r"|^\*$")


def topic(stream: Stream, key: str = "") -> bytes:
    """``topic("frames", "cam1") == b"frames/cam1/"``; an empty key gives the stream prefix."""
    if not key:
        return f"{stream}/".encode()
    return f"{stream}/{key}/".encode()


def parse_topic(raw: bytes) -> tuple[str, str]:
    """``b"frames/cam1/" -> ("frames", "cam1")``; raises ValueError for anything else."""
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("topic is not ASCII") from None
    stream, sep, rest = text.partition("/")
    key = rest[:-1]
    if not sep or stream not in STREAMS or not rest.endswith("/") or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"not a topic: {text[:80]!r}")
    return stream, key

"""Values off the network, read safely: a JSON object out of a payload (bounded in size and depth, no NaN),
a number a reader can do arithmetic on, a text a terminal can print. What sites and brokers send is
untrusted; these are the one place it is read, and they never raise but :class:`MalformedMessage`
(which the caller counts and drops).
"""

from __future__ import annotations

import json
import math
from typing import Any

from common.errors import EdgeSightError

__all__ = ["MAX_DEPTH", "MAX_NUMBER", "MAX_PAYLOAD_BYTES", "MalformedMessage", "decode_object", "number", "printable"]

MAX_PAYLOAD_BYTES = 128 * 1024  # AWS IoT Core's largest message
MAX_NUMBER = 1e15  # no epoch time, duration or count of ours comes near (1e15 s: 31 million years)
MAX_DEPTH = 12  # levels of nesting: deeper than any message of ours


class MalformedMessage(EdgeSightError, ValueError):
    """A payload that is not the shape its topic carries; ``reason`` is a short label fit for a metric."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _reject_constant(name: str) -> Any:
    raise MalformedMessage("not JSON", f"{name} is no JSON number")


def decode_object(payload: object) -> dict[str, Any] | None:
    """A JSON object from a payload; None for an empty one (a retained message cleared)."""
    if isinstance(payload, str):
        payload = payload.encode()
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise MalformedMessage("not JSON", f"a payload of type {type(payload).__name__}")
    if len(payload) == 0:
        return None
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MalformedMessage("too large", f"{len(payload)} bytes, over {MAX_PAYLOAD_BYTES}")
    try:
        value = json.loads(bytes(payload), parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise MalformedMessage("not JSON") from None
    if not isinstance(value, dict):
        raise MalformedMessage("not an object", f"a JSON {type(value).__name__}")
    if _depth(value) > MAX_DEPTH:
        raise MalformedMessage("too deep", f"nested over {MAX_DEPTH} levels")
    return value


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
    if items is None:
        return level
    return max((_depth(item, level + 1) for item in items), default=level + 1)


def number(value: object) -> float | None:
    """A JSON number off the network as a float; None for anything else: a bool, NaN, an infinity, or
    beyond ±:data:`MAX_NUMBER` (an int of 400 digits is no float, and a sum of two 1e308 is inf).

    >>> number(12), number(2.5), number(10**400), number(float("nan")), number(True), number("1")
    (12.0, 2.5, None, None, None, None)
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, int):  # compared as an int: converting a huge one raises OverflowError
        return float(value) if -MAX_NUMBER <= value <= MAX_NUMBER else None
    return value if math.isfinite(value) and abs(value) <= MAX_NUMBER else None


def printable(value: object, limit: int = 80) -> str | None:
    """A string off the network made fit for a terminal, a log line or a table: every character that is
    not printable made a space (control characters with ESC and the C1 set, bidirectional overrides and
    isolates, zero-width and other format characters, line separators, lone surrogates), cut to ``limit``
    characters; None for anything but a non-empty string. The one filter for what sites and brokers say.

    >>> printable("done\\x1b[2J\\u202egnp.exe\\x9b31m")
    'done [2J gnp.exe 31m'
    >>> printable("x" * 100, 5), printable(""), printable(7)
    ('xxxxx', None, None)
    """
    if not isinstance(value, str) or not value:
        return None
    return "".join(char if char.isprintable() else " " for char in value[:limit])

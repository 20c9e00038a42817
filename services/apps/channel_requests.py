"""What an app sends on its channel, checked and decoded.

Everything here is the app's choice (shapes, types, sizes, names): each is checked against a bound
before it costs the apps service memory or CPU, and a request that breaks one is answered with
``RequestError``'s message, the channel kept open. Its ``video_out`` pictures are checked and drawn
in ``video_out.py``.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Answer",
    "RequestError",
    "checked_shape",
    "model_feeds",
    "typed_parameter",
    "widen_send_buffer",
]

SEND_BUFFER = 32 << 20  # a 4K BGR frame in one send
MAX_MODEL_INPUTS = 32
DTYPES = frozenset({"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"})

Answer = tuple[dict[str, Any], list[Any]]  # the answer's header and its raw buffers (arrays or bytes)


class RequestError(Exception):
    """A request the app got wrong: answered with its message, the channel stays open."""


def widen_send_buffer(writer: asyncio.StreamWriter) -> None:
    """A frame in one ``send``: past the socket's buffer asyncio keeps the rest in a bytearray it trims
    from the front after each partial send, so a 6 MB frame through a 200 KB buffer costs 30 copies
    of what is left (measured: 34 frames/s instead of hundreds; benchmarks/app_channel.py)."""
    sock = writer.get_extra_info("socket")
    for option in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):  # FORCE: as root, past wmem_max
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
            return
        except OSError:
            continue


def typed_parameter(kind: str, value: bool | int | float | str) -> Any:
    """A parameter's value as its type holds it (a float32 at float32's precision), for the app's SDK."""
    if kind == "float32":
        return float(np.float32(value))
    if kind == "int32":
        return int(value)
    if kind == "boolean":
        return bool(value)
    return str(value)


def checked_shape(value: Any, what: str) -> list[int]:
    """``value`` as an array's shape: a list of at most 8 sizes, each at most 2**24."""
    if not isinstance(value, list) or len(value) > 8 or not all(type(d) is int and 0 <= d <= 1 << 24 for d in value):
        raise RequestError(f"{what}: shape must be a list of at most 8 sizes")
    return value


def model_feeds(inputs: Any, buffers: list[bytes]) -> dict[str, npt.NDArray[Any]]:
    """A model call's inputs, each its buffer viewed as the dtype and shape the app described."""
    if not isinstance(inputs, list) or len(inputs) != len(buffers) or len(inputs) > MAX_MODEL_INPUTS:
        raise RequestError("call: one input description per buffer")
    feeds = {}
    for described, buffer in zip(inputs, buffers, strict=True):
        if not isinstance(described, dict) or not isinstance(described.get("name"), str):
            raise RequestError("call: each input needs a name")
        dtype = described.get("dtype")
        if dtype not in DTYPES:
            raise RequestError(f"call: dtype {str(dtype)[:16]!r} (one of {sorted(DTYPES)})")
        shape = checked_shape(described.get("shape"), f"input {described['name'][:64]!r}")
        if math.prod(shape) * np.dtype(dtype).itemsize != len(buffer):
            raise RequestError(f"call: input {described['name'][:64]!r}: {len(buffer)} bytes for {shape} {dtype}")
        feeds[described["name"]] = np.frombuffer(buffer, dtype).reshape(shape)
    return feeds

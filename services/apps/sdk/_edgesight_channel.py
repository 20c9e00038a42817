"""The channel between one Panorama app and the apps service: a Unix socket, one per app.

A message is ``[4-byte length][JSON header][buffer 0][buffer 1]...``: the header says what is asked
or answered and ``sizes`` gives the length of each raw buffer (pixels, tensors) that follows. Plain
standard library on purpose: this module runs inside the app's sandbox, on the app's own Python and
packages (an old numpy, no pyzmq), and the service reads what the app sends as untrusted input —
every length is checked against the limits below before anything is read.

Requests (app -> service) and answers:

* ``{"op": "hello"}`` -> the app's cameras, ports, parameters and model nodes
* ``{"op": "get", "timeout": s}`` -> ``{"streams": [{camera, uri, capture_ns, cached, stale, shape}]}``
  and one BGR buffer per stream, every camera in graph order
* ``{"op": "call", "model": name, "inputs": [{name, dtype, shape}]}`` + one buffer per input
  -> ``{"outputs": [{dtype, shape}]}`` + one buffer per output
* ``{"op": "model_info", "model": name}`` -> ``{"inputs": [...], "outputs": [...]}``
* ``{"op": "put", "streams": [{camera, shape, labels, rects}]}`` + one buffer per stream -> ``{}``

An answer with ``error`` (``timeout``, ``model``, ``request``) raises in the app.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

__all__ = ["LIMITS", "SOCKET_IN_SANDBOX", "Channel", "ChannelError", "header_length", "pack", "unpack_header"]

SOCKET_IN_SANDBOX = "/run/edgesight/channel.sock"
_LENGTH = struct.Struct("!I")


class LIMITS:
    header_bytes = 1 << 20  # a JSON header
    buffers = 64  # raw buffers in one message
    buffer_bytes = 64 << 20  # one buffer (a 4K BGR frame is 25 MB; a model input far less)
    message_bytes = 128 << 20  # all buffers of one message


class ChannelError(Exception):
    """The peer broke the protocol, or went away."""


def pack(header: dict[str, Any], buffers: list[Any] | tuple[Any, ...] = ()) -> list[Any]:
    """The pieces of one message, for ``sendall``/``writelines`` in order."""
    views = [memoryview(buffer).cast("B") for buffer in buffers]
    body = json.dumps({**header, "sizes": [view.nbytes for view in views]}, separators=(",", ":")).encode()
    return [_LENGTH.pack(len(body)), body, *views]


def header_length(prefix: bytes) -> int:
    length = int(_LENGTH.unpack(prefix)[0])
    if length > LIMITS.header_bytes:
        raise ChannelError(f"header of {length} bytes (at most {LIMITS.header_bytes})")
    return length


def unpack_header(body: bytes) -> tuple[dict[str, Any], list[int]]:
    """The header and the sizes of the buffers that follow it, checked against ``LIMITS``."""
    try:
        header = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: [[[[...]]]] nested past the interpreter's depth
        raise ChannelError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise ChannelError("header is not a JSON object")
    sizes = header.pop("sizes", [])
    if (
        not isinstance(sizes, list)
        or len(sizes) > LIMITS.buffers
        or not all(type(size) is int and 0 <= size <= LIMITS.buffer_bytes for size in sizes)
        or sum(sizes) > LIMITS.message_bytes
    ):
        raise ChannelError(f"buffer sizes {str(sizes)[:200]} exceed the channel's limits")
    return header, sizes


def _receive_exactly(sock: socket.socket, size: int) -> bytearray:
    data = bytearray(size)
    view = memoryview(data)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:], size - got)
        if count == 0:
            raise ChannelError("the apps service closed the channel")
        got += count
    return data


class Channel:
    """The app side: one connection per thread, so a thread blocked in ``get`` never holds up a
    ``call`` from another."""

    def __init__(self, path: str = SOCKET_IN_SANDBOX) -> None:
        self.path = path
        self._local = threading.local()

    def _socket(self) -> socket.socket:
        sock = getattr(self._local, "sock", None)
        if sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(self.path)
            self._local.sock = sock
        return sock

    def request(
        self, header: dict[str, Any], buffers: list[Any] | tuple[Any, ...] = ()
    ) -> tuple[dict[str, Any], list[bytearray]]:
        sock = self._socket()
        try:
            for piece in pack(header, buffers):
                sock.sendall(piece)
            length = header_length(bytes(_receive_exactly(sock, _LENGTH.size)))
            answer, sizes = unpack_header(bytes(_receive_exactly(sock, length)))
            return answer, [_receive_exactly(sock, size) for size in sizes]
        except (OSError, ChannelError):
            self._local.sock = None
            sock.close()
            raise

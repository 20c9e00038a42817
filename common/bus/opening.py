"""Opening a ZeroMQ socket on an :class:`~common.bus.endpoint.Endpoint`: Curve on tcp, private ipc files.

Every bus socket of a process comes from one ``zmq.asyncio`` context (:func:`bus_context`); the
broker's threads pass a blocking one. A bind never takes an ipc path from a live process.
"""

from __future__ import annotations

import socket
import stat
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from common.bus import security
from common.bus.endpoint import Endpoint
from common.errors import BusError

__all__ = ["attach", "bus_context", "open_socket"]

_SOCKET_TYPES: dict[str, int] = {
    "pub": zmq.PUB,
    "sub": zmq.SUB,
    "xpub": zmq.XPUB,
    "xsub": zmq.XSUB,
    "push": zmq.PUSH,
    "pull": zmq.PULL,
    "dealer": zmq.DEALER,
    "router": zmq.ROUTER,
    "pair": zmq.PAIR,
}


def bus_context() -> zmq.asyncio.Context:
    """The process's one asyncio context (inproc endpoints reach only sockets of the same context)."""
    return zmq.asyncio.Context.instance()


def open_socket(endpoint: Endpoint, context: zmq.asyncio.Context | zmq.Context[Any], **options: int) -> Any:
    """A socket of ``endpoint``'s pattern, options applied (``sndhwm=8``), bound or connected.
    The caller closes it; a failure to bind or connect is a BusError that names the endpoint.

    >>> import zmq
    >>> sock = open_socket(Endpoint.parse("pull+bind:inproc://doc-opening"), zmq.Context.instance(), rcvhwm=4)
    >>> sock.getsockopt(zmq.RCVHWM)
    4
    >>> sock.close()
    """
    sock = context.socket(_SOCKET_TYPES[endpoint.pattern])
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name.upper()), value)
    try:
        attach(sock, endpoint, context)
    except BusError:
        sock.close(linger=0)
        raise
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        verb = "bind" if endpoint.bind else "connect"
        raise BusError(f"cannot {verb} {endpoint}: {exc}") from exc
    return sock


def attach(sock: Any, endpoint: Endpoint, context: Any) -> None:
    """Binds or connects ``sock`` at ``endpoint`` (a subscriber attaches one socket to several):
    Curve options on tcp (bus.curve), private ipc files."""
    security.prepare(sock, endpoint.bind, endpoint.address, context)
    path = endpoint.ipc_path
    if endpoint.bind:
        if path is not None:
            security.secure_ipc_folder(path.parent)
            _refuse_if_served(path, str(endpoint))
        sock.bind(endpoint.address)
        if path is not None:
            security.secure_ipc_socket(path)
    else:
        sock.connect(endpoint.address)


def _refuse_if_served(path: Path, endpoint: str) -> None:
    """ZeroMQ unlinks an ipc path before binding it, silently taking it from a live process (whose
    peers then hear nothing). Bind only where nobody answers: a leftover file from a dead process is fine."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise BusError(f"cannot bind {endpoint}: {path} exists and is not a socket")
    for _ in range(10):  # a socket closed a moment ago (a restart in this process) stops answering soon
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return  # refused or gone: nobody serves it
        finally:
            probe.close()
        time.sleep(0.1)
    raise BusError(f"cannot bind {endpoint}: another live process serves {path}; stop it or give this one another path")

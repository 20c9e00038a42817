"""Endpoint strings that say pattern, direction and address in one place.

``pattern[+bind|+connect]:transport://address``, for example ``pub+connect:ipc:///run/edgesight/bus-in.sock``
or ``router+bind:tcp://0.0.0.0:5560``. Without ``+bind``/``+connect`` the usual side is taken:
the broker's ``xsub``/``xpub`` and the events ``router``/``pull`` bind; everything else connects.
"""

from __future__ import annotations

import re
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import zmq
import zmq.asyncio

from common.bus import security
from common.errors import BusError

__all__ = ["Endpoint", "Pattern"]

Pattern = Literal["pub", "sub", "xpub", "xsub", "push", "pull", "dealer", "router", "pair"]
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
_BINDS_BY_DEFAULT = frozenset({"xpub", "xsub", "router", "pull"})
_SPEC = re.compile(r"^(?P<pattern>[a-z]+)(?:\+(?P<side>bind|connect))?:(?P<address>(?:ipc|tcp|inproc)://.+)$")


@dataclass(frozen=True)
class Endpoint:
    pattern: Pattern
    bind: bool
    address: str

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        """``Endpoint.parse("sub:ipc:///tmp/x.sock") == Endpoint("sub", False, "ipc:///tmp/x.sock")``."""
        match = _SPEC.match(spec.strip())
        if not match or match["pattern"] not in _SOCKET_TYPES:
            raise BusError(
                f"bad endpoint {spec!r}: expected PATTERN[+bind|+connect]:(ipc|tcp|inproc)://ADDRESS "
                f"with PATTERN one of {', '.join(_SOCKET_TYPES)}"
            )
        pattern = match["pattern"]
        side = match["side"]
        bind = side == "bind" if side else pattern in _BINDS_BY_DEFAULT
        return cls(pattern, bind, match["address"])  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.pattern}+{'bind' if self.bind else 'connect'}:{self.address}"

    def attach(self, sock: Any, context: Any) -> None:
        """Binds or connects ``sock`` here: Curve options on tcp (bus.curve), private ipc files."""
        security.prepare(sock, self.bind, self.address, context)
        path = _ipc_path(self.address)
        if self.bind:
            if path is not None:
                security.secure_ipc_folder(path.parent)
                _refuse_if_served(path, str(self))
            sock.bind(self.address)
            if path is not None:
                security.secure_ipc_socket(path)
        else:
            sock.connect(self.address)

    def open(self, context: zmq.asyncio.Context | zmq.Context[Any], **options: int) -> Any:
        """A socket of this pattern, options applied, bound or connected. The caller closes it."""
        sock = context.socket(_SOCKET_TYPES[self.pattern])
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        try:
            self.attach(sock, context)
        except BusError:
            sock.close(linger=0)
            raise
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            verb = "bind" if self.bind else "connect"
            raise BusError(f"cannot {verb} {self}: {exc}") from exc
        return sock


def _ipc_path(address: str) -> Path | None:
    """The file of an ipc endpoint; None for tcp, inproc and Linux abstract sockets (``ipc://@name``)."""
    if address.startswith("ipc://") and not address.startswith("ipc://@"):
        return Path(address[len("ipc://") :])
    return None


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

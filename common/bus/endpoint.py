"""Endpoint strings that say pattern, direction and address in one place: a plain value.

``pattern[+bind|+connect]:transport://address``, for example ``pub+connect:ipc:///run/edgesight/bus-in.sock``
or ``router+bind:tcp://0.0.0.0:5560``. Without ``+bind``/``+connect`` the usual side is taken:
the broker's ``xsub``/``xpub`` and the events ``router``/``pull`` bind; everything else connects.

Nothing here opens a socket (that is :mod:`common.bus.opening`), so the site file's models can check
endpoint strings without reaching into the bus.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from common.errors import BusError

__all__ = ["PATTERNS", "Endpoint", "Pattern", "parse_endpoints"]

Pattern = Literal["pub", "sub", "xpub", "xsub", "push", "pull", "dealer", "router", "pair"]
PATTERNS: tuple[Pattern, ...] = get_args(Pattern)
_BINDS_BY_DEFAULT = frozenset({"xpub", "xsub", "router", "pull"})
_SPEC = re.compile(r"^(?P<pattern>[a-z]+)(?:\+(?P<side>bind|connect))?:(?P<address>(?:ipc|tcp|inproc)://.+)$")


@dataclass(frozen=True)
class Endpoint:
    """Where one socket binds or connects.

    >>> Endpoint.parse("sub:ipc:///tmp/x.sock")
    Endpoint(pattern='sub', bind=False, address='ipc:///tmp/x.sock')
    >>> str(Endpoint.parse("router:tcp://0.0.0.0:5560"))
    'router+bind:tcp://0.0.0.0:5560'
    """

    pattern: Pattern
    bind: bool
    address: str

    @classmethod
    def parse(cls, spec: str) -> Endpoint:
        match = _SPEC.fullmatch(spec.strip())
        if not match or match["pattern"] not in PATTERNS:
            raise BusError(
                f"bad endpoint {spec!r}: expected PATTERN[+bind|+connect]:(ipc|tcp|inproc)://ADDRESS "
                f"with PATTERN one of {', '.join(PATTERNS)}"
            )
        pattern = match["pattern"]
        side = match["side"]
        bind = side == "bind" if side else pattern in _BINDS_BY_DEFAULT
        return cls(pattern, bind, match["address"])

    def __str__(self) -> str:
        return f"{self.pattern}+{'bind' if self.bind else 'connect'}:{self.address}"

    @property
    def ipc_path(self) -> Path | None:
        """The file of an ipc endpoint; None for tcp, inproc and Linux abstract sockets (``ipc://@name``)."""
        if self.address.startswith("ipc://") and not self.address.startswith("ipc://@"):
            return Path(self.address[len("ipc://") :])
        return None


def parse_endpoints(specs: str | Endpoint | Iterable[str | Endpoint]) -> list[Endpoint]:
    """One endpoint or several, each a string or already parsed, as a list of endpoints."""
    if isinstance(specs, (str, Endpoint)):
        specs = [specs]
    return [spec if isinstance(spec, Endpoint) else Endpoint.parse(spec) for spec in specs]

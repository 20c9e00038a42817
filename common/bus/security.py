"""Who may speak on the bus: CurveZMQ on tcp endpoints, private ipc sockets.

With ``bus.curve`` set, every tcp socket is encrypted and authenticated: a socket that binds is a
Curve *server* (the site's server key pair), one that connects is a *client* with its service's own
key pair, and a binding socket accepts only the client public keys in ``authorized_keys`` (checked
by a ZAP handler on the socket's context; a refused client is counted and logged and receives
nothing; so is a client that offers no Curve at all, seen by the socket's monitor). Keys are pyzmq
certificate files, made by ``edgesight bus keygen``; a key's name is its file's in ``authorized_keys``
(``clients/NAME.key``). ipc endpoints are guarded by the file system instead: their folder is made
0700 and the socket file 0660.

Being heard is not being obeyed: only the keys in ``CONTROL_SENDERS`` may send ``Control``, and only
what it lists. The broker checks it (:class:`ControlGuard`): ZeroMQ tells a receiver which key a
message came with (its ``User-Id``, set by the ZAP handler) per connection, and a service behind the
broker's proxy only sees the broker's.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from common.bus.endpoint import Endpoint
from common.errors import BusError, ConfigError
from common.metrics import BUS_DENIED
from common.registry import PEERS, SERVICES, curve_clients, operators
from contracts import ContractError, Control, decode, parse_topic

if TYPE_CHECKING:
    from common.config import SiteConfig
    from common.config.bus import CurveConfig

__all__ = [
    "CONTROL_SENDERS",
    "DEFAULT_CLIENTS",
    "STREAM_SENDERS",
    "ControlGuard",
    "check_curve",
    "configure_curve",
    "control_guard",
    "generate_bus_keys",
    "key_name",
    "prepare",
    "secure_ipc_folder",
    "secure_ipc_socket",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Keys:
    service: str
    server_public: bytes
    server_secret: bytes | None
    public: bytes
    secret: bytes
    authorized: frozenset[bytes]
    authorized_folder: Path
    names: Mapping[bytes, str]  # an authorized public key (z85) -> its name (its file's, NAME.key)


_keys: _Keys | None = None
_authenticators: dict[int, ThreadAuthenticator] = {}


# The key pairs `edgesight bus keygen` makes by default: every service's, then run's and cli's (common/registry.py)
DEFAULT_CLIENTS: tuple[str, ...] = curve_clients()

# Who may send Control on a Curve bus, by key name: None for any command to any service (the operators:
# run, cli), else {target service: commands} (a service's may_control: the console's rule editor's save).
# Every other key's Control is dropped by the broker, counted and logged: a service's key (an app's host,
# a camera decoder) taken over must not stop or pause the others.
CONTROL_SENDERS: Mapping[str, Mapping[str, frozenset[str]] | None] = {
    **{peer.name: None for peer in PEERS if peer.operator},
    **{service.name: service.may_control for service in SERVICES if service.may_control},
}
# Streams one service alone speaks for (its own_streams; apps/), and the operators: the console serves
# what arrives there as that service's word
STREAM_SENDERS: Mapping[bytes, frozenset[str]] = {
    prefix: frozenset({service.name, *operators()}) for service in SERVICES for prefix in service.own_streams
}


def generate_bus_keys(out: Path, clients: list[str]) -> list[Path]:
    """``server.key`` + ``server.key_secret``, and per client ``NAME.key_secret`` with its public key
    in ``clients/NAME.key`` (the folder for ``authorized_keys``). Secrets are 0600; nothing is overwritten."""
    (out / "clients").mkdir(parents=True, exist_ok=True)
    names = ["server", *clients]
    planned = [out / f"{name}.key_secret" for name in names] + [out / "server.key"]
    planned += [out / "clients" / f"{name}.key" for name in clients]
    existing = [str(path) for path in planned if path.exists()]
    if existing:
        raise BusError(f"{', '.join(existing)} exist; keys are never overwritten")
    umask = os.umask(0o077)  # the secret files are never readable by others, not even for a moment
    try:
        for name in names:
            public, _ = zmq.auth.create_certificates(str(out), name)
            os.chmod(public, 0o644)
            if name != "server":
                os.rename(public, out / "clients" / f"{name}.key")
    finally:
        os.umask(umask)
    return planned


def _load(path: Path, key: str, secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise ConfigError([f"bus.curve.{key}: {path} does not exist (make key pairs with `edgesight bus keygen`)"])
    try:
        public, private = zmq.auth.load_certificate(str(path))
    except (ValueError, OSError) as exc:
        raise ConfigError([f"bus.curve.{key}: {path} is not a ZeroMQ certificate: {exc}"]) from None
    if secret and private is None:
        raise ConfigError([f"bus.curve.{key}: {path} holds no secret key (use the .key_secret file)"])
    return public, private


def configure_curve(config: CurveConfig | None, service: str) -> None:
    """Loads this process's keys (once, at start); ``None`` leaves tcp endpoints plain."""
    global _keys
    if config is None:
        _keys = None
        return
    server_public, _ = _load(config.server_key, "server_key", secret=False)
    server_secret = None
    if config.server_secret_key is not None and config.server_secret_key.is_file():
        _, server_secret = _load(config.server_secret_key, "server_secret_key", secret=True)
    client = Path(config.client_key.replace("{service}", service))
    public, secret = _load(client, "client_key", secret=True)
    folder = config.authorized_keys
    if not folder.is_dir():
        raise ConfigError([f"bus.curve.authorized_keys: {folder} is not a folder of client public keys"])
    names = {zmq.auth.load_certificate(str(path))[0]: path.stem for path in sorted(folder.glob("*.key"))}
    assert secret is not None
    _keys = _Keys(service, server_public, server_secret, public, secret, frozenset(names), folder, names)


def check_curve(config: SiteConfig, services: list[str]) -> list[str]:
    """``file:line: bus.curve.KEY: message`` for every key file the site's ``services`` would fail to load."""
    curve = config.bus.curve
    if curve is None:
        return []
    problems: list[str] = []

    def attempt(key: str, path: Path, secret: bool) -> None:
        try:
            _load(path, key, secret)
        except ConfigError as exc:
            problems.extend(f"{config.where('bus', 'curve', key)}: {p.split(': ', 1)[1]}" for p in exc.problems)

    attempt("server_key", curve.server_key, secret=False)
    bus = config.bus
    specs = [bus.publish, *bus.subscribe, bus.broker.frontend, bus.broker.backend, bus.events.send, bus.events.receive]
    endpoints = [Endpoint.parse(spec.replace("{service}", "x")) for spec in specs]
    if any(e.bind and e.address.startswith("tcp://") for e in endpoints):
        if curve.server_secret_key is None:
            problems.append(f"{config.where('bus', 'curve')}: tcp endpoints are bound: set server_secret_key")
        else:
            attempt("server_secret_key", curve.server_secret_key, secret=True)
    for service in services:
        attempt("client_key", Path(curve.client_key.replace("{service}", service)), secret=True)
    if not curve.authorized_keys.is_dir():
        problems.append(f"{config.where('bus', 'curve', 'authorized_keys')}: {curve.authorized_keys} is not a folder")
    return problems


def prepare(sock: Any, bind: bool, address: str, context: Any) -> None:
    """Sets a socket's Curve options before it binds or connects (tcp endpoints, with bus.curve)."""
    if _keys is None or not address.startswith("tcp://"):
        return
    if bind:
        if _keys.server_secret is None:
            raise BusError(
                f"cannot bind {address} with bus.curve: this service ({_keys.service}) needs the server's secret key "
                "(bus.curve.server_secret_key)"
            )
        _authenticator(context)
        _watch_handshakes(sock, context, address)
        sock.curve_server = True
        sock.curve_publickey = _keys.server_public
        sock.curve_secretkey = _keys.server_secret
    else:
        sock.curve_serverkey = _keys.server_public
        sock.curve_publickey = _keys.public
        sock.curve_secretkey = _keys.secret


class _Clients:
    """The ZAP callback: a client key in the authorized folder passes; any other is counted and logged."""

    def __init__(self, keys: _Keys) -> None:
        self.keys = keys
        self.logged: dict[bytes, float] = {}

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys.authorized:
            return True
        BUS_DENIED.labels(service=self.keys.service, reason="key").inc()
        now = time.monotonic()
        if now - self.logged.get(key, -3600.0) > 60 and len(self.logged) < 1024:  # once a minute per key
            self.logged[key] = now
            log.warning(
                "bus client refused: its key is not authorized",
                extra={"client_key": key.decode(errors="replace"), "folder": str(self.keys.authorized_folder)},
            )
        return False


def _authenticator(context: Any) -> None:
    """One ZAP handler per ZeroMQ context (ZAP is per context); started the first time a socket binds."""
    underlying = context.underlying
    if underlying in _authenticators:
        return
    assert _keys is not None
    sync = _sync(context)
    authenticator = ThreadAuthenticator(sync, log=logging.getLogger("edgesight.bus.auth"))
    authenticator.start()
    authenticator.configure_curve_callback(domain="*", credentials_provider=_Clients(_keys))
    _authenticators[underlying] = authenticator


def _sync(context: Any) -> zmq.Context[zmq.Socket[bytes]]:
    """A blocking context on ``context``'s ZeroMQ context: for sockets on threads (ZAP, monitors, inproc)."""
    return zmq.Context.shadow(context.underlying)


_HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL


def _watch_handshakes(sock: Any, context: Any, address: str) -> None:
    """A client offering no Curve at all never reaches the ZAP handler (the mechanisms differ): the
    socket's monitor sees its failed handshake, counted here as ``no_key`` (another failure,
    say a port scan, as ``handshake``). The thread ends with the socket (the monitor stops)."""
    monitor = f"inproc://edgesight-handshakes-{id(sock):x}"
    sock.monitor(monitor, _HANDSHAKE_FAILURES | zmq.EVENT_MONITOR_STOPPED)
    pair = _sync(context).socket(zmq.PAIR)
    pair.connect(monitor)
    assert _keys is not None
    service = _keys.service
    threading.Thread(target=_count_failures, args=(pair, service, address), name="bus-handshakes", daemon=True).start()


def _count_failures(pair: zmq.Socket[bytes], service: str, address: str) -> None:
    logged = -3600.0
    try:
        while True:
            event = recv_monitor_message(pair)
            if event["event"] == zmq.EVENT_MONITOR_STOPPED:
                return
            plain = event["value"] == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH
            BUS_DENIED.labels(service=service, reason="no_key" if plain else "handshake").inc()
            if time.monotonic() - logged > 60:  # once a minute: a client retries every few seconds
                logged = time.monotonic()
                what = "it offers no Curve key" if plain else "its handshake failed"
                log.warning(f"bus client refused: {what}", extra={"endpoint": address})
    except zmq.ContextTerminated:
        pass
    finally:
        pair.close(linger=0)


class ControlGuard:
    """The broker's check of every message on ``control/``: its sender is the key the frontend's
    connection authenticated with; a key in ``CONTROL_SENDERS`` may send what it lists there, any
    other nothing. A refusal is dropped, counted (``reason="control"``) and logged once a minute per
    key. Likewise a stream of ``STREAM_SENDERS`` (``apps/``: only the apps service; ``reason="stream"``).
    A message with no key (an ipc frontend: the file system guards it) passes."""

    def __init__(self, keys: _Keys) -> None:
        self.keys = keys
        self.logged: dict[str, float] = {}

    def allows(self, frames: Sequence[zmq.Frame]) -> bool:
        head = frames[0].bytes
        stream = next((prefix for prefix in STREAM_SENDERS if head.startswith(prefix)), None)
        if stream is None and not head.startswith(b"control/"):
            return True
        sender = _named(self.keys, frames[0])
        if sender is None:  # no User-Id: not a Curve connection
            return True
        if stream is not None:
            if sender in STREAM_SENDERS[stream]:
                return True
            return self._refuse(sender, "stream", stream.decode().rstrip("/"), "-")
        rights = CONTROL_SENDERS.get(sender, {})
        if rights is None:
            return True
        command, target = "?", "?"
        try:
            _, target = parse_topic(head)
            if len(frames) == 2:
                command = decode(frames[1].bytes, Control).command
        except (ContractError, ValueError):
            pass
        if command in rights.get(target, ()):
            return True
        return self._refuse(sender, "control", target, command)

    def _refuse(self, sender: str, reason: str, target: str, command: str) -> bool:
        BUS_DENIED.labels(service=self.keys.service, reason=reason).inc()
        now = time.monotonic()
        if now - self.logged.get(sender, -3600.0) > 60 and len(self.logged) < 1024:
            self.logged[sender] = now
            log.warning(
                f"bus {reason} refused: its sender may not send it",
                extra={"sender": sender, "command": command, "target": target},
            )
        return False


def _named(keys: _Keys | None, frame: zmq.Frame) -> str | None:
    try:
        user = str(frame.get("User-Id"))
    except zmq.ZMQError:  # no User-Id: not a Curve connection
        return None
    return keys.names.get(user.encode(), user) if keys is not None else user


def key_name(frame: zmq.Frame) -> str | None:
    """The name of the Curve key ``frame`` came with (its file's, ``clients/NAME.key``), as the ZAP handler
    authenticated its connection; None without Curve (ipc, plain tcp: nobody is told apart). A key not
    named at start (none is let in) would be its z85 text. ``frame`` must be received with ``copy=False``."""
    return _named(_keys, frame)


def control_guard() -> ControlGuard | None:
    """The guard for the broker on a Curve bus; None without ``bus.curve`` (nobody is told apart)."""
    return None if _keys is None else ControlGuard(_keys)


def secure_ipc_folder(path: Path) -> None:
    """The folder of an ipc socket this process binds: created 0700; tightened if ours and looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if info.st_mode & 0o077 and info.st_uid == os.geteuid():
        if path == Path("/tmp") or info.st_mode & 0o1000:  # a shared sticky folder: never ours to tighten
            log.warning("ipc socket in a shared folder: any local user can connect", extra={"folder": str(path)})
            return
        path.chmod(0o700)


def secure_ipc_socket(path: Path) -> None:
    try:
        path.chmod(0o660)
    except OSError as exc:
        log.warning("cannot restrict the ipc socket", extra={"path": str(path), "error": str(exc)})

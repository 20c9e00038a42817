"""Rules' event ids: unpredictable to anyone without the site's secret, stable for the same decision.

An id is made of what was decided (site, camera, rule, event type, lifecycle, track, start, frame seq),
all of which a listener on the bus sees in frame_refs and Detections. A uuid5 of a public namespace
let it compute the id of an event before rules sent it, and claim that id at the uplink first (the
uplink takes an id once). So the id is an HMAC-SHA256 of the same text under a per-site secret of
``SECRET_BYTES`` random bytes, made at first start and kept in ``state_dir/rules-ids.key`` (0600, its
own file: the console reads ``rules.sqlite``, never this). Same state, same decision: same id, across
restarts. The id keeps the form of a UUID (version 8, "custom": RFC 9562), as contracts describe ids.

A key file of the wrong size (truncated by a full disk, written by hand) is replaced by a new secret
with a warning: ids made after it differ from those made before, which only matters to a decision
made again (events already in the outbox keep theirs). Anything but a regular file in its place (a
symbolic link, a folder, a FIFO, a socket) or a key file that cannot be read is refused with a
``StartupError`` naming the path and what to do: the service does not start. A leftover
``rules-ids.key.new`` (a crash between write and rename) is removed whatever it is, a folder only when
empty (else refused the same way).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import secrets
import stat
import uuid
from pathlib import Path

from common.errors import StartupError
from common.files import FILE_MODE, private_dir

__all__ = ["KEY_FILE", "SECRET_BYTES", "EventIds"]

log = logging.getLogger(__name__)

KEY_FILE = "rules-ids.key"
SECRET_BYTES = 16


class EventIds:
    """The ids of rules' events under the secret kept in ``state_dir`` (made there if missing)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / KEY_FILE
        self._secret = _load_or_make(self.path)

    def of(self, identity: str) -> str:
        """The id of the decision described by ``identity``: the same text always gives the same id."""
        digest = bytearray(hmac.new(self._secret, identity.encode(), hashlib.sha256).digest()[:16])
        digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
        digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 9562 variant
        return str(uuid.UUID(bytes=bytes(digest)))


def _unusable(path: Path, what: str) -> StartupError:
    return StartupError(
        f"rules' event id secret {path} {what}: remove it (rules then makes a new secret; the ids of decisions "
        "made again will differ)"
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if stat.S_ISFIFO(mode):
        return "is a FIFO, not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    return "is not a regular file"


def _load_or_make(path: Path) -> bytes:
    private_dir(path.parent)
    try:  # never waits: a FIFO put in its place opens at once (non-blocking) and is refused below
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return _make(path)
    except OSError as exc:
        link = exc.errno == errno.ELOOP
        raise _unusable(path, "is a symbolic link" if link else f"cannot be read ({exc.strerror})") from exc
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):  # before fdopen: a folder's descriptor is refused there with a traceback
        os.close(descriptor)
        raise _unusable(path, _kind(info.st_mode))
    with os.fdopen(descriptor, "rb") as file:
        if stat.S_IMODE(info.st_mode) & ~FILE_MODE and info.st_uid == os.geteuid():
            os.fchmod(file.fileno(), FILE_MODE)  # a copy restored with a looser mode: tightened
        secret = file.read(SECRET_BYTES + 1)
    if len(secret) == SECRET_BYTES:
        return secret
    log.warning(
        "rules' event id secret has the wrong size; a new one is made (ids of decisions made again will differ)",
        extra={"path": str(path), "bytes": len(secret)},
    )
    return _make(path)


def _make(path: Path) -> bytes:
    """A new secret, on disk (synced) before it is used: written aside and renamed over, so a crash
    leaves the old file or the new one, never half of one."""
    secret = secrets.token_bytes(SECRET_BYTES)
    spare = path.with_name(path.name + ".new")
    _remove_spare(spare)
    descriptor = os.open(spare, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    with os.fdopen(descriptor, "wb") as file:
        file.write(secret)
        file.flush()
        os.fsync(file.fileno())
    os.replace(spare, path)
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)
    return secret


def _remove_spare(spare: Path) -> None:
    """Removes what is at ``spare`` (left by a crash between write and rename, or put there): a file, link,
    FIFO or socket holds nothing of ours; a folder goes only when empty."""
    try:
        info = os.lstat(spare)
        if stat.S_ISDIR(info.st_mode):
            os.rmdir(spare)
        else:
            os.unlink(spare)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise _unusable(spare, f"cannot be removed ({exc.strerror})") from exc

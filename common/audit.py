"""The audit trail: who changed what on this appliance, appended to ``state_dir/audit.jsonl``.

Model installs and rollbacks, the models a service loaded (with their signer), rule and config
changes (console edits included) and console logins are recorded here by whoever did them — a
service, the CLI, the console — each as one JSON line written with a single ``write`` under an
exclusive lock and fsynced. The uplink follows the file and sends every record upstream as an
``audit`` event (``services/uplink/audit.py``), so a record is never lost to an uplink that is
down, and a writer never waits for one; the console shows its newest records. Both read it here
(``read_audit``, ``read_audit_tail``): whole lines only, so a line being written is read next time,
and a line that is no record is reported, never fatal. Records hold names, versions, digests and key
ids: never a secret (a password, a token, a camera URL's credentials).

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as state_dir:
    ...     _ = AuditTrail(state_dir, "plant-7", "cli:root").record("model.install", "people", version="2")
    ...     chunk = read_audit(audit_path(state_dir), AuditPosition(), max_bytes=1 << 20)
    >>> [(line.record["action"], line.record["detail"]) for line in chunk.lines() if line.record]
    [('model.install', {'version': '2'})]
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.files import private_dir, private_fd

__all__ = [
    "AUDIT_FILE",
    "AuditChunk",
    "AuditLine",
    "AuditPosition",
    "AuditTrail",
    "audit_path",
    "read_audit",
    "read_audit_tail",
]

AUDIT_FILE = "audit.jsonl"
MAX_VALUE = 1024  # a detail value is cut to this (the bus contract's Text)
MAX_CHANGES = 500  # keys of a diff kept in one record (a camera has at most 64 rules)


def audit_path(state_dir: Path | str) -> Path:
    return Path(state_dir) / AUDIT_FILE


class AuditTrail:
    def __init__(self, state_dir: Path | str, site: str, actor: str) -> None:
        self.path = audit_path(state_dir)
        self.site = site
        self.actor = actor

    def record(
        self,
        action: str,
        target: str,
        *,
        actor: str | None = None,
        changes: list[dict[str, Any]] | None = None,
        **detail: Any,
    ) -> dict[str, Any]:
        """Appends one record and returns it. ``action`` is dotted (``model.install``); ``detail``
        values are strings, numbers or booleans; ``changes`` is a key-level diff (``{"key", "old",
        "new"}``, secrets already masked by the caller), kept whole up to MAX_CHANGES keys."""
        entry: dict[str, Any] = {
            "id": f"audit-{uuid.uuid4().hex}",
            "ts_ns": time.time_ns(),
            "site": self.site,
            "actor": actor or self.actor,
            "action": action,
            "target": target[:MAX_VALUE],
            "detail": {key: _scalar(value) for key, value in detail.items() if value is not None},
        }
        if changes is not None:
            entry["changes"] = [
                {
                    "key": str(change["key"])[:MAX_VALUE],
                    "old": _bounded(change.get("old")),
                    "new": _bounded(change.get("new")),
                }
                for change in changes[:MAX_CHANGES]
            ]
            entry["detail"]["changed_keys"] = len(changes)
        line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
        private_dir(self.path.parent)
        descriptor = private_fd(self.path, os.O_WRONLY | os.O_APPEND, 0o640)  # 0640, as it always was
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)  # writers on one host (or one hostPath) never interleave
            os.write(descriptor, line)
            os.fsync(descriptor)
        finally:
            os.close(descriptor)  # closing releases the lock
        return entry


def _scalar(value: Any) -> str | int | float | bool:
    if isinstance(value, (bool, int, float)):
        return value
    return str(value)[:MAX_VALUE]


def _bounded(value: Any) -> Any:
    """A diff's value as JSON allows, its text cut to MAX_VALUE."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return text[:MAX_VALUE] if isinstance(value, str) else (value if len(text) <= MAX_VALUE else text[:MAX_VALUE])


# -- reading -----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class AuditPosition:
    """Where a follower of the trail stands: the file by its inode (so that a file replaced by hand is
    noticed) and the offset after the last whole line it read. ``AuditPosition()``: nothing read yet."""

    inode: int = 0
    offset: int = 0


@dataclasses.dataclass(frozen=True)
class AuditLine:
    """One whole line of the trail: its record, or (``record`` None) why it is not one."""

    record: dict[str, Any] | None
    error: str = ""


@dataclasses.dataclass(frozen=True)
class AuditChunk:
    """The whole lines of one read of the trail, and where the next read starts."""

    raw: list[bytes]
    position: AuditPosition
    restarted: bool = False  # the file was replaced or cut since the position given: read from its start

    def lines(self, *, newest_first: bool = False) -> Iterator[AuditLine]:
        """Each line parsed, as it is asked for: a reader that stops early parses no more."""
        for line in reversed(self.raw) if newest_first else self.raw:
            yield _parse(line)


def read_audit(path: Path, since: AuditPosition, max_bytes: int) -> AuditChunk | None:
    """The whole lines appended after ``since`` (from at most ``max_bytes`` read); None without a file.

    A file with another inode, or shorter than ``since.offset``, was replaced or truncated by hand: it
    is read from its start again (``restarted``, unless nothing was read before)."""
    try:
        with path.open("rb") as file:
            info = os.fstat(file.fileno())
            restart = info.st_ino != since.inode or info.st_size < since.offset
            offset = 0 if restart else since.offset
            file.seek(offset)
            chunk = file.read(max_bytes)
    except FileNotFoundError:
        return None
    raw, used = _whole_lines(chunk)
    return AuditChunk(raw, AuditPosition(info.st_ino, offset + used), restarted=restart and since.inode != 0)


def read_audit_tail(path: Path, max_bytes: int) -> AuditChunk | None:
    """The whole lines in the last ``max_bytes`` of the trail (the newest records); None without a file.
    Where the file is longer, the first line (which may be cut) is left out."""
    try:
        with path.open("rb") as file:
            size = file.seek(0, os.SEEK_END)
            start = max(0, size - max_bytes)
            file.seek(start)
            inode = os.fstat(file.fileno()).st_ino
            chunk = file.read()
    except FileNotFoundError:
        return None
    raw, used = _whole_lines(chunk)
    return AuditChunk(raw[1:] if start > 0 else raw, AuditPosition(inode, start + used))


def _whole_lines(chunk: bytes) -> tuple[list[bytes], int]:
    """The complete lines of ``chunk`` and the bytes they take: a record still being written (no
    newline yet) is left for the next read."""
    end = chunk.rfind(b"\n") + 1
    return chunk[:end].splitlines(), end


def _parse(line: bytes) -> AuditLine:
    try:
        record = json.loads(line)
    except ValueError as exc:  # json's errors, and bytes that are not UTF-8, are ValueErrors
        return AuditLine(None, str(exc))
    if not isinstance(record, dict):
        return AuditLine(None, f"expected a JSON object, got {type(record).__name__}")
    return AuditLine(record)

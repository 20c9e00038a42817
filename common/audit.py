"""The audit trail: who changed what on this appliance, appended to ``state_dir/audit.jsonl``.

Model installs and rollbacks, the models a service loaded (with their signer), rule and config
changes (console edits included) and console logins are recorded here by whoever did them — a
service, the CLI, the console — each as one JSON line written with a single ``write`` under an
exclusive lock and fsynced. The uplink follows the file and sends every record upstream as an
``audit`` event (``services/uplink/audit.py``), so a record is never lost to an uplink that is
down, and a writer never waits for one. Records hold names, versions, digests and key ids: never a
secret (a password, a token, a camera URL's credentials).

    >>> # AuditTrail(state_dir, "plant-7", "cli:root").record("model.install", "people", version="2")
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from common.files import private_dir, private_fd

__all__ = ["AUDIT_FILE", "AuditTrail", "audit_path"]

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

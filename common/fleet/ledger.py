"""What a site remembers of the jobs it was sent: ``state_dir/fleet/ledger.json``.

Each nonce of a verified document stays until that document expires (a document seen again within its
life is a replay, refused); each finished job keeps its status, so a retained document or a
notify-next heard again is not run twice; the ``issued_at`` of the desired state applied last, so an
older one is ignored. Written whole to a private temporary file, flushed and renamed over the old one:
a crash leaves the old ledger or the new, never half of one. A document no trusted operator is known
to have sent is never written here (services.fleet.jobs): junk costs the site no write.

>>> import pathlib, tempfile, time
>>> ledger = Ledger(pathlib.Path(tempfile.mkdtemp()) / "ledger.json")
>>> nonce = "5f" * 16
>>> ledger.seen(nonce)
False
>>> ledger.remember(nonce, expires_at=time.time() + 3600)
>>> Ledger(ledger.path).seen(nonce)  # after a restart too
True
>>> Ledger(ledger.path).seen(nonce, now=time.time() + 7200)  # by then the document is refused as expired
False
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from common.errors import EdgeSightError
from common.files import private_dir, private_fd

__all__ = ["FINISHED_KEEP_S", "MAX_FINISHED", "Ledger", "LedgerError"]

# A finished job is kept past any document's life (signing.MAX_TTL_S, 30 days): a document older than
# that is refused as expired anyway. MAX_FINISHED bounds the file whatever the clock says.
FINISHED_KEEP_S = 31 * 86400
MAX_FINISHED = 5000
_SCHEMA = 1


class LedgerError(EdgeSightError):
    """The ledger cannot be read or written. A ledger is never replaced by an empty one on its own:
    that would let every document it remembers run again until it expires."""


class Ledger:
    """Nonces until their expiry, finished jobs and the desired state's ``issued_at``, in one file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._nonces: dict[str, float] = {}
        self._finished: dict[str, tuple[str, float]] = {}
        self._desired_issued_at: float | None = None
        self._load()

    def seen(self, nonce: str, *, now: float | None = None) -> bool:
        """Whether a document with this nonce was accepted before and has not expired since."""
        expires_at = self._nonces.get(nonce)
        return expires_at is not None and expires_at > _now(now)

    def remember(self, nonce: str, expires_at: float, *, now: float | None = None) -> None:
        """Keeps ``nonce`` until ``expires_at`` (epoch seconds) and saves; expired ones are dropped."""
        self._nonces[nonce] = float(expires_at)
        self._save(_now(now))

    def finished(self, job_id: str) -> str | None:
        """The status a job finished with (SUCCEEDED, FAILED, REJECTED, ...), or None."""
        entry = self._finished.get(job_id)
        return None if entry is None else entry[0]

    def finish(self, job_id: str, status: str, *, now: float | None = None) -> None:
        at = _now(now)
        self._finished.pop(job_id, None)  # re-inserted last: the dict's order is the order they finished
        self._finished[job_id] = (status, at)
        self._save(at)

    @property
    def desired_issued_at(self) -> float | None:
        """``issued_at`` (epoch seconds) of the desired state applied last; a document not newer is ignored."""
        return self._desired_issued_at

    @desired_issued_at.setter
    def desired_issued_at(self, value: float | None) -> None:
        if value == self._desired_issued_at:
            return  # the same desired state heard again (each reconnect): no write
        self._desired_issued_at = value
        self._save(time.time())

    def prune(self, now: float | None = None) -> None:
        """Drops expired nonces and finished jobs older than :data:`FINISHED_KEEP_S` (or past
        :data:`MAX_FINISHED`, oldest first). Saving prunes too."""
        at = _now(now)
        self._nonces = {nonce: expiry for nonce, expiry in self._nonces.items() if expiry > at}
        kept = [(job, entry) for job, entry in self._finished.items() if at - entry[1] < FINISHED_KEEP_S]
        self._finished = dict(kept[-MAX_FINISHED:])

    def _load(self) -> None:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            data = json.loads(text)
            if data.get("schema") != _SCHEMA:
                raise ValueError(f"schema {data.get('schema')!r}, expected {_SCHEMA}")
            self._nonces = {str(nonce): _finite(expiry) for nonce, expiry in data["nonces"].items()}
            self._finished = {str(job): (str(status), _finite(at)) for job, (status, at) in data["finished"].items()}
            issued = data.get("desired_issued_at")
            self._desired_issued_at = None if issued is None else _finite(issued)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise LedgerError(
                f"{self.path}: not a fleet ledger ({exc}); move it away to start with an empty one (documents it "
                "remembers could then run again until they expire)"
            ) from None
        self.prune()

    def _save(self, now: float) -> None:
        self.prune(now)
        data: dict[str, Any] = {
            "schema": _SCHEMA,
            "nonces": self._nonces,
            "finished": {job: [status, at] for job, (status, at) in self._finished.items()},
            "desired_issued_at": self._desired_issued_at,
        }
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            private_dir(self.path.parent)
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()  # private_fd never follows a link; a stale one goes first
            descriptor = private_fd(temporary, os.O_WRONLY | os.O_TRUNC)
            with os.fdopen(descriptor, "wb") as file:
                file.write(json.dumps(data, separators=(",", ":")).encode())
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot write: {exc.strerror}") from None


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _finite(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{value!r} is not a time")
    return float(value)

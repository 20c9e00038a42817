"""The rules service's outbox: every event it decided, kept on disk until the uplink acknowledges it.

SQLite in WAL mode under ``state_dir``. An event is written here before it is sent, deleted when
its Ack arrives, and after a restart whatever is left is sent again, in order, with the same ids
(the uplink drops duplicates by id). ``synchronous=NORMAL``: a commit survives the process being
killed (the WAL is in the page cache), not a power cut; it costs a write, not an fsync, so it stays
on the event loop. Past ``max_bytes`` the oldest events are dropped, and counted.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from contracts import ContractError, Event, decode, encode
from services.rules import metrics

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, path: Path, *, max_bytes: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
            " body BLOB NOT NULL)"
        )
        count, size = self.db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM outbox").fetchone()
        self._count, self._bytes = int(count), int(size)

    def put(self, event: Event) -> None:
        """Stores ``event`` (committed when this returns); an id already here is kept as it is."""
        body = encode(event)
        cursor = self.db.execute("INSERT OR IGNORE INTO outbox (id, body) VALUES (?, ?)", (event.id, body))
        if cursor.rowcount:
            self._count += 1
            self._bytes += len(body)
            if self._bytes > self.max_bytes:
                self._drop_oldest()

    def after(self, seq: int, limit: int = 100) -> list[tuple[int, Event]]:
        """Up to ``limit`` events stored after ``seq``, oldest first."""
        rows = self.db.execute("SELECT seq, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        events = []
        for row_seq, body in rows.fetchall():
            try:
                events.append((row_seq, decode(body, Event)))
            except ContractError as exc:  # stored by an older version under looser rules: cannot be sent
                log.error("event in the outbox no longer decodes; dropped", extra={"seq": row_seq, "error": str(exc)})
                metrics.OUTBOX_DROPPED.labels("invalid").inc()
                self._delete("seq = ?", [(row_seq,)])
        return events

    def acked(self, ids: Iterable[str]) -> None:
        self._delete("id = ?", [(event_id,) for event_id in ids])

    def _delete(self, where: str, keys: list[tuple[object]]) -> None:
        if not keys:
            return
        self.db.execute("BEGIN")
        for key in keys:
            row = self.db.execute(f"DELETE FROM outbox WHERE {where} RETURNING LENGTH(body)", key).fetchone()
            if row is not None:
                self._count -= 1
                self._bytes -= int(row[0])
        self.db.execute("COMMIT")

    def _drop_oldest(self) -> None:
        dropped = 0
        while self._bytes > self.max_bytes:
            row = self.db.execute("SELECT seq FROM outbox ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                break
            self._delete("seq = ?", [row])
            dropped += 1
        metrics.OUTBOX_DROPPED.labels("full").inc(dropped)
        log.warning("outbox full: oldest events dropped", extra={"dropped": dropped, "max_bytes": self.max_bytes})

    def __len__(self) -> int:
        """Events stored (kept in memory: still answers after ``close``)."""
        return self._count

    def close(self) -> None:
        self.db.close()

"""The rules service's outbox: every event it decided, kept on disk until the uplink acknowledges it.

SQLite in WAL mode under ``state_dir``. An event is written here before it is sent, deleted when
its Ack arrives (or a refusal: the uplink will never take it), and after a restart whatever is left
is sent again, in order, with the same ids (the uplink drops duplicates by id). ``synchronous=NORMAL``:
a commit survives the process being killed (the WAL is in the page cache), not a power cut; it costs
a write, not an fsync, so it stays on the event loop. Room is made before each insert: past
``max_bytes`` on disk (its ``-wal`` file included) the oldest events are dropped, counted, and logged
once a minute with the count.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from common.files import bound_wal, private_sqlite
from common.logging import DropTally
from contracts import ContractError, Event, decode, encode
from services.rules import metrics

__all__ = ["Outbox"]

log = logging.getLogger(__name__)


class Outbox:
    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(private_sqlite(path), isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.budget = max(max_bytes - bound_wal(self.db, max_bytes), max_bytes // 2)  # for the events themselves
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT UNIQUE NOT NULL,"
            " body BLOB NOT NULL)"
        )
        self.page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        self._count = int(self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
        self.drops = DropTally(log, "outbox full: oldest events dropped", ("events",), max_bytes=max_bytes)

    def put(self, event: Event) -> None:
        """Stores ``event`` (committed when this returns); an id already here is kept as it is."""
        body = encode(event)
        self._make_room(len(body) + len(event.id))
        cursor = self.db.execute("INSERT OR IGNORE INTO outbox (id, body) VALUES (?, ?)", (event.id, body))
        self._count += cursor.rowcount

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

    def refused(self, ids: Iterable[str]) -> None:
        """Events the uplink refused for good (a negative acknowledgement): deleted, never sent again."""
        self._delete("id = ?", [(event_id,) for event_id in ids])

    def _delete(self, where: str, keys: list[tuple[object]]) -> None:
        if not keys:
            return
        self.db.execute("BEGIN")
        for key in keys:
            self._count -= self.db.execute(f"DELETE FROM outbox WHERE {where}", key).rowcount
        self.db.execute("COMMIT")

    def _size(self) -> int:
        """Bytes the stored events take in the file: its pages in use (free ones are reused first)."""
        pages, free = (self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count"))
        return int((pages - free) * self.page_size)

    def _make_room(self, incoming: int) -> None:
        """Drops the oldest events, in one transaction, until ``incoming`` more bytes fit the budget."""
        excess = self._size() + incoming - self.budget
        if excess <= 0:
            return
        doomed: list[tuple[object]] = []
        last = -1
        while excess > 0:
            rows = self.db.execute(
                "SELECT seq, LENGTH(body) + LENGTH(id) FROM outbox WHERE seq > ? ORDER BY seq LIMIT 256", (last,)
            ).fetchall()
            if not rows:
                break
            for seq, size in rows:
                if excess <= 0:
                    break
                doomed.append((seq,))
                excess -= int(size)
            last = rows[-1][0]
        if not doomed:
            return
        self._delete("seq = ?", doomed)
        metrics.OUTBOX_DROPPED.labels("full").inc(len(doomed))
        self.drops.add("events", len(doomed))
        self.drops.flush()

    def __len__(self) -> int:
        """Events stored (kept in memory: still answers after ``close``)."""
        return self._count

    def close(self) -> None:
        self.db.close()

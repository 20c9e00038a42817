"""The console's own event history: an SQLite index plus one JPEG file per snapshot, under
``state_dir/console``, pruned by age (``retention_days``) and size (``max_mb``).

It is a view for people, not the record: the uplink's delivery is the record. So it is written with
``synchronous=NORMAL`` and an event missed while the console was down is simply not in it.
Every method blocks (SQLite, files): the service calls them on a worker thread; one lock serialises them.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from common.events import event_dict
from contracts import Event

__all__ = ["EventHistory", "EventQuery"]

NS_PER_DAY = 86_400 * 10**9


@dataclasses.dataclass(frozen=True)
class EventQuery:
    camera: str | None = None
    rule: str | None = None
    event_type: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    before: tuple[int, int] | None = None  # (ts_ns, row) of the last event of the previous page
    limit: int = 50


class EventHistory:
    def __init__(self, folder: Path, *, retention_days: float, max_mb: int) -> None:
        self.folder = folder
        self.snapshots = folder / "snapshots"
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.retention_ns = int(retention_days * NS_PER_DAY)
        self.max_bytes = max_mb << 20
        self._lock = threading.Lock()
        self.db = sqlite3.connect(folder / "events.sqlite", check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(
            """
            CREATE TABLE IF NOT EXISTS events (
                row INTEGER PRIMARY KEY AUTOINCREMENT,
                id TEXT UNIQUE NOT NULL,
                ts_ns INTEGER NOT NULL,
                camera TEXT NOT NULL,
                rule TEXT NOT NULL,
                event_type TEXT NOT NULL,
                body TEXT NOT NULL,
                snapshot TEXT,
                size INTEGER NOT NULL
            );
            CREATE INDEX IF NOT EXISTS events_by_time ON events (ts_ns DESC, row DESC);
            CREATE INDEX IF NOT EXISTS events_by_camera ON events (camera, ts_ns DESC);
            """
        )

    def add(self, events: list[Event]) -> int:
        """Stores events not stored yet (a resent event has the same id); returns how many were new."""
        added = 0
        with self._lock:
            for event in events:
                if self.db.execute("SELECT 1 FROM events WHERE id = ?", (event.id,)).fetchone():
                    continue
                snapshot_name = None
                size = 0
                if event.snapshot is not None and event.snapshot.content_type == "image/jpeg":
                    snapshot_name = f"{event.id}.jpg"
                    (self.snapshots / snapshot_name).write_bytes(event.snapshot.data)
                    size += len(event.snapshot.data)
                body = json.dumps(event_dict(event))
                size += len(body)
                with self.db:
                    self.db.execute(
                        "INSERT INTO events (id, ts_ns, camera, rule, event_type, body, snapshot, size)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (event.id, event.ts_ns, event.camera, event.rule, event.event_type, body, snapshot_name, size),
                    )
                added += 1
        return added

    def query(self, query: EventQuery) -> tuple[list[dict[str, Any]], tuple[int, int] | None]:
        """Events newest first, and the cursor of the next page (None at the end)."""
        where: list[str] = []
        args: list[str | int] = []
        for column, value in (("camera", query.camera), ("rule", query.rule), ("event_type", query.event_type)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.since_ns is not None:
            where.append("ts_ns >= ?")
            args.append(query.since_ns)
        if query.until_ns is not None:
            where.append("ts_ns < ?")
            args.append(query.until_ns)
        if query.before is not None:
            where.append("(ts_ns < ? OR (ts_ns = ? AND row < ?))")
            args.extend([query.before[0], query.before[0], query.before[1]])
        sql = "SELECT row, ts_ns, body, snapshot FROM events"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts_ns DESC, row DESC LIMIT ?"
        with self._lock:
            rows = self.db.execute(sql, (*args, query.limit + 1)).fetchall()
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        events = [self._answer(body, snapshot) for _, _, body, snapshot in rows]
        cursor = (rows[-1][1], rows[-1][0]) if more and rows else None
        return events, cursor

    def get(self, event_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self.db.execute("SELECT body, snapshot FROM events WHERE id = ?", (event_id,)).fetchone()
        return None if row is None else self._answer(*row)

    def snapshot(self, event_id: str) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT snapshot FROM events WHERE id = ?", (event_id,)).fetchone()
            if row is None or row[0] is None:
                return None
            try:
                return (self.snapshots / str(row[0])).read_bytes()
            except FileNotFoundError:
                return None

    def facets(self) -> dict[str, list[str]]:
        """The cameras, rules and event types present: the events page's filter choices."""
        with self._lock:
            return {
                column: [value for (value,) in self.db.execute(f"SELECT DISTINCT {column} FROM events ORDER BY 1")]
                for column in ("camera", "rule", "event_type")
            }

    def prune(self, now_ns: int | None = None) -> int:
        """Deletes events past ``retention_days``, then the oldest until the history fits ``max_mb``;
        their snapshot files go with them. Returns how many were deleted."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        with self._lock:
            doomed = self.db.execute(
                "SELECT row, snapshot FROM events WHERE ts_ns < ?", (now_ns - self.retention_ns,)
            ).fetchall()
            (total,) = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM events").fetchone()
            total -= sum(self._size(row) for row, _ in doomed)
            if total > self.max_bytes:
                doomed_rows = {row for row, _ in doomed}
                for row, snapshot, size in self.db.execute(
                    "SELECT row, snapshot, size FROM events ORDER BY ts_ns, row"
                ).fetchall():
                    if total <= self.max_bytes:
                        break
                    if row not in doomed_rows:
                        doomed.append((row, snapshot))
                        total -= size
            with self.db:
                self.db.executemany("DELETE FROM events WHERE row = ?", [(row,) for row, _ in doomed])
            for _, snapshot in doomed:
                if snapshot is not None:
                    (self.snapshots / snapshot).unlink(missing_ok=True)
        return len(doomed)

    def count(self) -> int:
        with self._lock:
            (count,) = self.db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _size(self, row: int) -> int:
        found = self.db.execute("SELECT size FROM events WHERE row = ?", (row,)).fetchone()
        return int(found[0]) if found else 0

    @staticmethod
    def _answer(body: str, snapshot: str | None) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(body)
        event["snapshot_url"] = f"/api/events/{event['id']}/snapshot.jpg" if snapshot else None
        return event

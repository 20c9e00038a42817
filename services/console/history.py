"""The console's own event history: an SQLite index plus one JPEG file per snapshot, under
``state_dir/console``, pruned by age (``retention_days``) every minute and kept to its size
(``max_mb``: the index, its ``-wal`` file and the snapshots on disk) as each event is added, oldest
first. Folders are 0700 and files 0600 (``common.files``).

It is a view for people, not the record: the uplink's delivery is the record. So it is written with
``synchronous=NORMAL`` and an event missed while the console was down is simply not in it.
Every method blocks (SQLite, files): the service calls them on a worker thread; one lock serialises them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from common.events import event_dict
from common.files import bound_wal, private_dir, private_sqlite, write_private
from contracts import Event
from services.console import metrics

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
        self.folder = private_dir(folder)
        self.snapshots = private_dir(folder / "snapshots")
        self.retention_ns = int(retention_days * NS_PER_DAY)
        self.max_bytes = max_mb << 20
        self._lock = threading.Lock()
        self.db = sqlite3.connect(private_sqlite(folder / "events.sqlite"), check_same_thread=False)
        self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new index gives freed pages back to the disk
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.budget = max(self.max_bytes - bound_wal(self.db, self.max_bytes), self.max_bytes // 2)
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
        self.page_size = int(self.db.execute("PRAGMA page_size").fetchone()[0])
        (self._snapshot_bytes,) = self.db.execute(
            "SELECT COALESCE(SUM(size - LENGTH(body)), 0) FROM events WHERE snapshot IS NOT NULL"
        ).fetchone()

    def add(self, events: list[Event]) -> int:
        """Stores events not stored yet (a resent event has the same id); returns how many were new."""
        added = 0
        with self._lock:
            for event in events:
                if self.db.execute("SELECT 1 FROM events WHERE id = ?", (event.id,)).fetchone():
                    continue
                body = json.dumps(event_dict(event))
                picture = None
                if event.snapshot is not None and event.snapshot.content_type == "image/jpeg":
                    picture = event.snapshot.data
                if picture is not None and len(picture) + len(body) > self.budget // 2:
                    picture = None  # one snapshot may not push out half the history
                size = len(body) + len(picture or b"")
                metrics.EVENTS_PRUNED.inc(self._make_room(size))  # before the insert: never past max_mb
                snapshot_name = None
                if picture is not None:
                    snapshot_name = f"{event.id}.jpg"
                    write_private(self.snapshots / snapshot_name, picture)
                    self._snapshot_bytes += len(picture)
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
                "SELECT row, snapshot, size FROM events WHERE ts_ns < ?", (now_ns - self.retention_ns,)
            ).fetchall()
            self._forget(doomed)
            return len(doomed) + self._make_room(0)

    def count(self) -> int:
        with self._lock:
            (count,) = self.db.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(count)

    def close(self) -> None:
        with self._lock:
            self.db.close()

    def _used(self) -> int:
        """Bytes on disk: the snapshots and the index's pages in use (a ``-wal`` file is kept out of the budget)."""
        pages, free = (self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "freelist_count"))
        return int(self._snapshot_bytes + (pages - free) * self.page_size)

    def _make_room(self, incoming: int) -> int:
        """Deletes the oldest events until ``incoming`` more bytes fit ``max_mb``; returns how many."""
        excess = self._used() + incoming - self.budget
        removed = 0
        while excess > 0:
            rows = self.db.execute("SELECT row, snapshot, size FROM events ORDER BY ts_ns, row LIMIT 256").fetchall()
            doomed = []
            for row in rows:
                if excess <= 0:
                    break
                doomed.append(row)
                excess -= int(row[2])
            if not doomed:
                break
            self._forget(doomed)
            removed += len(doomed)
        if removed:
            self.db.execute("PRAGMA incremental_vacuum")  # the freed pages back to the disk
        return removed

    def _forget(self, doomed: list[tuple[int, str | None, int]]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM events WHERE row = ?", [(row,) for row, _, _ in doomed])
        for _, snapshot, _ in doomed:
            if snapshot is not None:
                path = self.snapshots / snapshot
                with contextlib.suppress(FileNotFoundError):
                    self._snapshot_bytes -= path.stat().st_size
                    path.unlink()

    @staticmethod
    def _answer(body: str, snapshot: str | None) -> dict[str, Any]:
        event: dict[str, Any] = json.loads(body)
        event["snapshot_url"] = f"/api/events/{event['id']}/snapshot.jpg" if snapshot else None
        return event

"""The durable spool in front of every sink: SQLite in WAL mode.

An event is acknowledged to the rules service only after the transaction that stores it has
committed (with ``fsync: always``/``batch``: ``synchronous=FULL``, so it survives a power cut), and
leaves only when every sink it was meant for has confirmed it. Each sink has its own queue of
deliveries, so a sink that is down holds back nobody else. An event a sink can never take (its far
side refuses it, or it no longer decodes) moves to ``dead_letters``, so that it blocks nothing.
Snapshots are stored apart from the event body, so that on overflow the events of ``external`` rules
go first (oldest first: an integrator's, flagged at store time), then dead letters, then snapshots, then
the oldest events; an external event never costs anything else (one that does not fit once the older
ones are gone is not stored), so no sender of external events can push out the rules service's
acknowledged events while a sink is down. Room is made before a batch is stored, so the files on disk (the
``-wal`` file included, see ``common.files.bound_wal``) stay within ``max_bytes``. Whatever is
dropped is counted, and logged once a minute with the counts.

Idempotent by id: every id stored is remembered (table ``seen``) for ``REMEMBER_S``, about
``remembered`` ids of the rules service (and audit) and as many of external rules, each class bounded on its
own (oldest forgotten first once a tenth over; an id still held is never forgotten), across restarts,
with the digest of the event it was stored for (:func:`digest`). The same id again with the same
digest is a *duplicate*: not stored, so not delivered, again; its sender is acknowledged all the same
(it is safe). The same id with another digest is a *conflict*: never stored (the first event keeps the
id; its sender is refused). An id remembered without a digest (a spool written before digests were
kept) is a duplicate.

Every method may run on a worker thread (a ``synchronous=FULL`` commit waits for the disk, which the
event loop must not): one lock serialises them on the one connection.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import msgspec

from common.files import bound_wal, private_sqlite, truncate_wal
from common.logging import DropTally
from contracts import ContractError, Event, decode, encode
from services.uplink import metrics

__all__ = ["Outcome", "Spool", "Spooled", "digest"]

log = logging.getLogger(__name__)
REMEMBER_S = 24 * 3600.0  # how long a stored id is still known as a duplicate, delivered or not
Result = TypeVar("Result")
Outcome = Literal["new", "duplicate", "conflict"]  # what ``store`` made of an event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    body BLOB NOT NULL,          -- the event without its snapshot (msgpack)
    snapshot BLOB,               -- JPEG bytes, dropped first when the spool is full
    created REAL NOT NULL,
    s3_key TEXT,                 -- set once the snapshot is uploaded
    external INTEGER NOT NULL DEFAULT 0  -- 1: an event of an external rule, dropped first on overflow
);
CREATE TABLE IF NOT EXISTS deliveries (
    sink TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES events(seq) ON DELETE CASCADE,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (sink, seq)
);
CREATE TABLE IF NOT EXISTS cursors (
    name TEXT PRIMARY KEY,       -- a followed file (the audit trail): how far it has been spooled
    inode INTEGER NOT NULL,
    offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS seen (
    n INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: the oldest is forgotten first
    id TEXT UNIQUE NOT NULL,              -- an event id stored once: the same id again is a duplicate
    stored REAL NOT NULL,
    digest BLOB,                          -- digest() of the event stored; NULL: remembered by an older spool
    external INTEGER NOT NULL DEFAULT 0   -- 1: an external rule's (remembered within a bound of its own)
);
CREATE INDEX IF NOT EXISTS seen_stored ON seen (stored);
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT NOT NULL,
    sink TEXT NOT NULL,          -- the sink that refused it; "*" when the stored event no longer decodes
    reason TEXT NOT NULL,
    body BLOB NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (id, sink)
);
"""

# columns added since the schema's first version: (table, column, declaration), added where missing
_ADDED_COLUMNS = (
    ("seen", "digest", "BLOB"),
    ("seen", "external", "INTEGER NOT NULL DEFAULT 0"),
    ("events", "external", "INTEGER NOT NULL DEFAULT 0"),
)
_NOT_HELD = "NOT EXISTS (SELECT 1 FROM events WHERE events.id = seen.id)"


def digest(event: Event) -> bytes:
    """What an id is remembered with: sha256 of the event as decoded, re-encoded (so key order and
    the like do not matter), before the privacy guard (a guard that changes with the site file would
    make a resend a conflict)."""
    return hashlib.sha256(encode(event)).digest()


def _locked(method: Callable[..., Result]) -> Callable[..., Result]:
    @functools.wraps(method)
    def wrapper(self: Spool, *args: Any, **kwargs: Any) -> Result:
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


@dataclasses.dataclass(frozen=True)
class Spooled:
    """An event as a sink's queue hands it out: ``seq`` orders the queue and names it to ``done``."""

    seq: int
    event: Event  # with its snapshot, if it still has one
    s3_key: str | None


class Spool:
    def __init__(self, path: Path, *, max_bytes: int, fsync: str = "batch") -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.lock = threading.RLock()
        self.db = sqlite3.connect(private_sqlite(path), isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'OFF' if fsync == 'never' else 'FULL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.budget = max(max_bytes - bound_wal(self.db, max_bytes), max_bytes // 2)  # for the events themselves
        self.db.executescript(_SCHEMA)
        # a spool made by an older version: its ids without digests (duplicates whatever comes), what it holds
        # the rules service's (and audit)
        for table, column, declaration in _ADDED_COLUMNS:
            if column not in {row[1] for row in self.db.execute(f"PRAGMA table_info({table})")}:
                self.db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self.db.execute("CREATE INDEX IF NOT EXISTS seen_class ON seen (external, n)")
        self.db.execute("CREATE INDEX IF NOT EXISTS events_external ON events (seq) WHERE external = 1")
        # one id per 2 kB of quota (a row and its indexes take a few hundred bytes), 1000 to 100 000
        self.remembered = max(1000, min(100_000, max_bytes // 2000))
        # ids remembered per class (0: the rules service's and audit, 1: external rules'): each class keeps
        # ``remembered`` of its own, so a flood of external events cannot make the uplink forget rules' ids
        self.seen_count = dict.fromkeys((0, 1), 0)
        for external, count in self.db.execute("SELECT external, COUNT(*) FROM seen GROUP BY external"):
            self.seen_count[int(external)] = int(count)
        self.drops = DropTally(
            log, "spool full: dropped to make room", ("events", "snapshots", "external_events"), max_bytes=max_bytes
        )

    @_locked
    def add(
        self,
        events: Sequence[Event],
        sinks_for: Mapping[str, Iterable[str]],
        position: tuple[str, int, int] | None = None,
    ) -> int:
        """:meth:`store`, with each event's own digest; returns how many were new."""
        return sum(outcome == "new" for outcome in self.store(events, sinks_for, position))

    @_locked
    def store(
        self,
        events: Sequence[Event],
        sinks_for: Mapping[str, Iterable[str]],
        position: tuple[str, int, int] | None = None,
        digests: Sequence[bytes] | None = None,
        external: Sequence[bool] | None = None,
    ) -> list[Outcome]:
        """Stores ``events`` in one transaction, each with a delivery per sink in ``sinks_for[id]``;
        ``position`` (name, inode, offset) moves a followed file's position in the same transaction.
        ``digests[i]`` is ``events[i]``'s :func:`digest` as it came (the uplink stores it guarded);
        without them, each event's own. ``external[i]``: ``events[i]`` names a rule of type external
        (dropped first on overflow); without it, none does.

        Returns, per event, ``new`` (stored), ``duplicate`` (its id is held or remembered with the same
        digest, or with none) or ``conflict`` (held or remembered with another digest): neither is stored.
        """
        if digests is None:
            digests = [digest(event) for event in events]
        if external is None:
            external = [False] * len(events)
        assert len(digests) == len(events) == len(external)
        outcomes: list[Outcome] = []
        now = time.time()
        with self._transaction():
            if position is not None:
                self.db.execute("INSERT OR REPLACE INTO cursors (name, inode, offset) VALUES (?, ?, ?)", position)
            # an id still held is never forgotten: else the next event with that id would take it anew
            # (a flood of fresh ids while a sink is down must not turn a conflict into a duplicate)
            for kind in self.seen_count:
                old = self.db.execute(
                    "DELETE FROM seen WHERE external = ? AND stored < ? AND " + _NOT_HELD, (kind, now - REMEMBER_S)
                )
                self.seen_count[kind] -= old.rowcount
            for event, event_digest, is_external in zip(events, digests, external, strict=True):
                outcome = self._outcome(event.id, event_digest)
                outcomes.append(outcome)
                if outcome == "new":
                    self._insert(event, event_digest, sinks_for[event.id], now, external=is_external)
            self._forget_past_bound()
            self._make_room(0)  # the estimate was short (page overhead)
        truncate_wal(self.db, self.path, self.max_bytes)
        self.drops.flush()
        return outcomes

    def _insert(self, event: Event, event_digest: bytes, sinks: Iterable[str], now: float, *, external: bool) -> None:
        snapshot = event.snapshot.data if event.snapshot is not None else None
        body = encode(event if snapshot is None else _with_image(event, b""))
        # room first, event by event: pages freed in this transaction are reused by the next insert,
        # so the file never grows past the quota, even for a batch bigger than it
        if not self._make_room(len(body) + len(snapshot or b""), external=external):
            metrics.DROPPED.labels("spool", "external_event").inc()
            self.drops.add("external_events")
            return  # not remembered either: its row in seen would be room taken from the rules service
        self.db.execute(
            "INSERT INTO seen (id, stored, digest, external) VALUES (?, ?, ?, ?)",
            (event.id, now, event_digest, int(external)),
        )
        self.seen_count[int(external)] += 1
        cursor = self.db.execute(
            "INSERT INTO events (id, body, snapshot, created, external) VALUES (?, ?, ?, ?, ?)",
            (event.id, body, snapshot, now, int(external)),
        )
        self.db.executemany("INSERT INTO deliveries (sink, seq) VALUES (?, ?)", [(s, cursor.lastrowid) for s in sinks])

    def _forget_past_bound(self) -> None:
        """Each class's oldest ids past ``remembered`` (an id still held stays); only once a class is a tenth
        over, so that the index is walked once per many batches, not at each."""
        for kind, count in self.seen_count.items():
            if count > self.remembered * 1.1:
                cut = self.db.execute(
                    "SELECT n FROM seen WHERE external = ? ORDER BY n DESC LIMIT 1 OFFSET ?", (kind, self.remembered)
                ).fetchone()
                if cut is not None:
                    gone = self.db.execute(
                        "DELETE FROM seen WHERE external = ? AND n <= ? AND " + _NOT_HELD, (kind, cut[0])
                    )
                    self.seen_count[kind] -= gone.rowcount

    def _outcome(self, event_id: str, event_digest: bytes) -> Outcome:
        """Remembered (with its digest, or without: an older spool's), or held from before ``seen``
        existed (a spool written by an older version: a duplicate too)."""
        row = self.db.execute("SELECT digest FROM seen WHERE id = ?", (event_id,)).fetchone()
        if row is None:
            held = self.db.execute("SELECT 1 FROM events WHERE id = ?", (event_id,)).fetchone()
            return "new" if held is None else "duplicate"
        return "duplicate" if row[0] is None or row[0] == event_digest else "conflict"

    @_locked
    def remembers(self) -> int:
        """How many ids are remembered as stored (bounded by ``remembered``)."""
        return int(self.db.execute("SELECT COUNT(*) FROM seen").fetchone()[0])

    @_locked
    def cursor(self, name: str) -> tuple[int, int]:
        """(inode, offset) of a followed file; (0, 0) before the first record."""
        row = self.db.execute("SELECT inode, offset FROM cursors WHERE name = ?", (name,)).fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)

    @_locked
    def pending(self, sink: str, limit: int = 100) -> list[Spooled]:
        """The next ``limit`` events for ``sink``, oldest first; one that no longer decodes becomes a dead letter."""
        rows = self.db.execute(
            "SELECT e.seq, e.body, e.snapshot, e.s3_key FROM deliveries d JOIN events e ON e.seq = d.seq"
            " WHERE d.sink = ? ORDER BY d.seq LIMIT ?",
            (sink, limit),
        ).fetchall()
        spooled = []
        for seq, body, snapshot, s3_key in rows:
            try:
                event = decode(body, Event)
            except ContractError as exc:  # spooled by an older version under looser rules
                self._bury_undecodable(seq, body, str(exc))
                continue
            if snapshot is not None and event.snapshot is not None:
                event = _with_image(event, snapshot)
            spooled.append(Spooled(seq, event, s3_key))
        return spooled

    @_locked
    def waiting_among(self, sink: str, seqs: Sequence[int]) -> set[int]:
        """Which of ``seqs`` still wait for ``sink``."""
        marks = ",".join("?" * len(seqs))
        rows = self.db.execute(f"SELECT seq FROM deliveries WHERE sink = ? AND seq IN ({marks})", (sink, *seqs))
        return {int(seq) for (seq,) in rows.fetchall()}

    @_locked
    def set_s3_key(self, seq: int, key: str) -> None:
        with self._transaction():
            self.db.execute("UPDATE events SET s3_key = ? WHERE seq = ?", (key, seq))

    @_locked
    def done(self, sink: str, seqs: Iterable[int], rejected: Mapping[int, str] | None = None) -> None:
        """The sink confirmed ``seqs`` and refused ``rejected`` (seq -> why) for good: forget its
        deliveries, keep the refused as dead letters, and drop events no sink still needs."""
        seqs = list(seqs)
        rejected = dict(rejected or {})
        now = time.time()
        with self._transaction():
            self.db.executemany(
                "INSERT OR REPLACE INTO dead_letters (id, sink, reason, body, created)"
                " SELECT id, ?, ?, body, ? FROM events WHERE seq = ?",
                [(sink, reason[:500], now, seq) for seq, reason in rejected.items()],
            )
            settled = [*seqs, *rejected]
            self.db.executemany("DELETE FROM deliveries WHERE sink = ? AND seq = ?", [(sink, s) for s in settled])
            self.db.executemany(
                "DELETE FROM events WHERE seq = ? AND NOT EXISTS (SELECT 1 FROM deliveries WHERE seq = ?)",
                [(s, s) for s in settled],
            )

    @_locked
    def dead_letters(self) -> list[tuple[str, str, str]]:
        """(event id, sink, reason) of every event no sink will ever take, oldest first."""
        rows = self.db.execute("SELECT id, sink, reason FROM dead_letters ORDER BY created, id").fetchall()
        return [(str(i), str(s), str(r)) for i, s, r in rows]

    def _bury_undecodable(self, seq: int, body: bytes, reason: str) -> None:
        with self._transaction():
            row = self.db.execute("SELECT id FROM events WHERE seq = ?", (seq,)).fetchone()
            self.db.execute(
                "INSERT OR REPLACE INTO dead_letters (id, sink, reason, body, created) VALUES (?, '*', ?, ?, ?)",
                (row[0] if row else str(seq), reason[:500], body, time.time()),
            )
            self.db.execute("DELETE FROM events WHERE seq = ?", (seq,))
        metrics.DEAD_LETTERS.labels("*").inc()
        log.error("spooled event no longer decodes: moved to dead_letters", extra={"seq": seq, "error": reason})

    @_locked
    def depth(self) -> tuple[int, float]:
        """(events spooled, age in seconds of the oldest); called every second, so drops not yet logged
        are logged here once their minute is up."""
        self.drops.flush()
        count, oldest = self.db.execute("SELECT COUNT(*), MIN(created) FROM events").fetchone()
        return int(count), (time.time() - oldest) if oldest else 0.0

    @_locked
    def size(self) -> int:
        pages, page_size = (self.db.execute(f"PRAGMA {p}").fetchone()[0] for p in ("page_count", "page_size"))
        freelist = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - freelist) * page_size)

    def _make_room(self, incoming: int, *, external: bool = False) -> bool:
        """Inside the caller's transaction: drops the oldest events of external rules, then dead letters,
        then snapshots, then the oldest events until ``incoming`` more bytes fit the budget (freed pages
        are reused by the next insert). For an ``external`` event only other external events go: False
        when that is not room enough and other events are held (it is not stored)."""
        while self.size() + incoming > self.budget:
            row = self.db.execute("SELECT seq FROM events WHERE external = 1 ORDER BY seq LIMIT 1").fetchone()
            if row is not None:
                self.db.execute("DELETE FROM events WHERE seq = ?", row)
                metrics.DROPPED.labels("spool", "external_event").inc()
                self.drops.add("external_events")
                continue
            if external and self.db.execute("SELECT 1 FROM events LIMIT 1").fetchone() is not None:
                return False  # nothing of the rules service's goes for it (into an empty spool it goes, as any)
            buried = self.db.execute("SELECT rowid FROM dead_letters ORDER BY created LIMIT 1").fetchone()
            if buried is not None:
                self.db.execute("DELETE FROM dead_letters WHERE rowid = ?", buried)
                continue
            row = self.db.execute("SELECT seq FROM events WHERE snapshot IS NOT NULL ORDER BY seq LIMIT 1").fetchone()
            if row is not None:
                self.db.execute("UPDATE events SET snapshot = NULL WHERE seq = ?", row)
                metrics.DROPPED.labels("spool", "snapshot").inc()
                self.drops.add("snapshots")
                continue
            oldest = self.db.execute("SELECT seq FROM events ORDER BY seq LIMIT 1").fetchone()
            if oldest is None:
                return True  # nothing left to drop: a single event bigger than the quota is stored all the same
            self.db.execute("DELETE FROM events WHERE seq = ?", oldest)
            metrics.DROPPED.labels("spool", "event").inc()
            self.drops.add("events")
        return True

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    @_locked
    def close(self) -> None:
        self.db.close()


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")


def _with_image(event: Event, data: bytes) -> Event:
    """``event`` with its snapshot's bytes replaced (``b""``: stored apart, or dropped)."""
    assert event.snapshot is not None
    return msgspec.structs.replace(event, snapshot=msgspec.structs.replace(event.snapshot, data=data))

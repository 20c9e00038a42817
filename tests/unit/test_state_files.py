"""State on disk (issue #23): private folders and files (common.files), and stores that keep to their
quota when they are written, their SQLite side files included, and say what they dropped."""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from common import files
from contracts import Event, Snapshot, TrackedObject
from services.console.history import EventHistory
from services.rules.outbox import Outbox
from services.uplink.spool import Spool

MB = 1 << 20


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def event(index: int, picture: bytes | None = None, pad: int = 0) -> Event:
    return Event(
        id=f"evt-{index:06d}",
        event_type="line_cross",
        site="test",
        camera="dock",
        rule="door",
        ts_ns=time.time_ns() + index,
        object=TrackedObject(track_id=index, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
        attributes={"pad": "x" * pad} if pad else {},
        snapshot=None if picture is None else Snapshot(width=2, height=2, data=picture),
    )


def on_disk(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def test_private_folders_are_made_and_tightened_but_not_shared_ones(tmp_path: Path, umask_022: None) -> None:
    made = files.private_dir(tmp_path / "a" / "b")
    assert mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    assert mode(files.private_dir(loose)) == 0o700
    named = tmp_path / "named"
    named.mkdir(mode=0o755)
    assert mode(files.private_dir(named, tighten=False)) == 0o755  # a folder the operator named
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert mode(files.private_dir(sticky)) == 0o1777  # like /tmp: shared on purpose


def test_private_files_are_made_0600_tightened_and_never_followed(tmp_path: Path, umask_022: None) -> None:
    with files.private_open(tmp_path / "events.jsonl") as out:
        out.write(b"{}\n")
    assert mode(tmp_path / "events.jsonl") == 0o600
    old = tmp_path / "old.jsonl"
    old.write_text("{}\n")
    old.chmod(0o644)
    with files.private_open(old, "a") as out:
        out.write("{}\n")
    assert mode(old) == 0o600 and old.read_text() == "{}\n{}\n"
    files.write_private(tmp_path / "snapshot.jpg", b"jpeg")
    assert mode(tmp_path / "snapshot.jpg") == 0o600
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError, match="Too many levels of symbolic links"):  # O_NOFOLLOW
        files.private_open(tmp_path / "link")
    assert not (tmp_path / "elsewhere").exists()


def test_sqlite_side_files_left_loose_are_tightened(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "state" / "spool.sqlite"
    path.parent.mkdir(mode=0o755)
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    sides = [path, path.with_name("spool.sqlite-wal"), path.with_name("spool.sqlite-shm")]
    assert all(mode(side) == 0o644 for side in sides)  # as an older version left them
    files.private_sqlite(path)
    try:
        assert [mode(side) for side in [path.parent, *sides]] == [0o700, 0o600, 0o600, 0o600]
    finally:
        db.close()  # the last connection's close removes the side files


def test_new_sqlite_side_files_take_the_database_mode(tmp_path: Path, umask_022: None) -> None:
    spool = Spool(tmp_path / "state" / "uplink-spool.sqlite", max_bytes=MB)
    spool.add([event(1)], {"evt-000001": ["jsonl"]})
    try:
        modes = {path.name: mode(path) for path in (tmp_path / "state").iterdir()}
    finally:
        spool.close()
    assert modes == {"uplink-spool.sqlite": 0o600, "uplink-spool.sqlite-wal": 0o600, "uplink-spool.sqlite-shm": 0o600}


def test_the_outbox_keeps_to_its_quota_on_disk_and_logs_drops_once_a_minute(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "rules-outbox.sqlite", max_bytes=MB)
    with caplog.at_level(logging.WARNING, logger="services.rules.outbox"):
        for index in range(4000):  # ~4 MB of events
            outbox.put(event(index, pad=900))
    try:
        assert on_disk(tmp_path) <= 1.1 * MB, f"{on_disk(tmp_path) / MB:.1f} MB"
        assert 500 < len(outbox) < 4000
        assert outbox.after(0, 1)[0][1].id != "evt-000000"  # the oldest went first
    finally:
        outbox.close()
    full = [r for r in caplog.records if r.getMessage() == "outbox full: oldest events dropped"]
    assert len(full) == 1 and getattr(full[0], "events", 0) >= 1  # once a minute, with the count


def test_the_spool_keeps_to_its_quota_even_for_a_batch_bigger_than_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "uplink-spool.sqlite", max_bytes=MB)
    picture = os.urandom(20 * 1024)
    with caplog.at_level(logging.WARNING, logger="services.uplink.spool"):
        for batch in range(3):
            events = [event(batch * 200 + index, picture) for index in range(200)]  # 4 MB in one transaction
            spool.add(events, {e.id: ["mqtt"] for e in events})
            assert on_disk(tmp_path) <= 1.1 * MB, f"{on_disk(tmp_path) / MB:.1f} MB after batch {batch}"
    try:
        assert spool.depth()[0] == 600  # snapshots went, the events stayed
    finally:
        spool.close()
    full = [r for r in caplog.records if r.getMessage() == "spool full: dropped to make room"]
    assert len(full) == 1 and getattr(full[0], "snapshots", 0) >= 1 and getattr(full[0], "events", None) == 0


def test_the_console_history_keeps_to_max_mb_as_events_arrive(tmp_path: Path, umask_022: None) -> None:
    history = EventHistory(tmp_path / "console", retention_days=30, max_mb=1)
    picture = os.urandom(64 * 1024)
    try:
        for index in range(60):  # ~4 MB of snapshots, no prune in between
            history.add([event(index, picture)])
            assert on_disk(tmp_path) <= 1.1 * MB, f"{on_disk(tmp_path) / MB:.1f} MB after {index + 1} events"
        newest = history.get("evt-000059")
        assert newest is not None and newest["snapshot_url"] and history.snapshot("evt-000059") == picture
        assert history.get("evt-000000") is None  # the oldest went first
        for index in range(60, 2060):  # events without snapshots: the index itself is bounded too
            history.add([event(index, pad=400)])
        assert on_disk(tmp_path) <= 1.1 * MB, f"{on_disk(tmp_path) / MB:.1f} MB"
    finally:
        history.close()
    paths = [tmp_path / "console", *(tmp_path / "console").rglob("*")]
    assert all(mode(path) & 0o077 == 0 for path in paths), {str(p): oct(mode(p)) for p in paths}

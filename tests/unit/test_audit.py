"""The audit trail: whole lines from concurrent writers, the one reader, the uplink's follower (once each,
in order) and the console's view (the newest first)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

from common.audit import AuditPosition, AuditTrail, audit_path, read_audit
from services.uplink import metrics
from services.uplink.audit import AUDIT_CAMERA, spool_new_records
from services.uplink.spool import Spool


def _write_many(state: str, writer: int) -> None:
    trail = AuditTrail(state, "site-1", f"writer:{writer}")
    for index in range(200):
        trail.record("model.load", f"model-{writer}", index=index, note="x" * 300)


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    processes = [multiprocessing.Process(target=_write_many, args=(str(tmp_path), w)) for w in range(4)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(30)
    lines = audit_path(tmp_path).read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line whole
    assert len(records) == 800 and len({r["id"] for r in records}) == 800
    for writer in range(4):  # each writer's records in its own order
        mine = [r["detail"]["index"] for r in records if r["actor"] == f"writer:{writer}"]
        assert mine == list(range(200))


def test_the_follower_spools_each_record_once_across_restarts_and_replacements(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, "site-1", "cli:root")
    first = trail.record("model.install", "people", version="2", previous=None, signer="ab12")
    path = audit_path(tmp_path)
    with path.open("ab") as file:
        file.write(b'{"id": "half a rec')  # a writer in the middle of its line: not read yet
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    sinks = lambda events: {e.id: ["jsonl"] for e in events}  # noqa: E731
    assert spool_new_records(path, spool, sinks) == 1
    (spooled,) = spool.pending("jsonl")
    event = spooled.event
    assert (event.id, event.event_type, event.camera, event.rule) == (
        first["id"],
        "audit",
        AUDIT_CAMERA,
        "model.install",
    )
    assert event.attributes == {"actor": "cli:root", "target": "people", "version": "2", "signer": "ab12"}
    assert spool_new_records(path, spool, sinks) == 0  # nothing new: the half line waits

    with path.open("ab") as file:
        file.write(b'ord"}\n')  # the line completes: malformed as a record, skipped and counted
    malformed = metrics.AUDIT_MALFORMED._value.get()
    second = trail.record("console.login", "admin", address="10.0.0.5")
    assert spool_new_records(path, spool, sinks) == 1
    assert metrics.AUDIT_MALFORMED._value.get() == malformed + 1
    spool.close()

    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)  # a restart: the position was committed
    assert spool_new_records(path, spool, sinks) == 0
    copy = path.with_suffix(".copy")
    copy.write_bytes(path.read_bytes())
    os.replace(copy, path)  # replaced by hand (a new inode): read again, ids keep repeats out
    assert spool_new_records(path, spool, sinks) == 2
    assert [s.event.id for s in spool.pending("jsonl")] == [first["id"], second["id"]]
    spool.close()


def test_the_console_shows_the_newest_whole_records_of_an_action(tmp_path: Path, monkeypatch: Any) -> None:
    from services.console import audit_web

    trail = AuditTrail(tmp_path, "site-1", "console:main")
    path = audit_path(tmp_path)
    assert audit_web.recent_records(path, "", 10) == []  # no trail yet
    for index in range(5):
        trail.record("console.login", "admin", index=index)
        trail.record("config.save", "cameras.dock.rules", index=index)
    with path.open("ab") as file:
        file.write(b'[1, 2]\nnot json\n{"action": "console.login", "half": ')  # junk, and a line being written
    newest = audit_web.recent_records(path, "console.", 3)
    assert [(r["action"], r["detail"]["index"]) for r in newest] == [("console.login", i) for i in (4, 3, 2)]
    assert len(audit_web.recent_records(path, "", 100)) == 10

    # a longer trail: only its tail is read, and the first line there (which may be cut) is left out
    monkeypatch.setattr(audit_web, "AUDIT_TAIL_BYTES", path.stat().st_size - 10)
    assert [r["detail"]["index"] for r in audit_web.recent_records(path, "config.", 100)] == [4, 3, 2, 1, 0]
    assert [r["detail"]["index"] for r in audit_web.recent_records(path, "console.", 100)] == [4, 3, 2, 1]


def test_one_reader_for_both_whole_lines_from_a_position(tmp_path: Path) -> None:
    path = audit_path(tmp_path)
    assert read_audit(path, AuditPosition(), 1 << 20) is None
    path.write_bytes(b'{"id": "a"}\n[]\n{"id": "b"}\n{"id": "c"')
    chunk = read_audit(path, AuditPosition(), 1 << 20)
    assert chunk is not None and not chunk.restarted
    lines = list(chunk.lines())
    assert [line.record for line in lines] == [{"id": "a"}, None, {"id": "b"}]
    assert lines[1].error == "expected a JSON object, got list"
    assert chunk.position == AuditPosition(path.stat().st_ino, len(b'{"id": "a"}\n[]\n{"id": "b"}\n'))
    again = read_audit(path, chunk.position, 1 << 20)
    assert again is not None and again.raw == [] and again.position == chunk.position  # the half line waits
    assert [line.record for line in chunk.lines(newest_first=True)] == [{"id": "b"}, None, {"id": "a"}]
    path.write_bytes(b'{"id": "d"}\n')  # cut shorter by hand: read from the start again
    restarted = read_audit(path, chunk.position, 1 << 20)
    assert restarted is not None and restarted.restarted and restarted.raw == [b'{"id": "d"}']


def test_the_follower_counts_a_line_that_is_no_object_and_goes_on(tmp_path: Path) -> None:
    trail = AuditTrail(tmp_path, "site-1", "cli:root")
    path = audit_path(tmp_path)
    with path.open("ab") as file:
        file.write(b"[1, 2]\n")
    trail.record("model.install", "people", version="2")
    spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
    malformed = metrics.AUDIT_MALFORMED._value.get()
    assert spool_new_records(path, spool, lambda events: {e.id: ["jsonl"] for e in events}) == 1
    assert metrics.AUDIT_MALFORMED._value.get() == malformed + 1
    spool.close()

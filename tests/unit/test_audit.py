"""The audit trail: whole lines from concurrent writers, and the uplink's follower (once each, in order)."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from common.audit import AuditTrail, audit_path
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

"""The audit trail, upstream: the uplink follows ``state_dir/audit.jsonl`` (see common.audit) and
spools each new record as an ``audit`` event.

The position in the file moves in the same transaction that spools the records, so a restart (or a
SIGKILL) resends nothing twice and skips nothing; a record's id makes a repeat harmless anyway. An
audit event is an Event with ``event_type: audit``, ``camera: _site`` (it concerns the site, not a
camera), ``rule`` the action (``model.install``) and ``attributes`` its actor, target and details.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import msgspec

from common.audit import AuditChunk, AuditPosition, read_audit
from contracts import Event
from services.uplink import metrics
from services.uplink.spool import Spool

__all__ = ["AUDIT_CAMERA", "AUDIT_EVENT_TYPE", "POLL_S", "audit_event", "spool_new_records"]

log = logging.getLogger(__name__)

AUDIT_CAMERA = "_site"
AUDIT_EVENT_TYPE = "audit"
CURSOR = "audit"
POLL_S = 1.0
MAX_READ = 1 << 20  # bytes read per round: a long backlog is spooled in several transactions


def audit_event(record: Mapping[str, Any]) -> Event:
    """The event for one audit record; ValueError for a record that does not fit the contract."""
    attributes = {"actor": record.get("actor"), "target": record.get("target"), **(record.get("detail") or {})}
    if record.get("changes"):  # the whole diff stays in the file; upstream gets what one Text holds
        attributes["changes"] = json.dumps(record["changes"], separators=(",", ":"))[:1024]
    document = {
        "type": "event",
        "id": record.get("id"),
        "event_type": AUDIT_EVENT_TYPE,
        "site": record.get("site"),
        "camera": AUDIT_CAMERA,
        "rule": record.get("action"),
        "ts_ns": record.get("ts_ns"),
        "attributes": attributes,
    }
    try:
        return msgspec.convert(document, Event)
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from None


def spool_new_records(path: Path, spool: Spool, targets: Callable[[list[Event]], dict[str, list[str]]]) -> int:
    """Spools the records appended since the last call (at most MAX_READ bytes); how many were read. Blocking."""
    chunk = read_audit(path, AuditPosition(*spool.cursor(CURSOR)), MAX_READ)
    if chunk is None:
        return 0
    if chunk.restarted:  # replaced or truncated by hand: start over (ids keep repeats out)
        log.warning("audit trail replaced; reading it from the start", extra={"path": str(path)})
    if not chunk.raw:
        return 0  # no whole line yet: a record being written is read next round
    events = _events(chunk, path)
    position = (CURSOR, chunk.position.inode, chunk.position.offset)
    added = spool.add(events, targets(events), position=position)
    metrics.AUDIT_SPOOLED.inc(added)  # a record read again (a replaced file) is not spooled twice
    return len(events)


def _events(chunk: AuditChunk, path: Path) -> list[Event]:
    """The chunk's records as events; a line that is no record, or no event, is counted and skipped."""
    events = []
    for line in chunk.lines():
        error = line.error
        if line.record is not None:
            try:
                events.append(audit_event(line.record))
                continue
            except ValueError as exc:
                error = str(exc)
        metrics.AUDIT_MALFORMED.inc()
        log.warning("malformed audit record skipped", extra={"path": str(path), "error": error[:200]})
    return events

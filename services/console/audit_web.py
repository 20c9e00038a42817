"""The audit trail in the console's API (``/api/audit``, shown at ``/audit``): its newest records, of one
kind of action or all. The trail itself, and its reader, are common.audit."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from aiohttp import web

from common.audit import audit_path, read_audit_tail
from services.console.context import CONSOLE, error

__all__ = ["AUDIT_TAIL_BYTES", "ROUTES", "recent_records"]

AUDIT_TAIL_BYTES = 4 << 20  # the newest records: the page shows recent history, the uplink sends it all


def recent_records(path: Path, action: str, limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` records of the audit trail (whose action starts with ``action``), newest first.
    A line that is no record (one being written, or junk: the uplink counts those) is passed over."""
    chunk = read_audit_tail(path, AUDIT_TAIL_BYTES)
    if chunk is None:
        return []
    records: list[dict[str, Any]] = []
    for line in chunk.lines(newest_first=True):
        record = line.record
        if record is not None and str(record.get("action", "")).startswith(action):
            records.append(record)
            if len(records) >= limit:
                break
    return records


async def audit(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        return error(400, "limit: a whole number from 1 to 1000")
    if not 1 <= limit <= 1000:
        return error(400, "limit: a whole number from 1 to 1000")
    path = audit_path(console.config.site.state_dir)
    records = await asyncio.to_thread(recent_records, path, request.query.get("action", ""), limit)
    return web.json_response({"records": records})


ROUTES = [
    ("GET", "/api/audit", audit),
]

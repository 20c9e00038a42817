"""Events as JSON for people and local tools (rules' jsonl and actions, the console's history)."""

from __future__ import annotations

from typing import Any

import msgspec

from contracts import Event

__all__ = ["event_dict"]


def event_dict(event: Event) -> dict[str, Any]:
    """The event as on the bus, in JSON types, with the snapshot's bytes replaced by their size."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if event.snapshot is not None:
        data["snapshot"] = {k: v for k, v in data["snapshot"].items() if k != "data"} | {
            "bytes": len(event.snapshot.data)
        }
    return data

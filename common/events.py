"""An event as JSON: the one function that makes it, for every reader outside the bus.

Two readers want two things of a snapshot, and never its bytes. Local ones (rules' ``events.jsonl``
and actions, the console's history) sit beside the image and are told its size. Upstream ones (the
uplink's sinks) are told where the image went instead: its S3 key once uploaded, and whether the
spool let it go to make room.

    >>> from contracts import Event, Snapshot
    >>> event = Event(id="e1", event_type="zone_enter", site="s", camera="dock", rule="bay", ts_ns=1,
    ...               snapshot=Snapshot(width=2, height=2, data=b"jpeg"))
    >>> event_dict(event)["snapshot"]
    {'content_type': 'image/jpeg', 'width': 2, 'height': 2, 'bytes': 4}
    >>> event_dict(event, upstream=True, s3_key="snaps/e1.jpg")["snapshot"]
    {'content_type': 'image/jpeg', 'width': 2, 'height': 2, 's3_key': 'snaps/e1.jpg', 'dropped': False}
"""

from __future__ import annotations

from typing import Any

import msgspec

from contracts import Event

__all__ = ["event_dict"]


def event_dict(event: Event, *, upstream: bool = False, s3_key: str | None = None) -> dict[str, Any]:
    """The event as on the bus, in JSON types, with the snapshot's bytes replaced: by their size
    (``bytes``), or with ``upstream`` by ``s3_key`` (None until uploaded) and ``dropped`` (the spool
    overflowed and let the image go)."""
    data: dict[str, Any] = msgspec.to_builtins(event)
    if event.snapshot is not None:
        snapshot = {key: value for key, value in data["snapshot"].items() if key != "data"}
        if upstream:
            snapshot |= {"s3_key": s3_key, "dropped": not event.snapshot.data}
        else:
            snapshot["bytes"] = len(event.snapshot.data)
        data["snapshot"] = snapshot
    return data

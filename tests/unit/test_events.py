"""An event as JSON (``common.events``): one function, two views of the snapshot, never its bytes."""

from __future__ import annotations

import json

from common.events import event_dict
from contracts import Event, Snapshot, TrackedObject


def _event(snapshot: Snapshot | None) -> Event:
    return Event(
        id="e1",
        event_type="line_cross",
        site="s",
        camera="dock",
        rule="door",
        ts_ns=1,
        object=TrackedObject(track_id=3, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
        counts={"in": 1, "out": 0},
        snapshot=snapshot,
    )


def test_locally_the_snapshot_says_its_size() -> None:
    data = event_dict(_event(Snapshot(width=4, height=2, data=b"jpeg-bytes")))
    assert data["snapshot"] == {"content_type": "image/jpeg", "width": 4, "height": 2, "bytes": 10}
    assert data["object"]["track_id"] == 3 and data["counts"] == {"in": 1, "out": 0}
    json.dumps(data)  # JSON types only


def test_upstream_the_snapshot_says_where_its_image_went() -> None:
    event = _event(Snapshot(width=4, height=2, data=b"jpeg-bytes"))
    assert json.dumps(event_dict(event, upstream=True, s3_key="snaps/e1.jpg")["snapshot"]) == (
        '{"content_type": "image/jpeg", "width": 4, "height": 2, "s3_key": "snaps/e1.jpg", "dropped": false}'
    )  # the wire as the sinks always sent it, key order included
    assert event_dict(event, upstream=True)["snapshot"]["s3_key"] is None  # not uploaded (yet)
    dropped = _event(Snapshot(width=4, height=2, data=b""))  # the spool let the image go to make room
    assert event_dict(dropped, upstream=True)["snapshot"]["dropped"] is True


def test_an_event_without_a_snapshot_is_the_same_either_way() -> None:
    event = _event(None)
    assert event_dict(event) == event_dict(event, upstream=True) and event_dict(event)["snapshot"] is None

"""What the rules of a camera see of one frame (``Moment``, its ``Observed`` tracks) and what they
decide (``Draft``): the rules' side of the tracker, and the service's of the rules.

Times are seconds on the frame's monotonic clock; wall time only decides schedules and timestamps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

__all__ = ["Draft", "Moment", "Observed"]

Box = tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class Observed:
    """One confirmed track in one frame."""

    track_id: int
    label: str
    score: float
    box: Box
    origin: Box | None = None  # the box the tracker first saw it with
    model: str | None = None  # the model whose detections it is tracked from (rules with ``model:`` ask)


@dataclasses.dataclass(frozen=True)
class Moment:
    t: float  # seconds, monotonic (the frame's)
    wall: dt.datetime  # the frame's wall-clock time in the site's time zone
    tracks: Sequence[Observed]
    gone: Sequence[Observed] = ()  # tracks that ended with this frame (their last state)
    items: Sequence[tuple[str, Box]] = ()  # every detection, of every model: for PPE
    model: str | None = None  # the model whose Detections this frame's tracks come from


@dataclasses.dataclass
class Draft:
    """An event decided by a rule; the service adds id, site, timestamps, frame and snapshot."""

    event_type: str
    lifecycle: str
    rule: str
    track: Observed | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    attributes: dict[str, Any] = dataclasses.field(default_factory=dict)
    start_t: float | None = None

"""What every rule kind shares: ``RuleState`` (one rule's state on one camera) and how the rules
built on a zone (dwell, crowd, PPE, presence) see it (``Zone``, ``ZoneTrack``).

A kind subclasses ``RuleState`` and decides, frame by frame, which drafts its rule makes; the
engine runs zones first, so a rule built on a zone asks it which objects are in it now.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Protocol

from services.rules.moment import Draft, Moment, Observed
from services.rules.schedule import in_schedule

__all__ = ["RuleState", "Zone", "ZoneTrack"]


@dataclasses.dataclass
class ZoneTrack:
    """One object as a zone knows it."""

    inside: bool = False  # settled inside (after the zone's inertia)
    streak: int = 0  # frames in a row on the other side of the zone's edge than ``inside`` says
    entered: float = 0.0  # when it last settled inside
    track: Observed | None = None  # its last state


class Zone(Protocol):
    """A zone as the rules built on it see it (``ZoneState`` is one)."""

    def inside(self) -> dict[int, ZoneTrack]:
        """track id -> the object, for the objects settled inside now."""
        ...


class RuleState:
    """One rule of one camera: its settings and whatever it remembers between frames."""

    def __init__(self, name: str, config: Any) -> None:
        self.name = name
        self.config = config

    def wants(self, track: Observed) -> bool:
        classes = self.config.classes
        return (not classes or track.label in classes) and track.score >= self.config.min_score

    def active(self, moment: Moment) -> bool:
        return in_schedule(self.config.schedule, moment.wall)

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        raise NotImplementedError

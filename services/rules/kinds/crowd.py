"""Crowd rules: ``overcrowded`` once a zone has held ``min_count`` objects for ``seconds``, ``cleared``
when it no longer does (camera-level events: no object)."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import CrowdRule
from services.rules.kinds.base import RuleState, Zone
from services.rules.moment import Draft, Moment

__all__ = ["CrowdState"]


class CrowdState(RuleState):
    config: CrowdRule

    def __init__(self, name: str, config: CrowdRule) -> None:
        super().__init__(name, config)
        self.since: float | None = None
        self.crowded = False
        self.count: int | None = None  # the last frame's count, until taken (``take_count``)

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        tracks = [s.track for s in zones[self.config.zone].inside().values() if s.track and self.wants(s.track)]
        count = self.count = len(tracks)
        counts = {"occupancy": count}
        attributes = {"zone": self.config.zone, "min_count": self.config.min_count}
        if count >= self.config.min_count:
            self.since = moment.t if self.since is None else self.since
            if not self.crowded and moment.t - self.since >= self.config.seconds:
                self.crowded = True
                return [Draft("overcrowded", "new", self.name, None, counts, attributes, self.since)]
        else:
            self.since = None
            if self.crowded:
                self.crowded = False
                return [Draft("cleared", "end", self.name, None, counts, attributes, moment.t)]
        return []

    def take_count(self) -> int | None:
        """The count of the last frame the rule was stepped on, once (None: not stepped since)."""
        count, self.count = self.count, None
        return count

"""PPE rules: a ``ppe_violation`` for a person seen ``min_frames`` without every ``required`` item
(detections of any model overlapping the person's box), once until the items are worn again."""

from __future__ import annotations

from collections.abc import Mapping

from common.config.rules import PpeRule
from services.rules.geometry import overlap_share
from services.rules.kinds.base import RuleState, Zone
from services.rules.moment import Draft, Moment, Observed

__all__ = ["PpeState"]


class PpeState(RuleState):
    config: PpeRule

    def __init__(self, name: str, config: PpeRule) -> None:
        super().__init__(name, config)
        self.missing_frames: dict[int, int] = {}
        self.reported: set[int] = set()

    def wants(self, track: Observed) -> bool:
        return track.label == self.config.person_class and track.score >= self.config.min_score

    def step(self, moment: Moment, zones: Mapping[str, Zone]) -> list[Draft]:
        drafts = []
        people = [t for t in moment.tracks if self.wants(t)]
        if self.config.zone is not None:
            inside = zones[self.config.zone].inside()
            people = [t for t in people if t.track_id in inside]
        for person in people:
            worn = {
                label
                for label, box in moment.items
                if label in self.config.required and overlap_share(box, person.box) >= self.config.overlap
            }
            missing = sorted(set(self.config.required) - worn)
            if not missing:
                self.missing_frames.pop(person.track_id, None)
                self.reported.discard(person.track_id)
                continue
            frames = self.missing_frames[person.track_id] = self.missing_frames.get(person.track_id, 0) + 1
            if frames >= self.config.min_frames and person.track_id not in self.reported:
                self.reported.add(person.track_id)
                attributes = {"missing": ",".join(missing), "zone": self.config.zone}
                drafts.append(Draft("ppe_violation", "new", self.name, person, {}, attributes, moment.t))
        for track in moment.gone:
            self.missing_frames.pop(track.track_id, None)
            self.reported.discard(track.track_id)
        return drafts

"""A camera as the rules service holds it, and its trackers' slots (one tracker per model).

Detections name their model, and anyone on the bus can name any. The models the site names (its
``models:``, the camera's ``models:``, any rule's ``model:``) are reserved: they always get a tracker.
Every other name shares ``MAX_MODELS_PER_CAMERA`` slots; past them its Detections are dropped
(``edgesight_rules_detections_dropped_total{reason="models"}``). Such a model silent past the
tracker's ``max_age_s`` gives its slot up (``evict``, from the sweep of ``services.rules.silence``), so
made-up names cannot hold the slots for good, nor shut out the site's own models at all.
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Iterable

from common.config import CameraConfig, SiteConfig, TrackerConfig
from contracts import Detections, TrackedObject
from services.rules import metrics
from services.rules.engine import CameraRules
from services.rules.labels import KnownLabels, LabelGate, named_labels
from services.rules.moment import Draft
from services.rules.scene import SceneRate, unit_box
from services.rules.tracker import ByteTracker

__all__ = ["MAX_MODELS_PER_CAMERA", "MAX_ZEROED_MODELS", "CameraState", "reserved_models"]

MAX_MODELS_PER_CAMERA = 16  # trackers of models the site does not name, per camera; past it Detections are dropped
MAX_ZEROED_MODELS = 16  # evicted models whose tracks gauge still reads 0, per camera: older ones' series go


def reserved_models(config: SiteConfig, camera: CameraConfig) -> frozenset[str]:
    """The models ``camera`` always tracks: those the site file names anywhere (a rule on another camera
    naming an external detector reserves it here too: a handful of names, all the operator's)."""
    named: Iterable[str | None] = itertools.chain(
        config.models,
        camera.models,
        (rule.model for other in config.cameras.values() for rule in other.rules.values()),
    )
    return frozenset(name for name in named if name)


class CameraState:
    """One camera's trackers (one per model), rules and what the service remembers between frames."""

    def __init__(
        self, name: str, config: CameraConfig, rules: CameraRules, reserved: frozenset[str], hold_s: float = 1.0
    ) -> None:
        self.name = name
        self.config = config
        self.rules = rules
        self.reserved = reserved  # a reload replaces it
        self.labels = LabelGate(name, hold_s, named_labels(config))  # hold_s: the tracker's max_age_s
        self.ids = itertools.count(1)  # shared by this camera's trackers: ids never collide across models
        self.trackers: dict[str, ByteTracker] = {}
        self.last: dict[str, Detections] = {}  # model -> its last Detections: an evicted tracker's end is dated by it
        self.items: dict[str, tuple[float, list[tuple[str, tuple[float, float, float, float]]]]] = {}
        self.zone_labels: dict[str, KnownLabels] = {}  # zone -> labels seen in it (bounded): gauges go back to 0
        # track -> rule -> the object at that rule's last event about it: the "before" of the next one
        self.last_seen: dict[int, dict[str, TrackedObject]] = {}
        self.scene_rate = SceneRate()
        self.zeroed: collections.deque[str] = collections.deque()  # evicted models, oldest first

    def now_and_before(self, draft: Draft) -> tuple[TrackedObject | None, TrackedObject | None]:
        """The draft's object now, and as it was at this rule's last event about it (none for a new one);
        remembers it for the next, and forgets it at the end."""
        track = draft.track
        if track is None:
            return None, None
        box = unit_box(track.box)
        after = TrackedObject(track_id=track.track_id, label=track.label, score=min(1.0, track.score), box=box)
        seen = self.last_seen.setdefault(track.track_id, {})
        before = seen.get(draft.rule) if draft.lifecycle != "new" else None
        if draft.lifecycle == "end":
            seen.pop(draft.rule, None)
        else:
            seen[draft.rule] = after
        return after, before

    def reconfigure(self, config: CameraConfig, rules: CameraRules, reserved: frozenset[str]) -> None:
        """A reload's settings for this camera (its trackers and what they track stay)."""
        self.config, self.rules, self.reserved = config, rules, reserved
        self.labels.reserved = named_labels(config)

    def tracker(self, detections: Detections, config: TrackerConfig) -> ByteTracker | None:
        """The tracker of ``detections``' model, made if it has a slot (and the Detections kept as its
        last); None when every shared slot is taken."""
        model = detections.model
        tracker = self.trackers.get(model)
        if tracker is None:
            if model not in self.reserved and self.unreserved() >= MAX_MODELS_PER_CAMERA:
                return None
            tracker = self.trackers[model] = ByteTracker(config, self.ids)
        self.last[model] = detections
        return tracker

    def unreserved(self) -> int:
        """Trackers in the shared slots (a reload that drops a model's name moves it there)."""
        return sum(1 for model in self.trackers if model not in self.reserved)

    def evict(self, model: str) -> tuple[ByteTracker, Detections] | None:
        """Frees the slot of a model the site does not name, and forgets what was kept for it; returns its
        tracker and last Detections (its tracks still to be ended), or None for a reserved or unknown model."""
        if model in self.reserved or model not in self.trackers:
            return None
        tracker = self.trackers.pop(model)
        last = self.last.pop(model)
        self.items.pop(model, None)
        self.labels.forget(model)
        self.scene_rate.forget(model)
        self.zeroed.append(model)
        while len(self.zeroed) > MAX_ZEROED_MODELS:  # names made up one after another: bounded series
            oldest = self.zeroed.popleft()
            if oldest not in self.trackers and oldest not in self.zeroed:
                try:
                    metrics.ACTIVE_TRACKS.remove(self.name, oldest)
                except KeyError:
                    pass
        return tracker, last

"""The rules of one camera: tracked objects in, event drafts out.

``CameraRules`` builds a state for each rule of the camera's site-file section (``kinds``: one
module a kind), zones first so that dwell, crowd, PPE and presence rules can ask which objects are
in them, steps them every frame while their schedule holds, and lets each object's events through
its rule's cooldown. A reload builds a new one that takes over what did not change (``carry_over``).

Each Moment comes from one model's Detections. A rule with ``model:`` steps only on that model's
moments and, through a zone, sees only that model's objects; a rule without it sees every model's,
so two models detecting the same class count each object once per model: the first time such a rule
sees one label from two models it is logged (once per camera and rule) and counted
(``edgesight_rules_models_overlap_total``). ``external`` rules have no state: another service decides them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from common.config import CameraConfig
from common.config.rules import CrowdRule, DwellRule, LineRule, PpeRule, PresenceRule, Rule, ZoneRule
from services.rules import metrics
from services.rules.cooldown import Cooldown
from services.rules.counts import CountStore
from services.rules.kinds import (
    CrowdState,
    DwellState,
    LineState,
    PpeState,
    PresenceState,
    RuleState,
    Zone,
    ZoneState,
    ZoneTrack,
)
from services.rules.moment import Draft, Moment

__all__ = ["CameraRules"]

log = logging.getLogger(__name__)

MAX_OVERLAP_LABELS = 256  # labels a rule's overlap check remembers (a sender inventing labels stays bounded)


class CameraRules:
    """All rules of one camera, in dependency order, with per-object cooldown."""

    def __init__(self, camera: str, config: CameraConfig, store: CountStore) -> None:
        self.camera = camera
        self.zones: dict[str, ZoneState] = {
            name: ZoneState(name, rule) for name, rule in config.rules.items() if isinstance(rule, ZoneRule)
        }
        self.rules: list[RuleState] = [*self.zones.values()]
        for name, rule in config.rules.items():
            state = _rule_state(name, rule, camera, store)
            if state is not None:
                self.rules.append(state)
        self.cooldown = Cooldown()
        self.models: set[str] = set()  # models seen (the service bounds them): overlap is checked from two on
        self.overlap_seen: dict[str, dict[str, set[str]]] = {}  # rule without model -> label -> models
        self.overlap_warned: set[str] = set()

    def carry_over(self, old: CameraRules) -> list[str]:
        """Takes the state of every rule of ``old`` whose name, kind and settings this one has unchanged
        (objects in zones, lines' sides, dwell timers, cooldowns): a reload restarts only what changed.
        Returns the names of the rules carried over."""
        previous = {rule.name: rule for rule in old.rules}
        kept = []
        for index, rule in enumerate(self.rules):
            before = previous.get(rule.name)
            if before is not None and type(before) is type(rule) and before.config == rule.config:
                self.rules[index] = before
                if isinstance(before, ZoneState):
                    self.zones[rule.name] = before
                kept.append(rule.name)
            elif isinstance(rule, LineState):
                rule.from_now = True
        self.cooldown = old.cooldown
        self.models = old.models
        self.overlap_seen = {name: seen for name, seen in old.overlap_seen.items() if name in kept}
        self.overlap_warned = old.overlap_warned & set(kept)  # a rule changed since is warned about again
        return kept

    def line_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """line rule -> label -> {"in", "out"}: cumulative, as stored."""
        return {
            rule.name: rule.store.of_rule(self.camera, rule.name) for rule in self.rules if isinstance(rule, LineState)
        }

    def step(self, moment: Moment) -> list[Draft]:
        """One frame of one model (``moment.model``): the rules that see that model step on it."""
        if moment.model is not None:
            self.models.add(moment.model)
            if len(self.models) > 1:
                self._check_overlap(moment)
        drafts: list[Draft] = []
        views: Mapping[str, Zone] | None = None
        for rule in self.rules:
            model = rule.config.model
            if model is not None and model != moment.model:
                continue
            if rule.active(moment):
                if model is not None and views is None:
                    views = self._zones_of(model)
                decided = rule.step(moment, self.zones if model is None else views or {})
                drafts.extend(self.cooldown.admit(rule.name, rule.config.cooldown_s, decided, moment.t))
        self.cooldown.forget(moment.gone)
        return drafts

    def _zones_of(self, model: str) -> Mapping[str, Zone]:
        """The zones as a rule with ``model:`` sees them: only that model's objects inside."""
        return {name: _ModelZone(zone, model) for name, zone in self.zones.items()}

    def _check_overlap(self, moment: Moment) -> None:
        """Warns (once per rule) when a rule without ``model:`` sees one label from two models."""
        for rule in self.rules:
            if rule.config.model is not None or rule.name in self.overlap_warned:
                continue
            seen = self.overlap_seen.setdefault(rule.name, {})
            for track in moment.tracks:
                if not rule.wants(track) or (track.label not in seen and len(seen) >= MAX_OVERLAP_LABELS):
                    continue
                models = seen.setdefault(track.label, set())
                models.add(str(moment.model))
                if len(models) > 1:
                    self._warn_overlap(rule.name, track.label, models)
                    break

    def _warn_overlap(self, rule: str, label: str, models: set[str]) -> None:
        self.overlap_warned.add(rule)
        self.overlap_seen.pop(rule, None)
        metrics.MODELS_OVERLAP.labels(self.camera, rule).inc()
        log.warning(
            "a rule without model: sees one label from two models: set `model:` on the rule, or each object "
            "is counted once per model",
            extra={"camera": self.camera, "rule": rule, "label": label, "models": ",".join(sorted(models))},
        )

    def occupancy(self) -> dict[str, dict[str, int]]:
        return {name: zone.occupancy() for name, zone in self.zones.items()}


class _ModelZone:
    """A zone as a rule with ``model:`` sees it: the objects of that model inside."""

    def __init__(self, zone: ZoneState, model: str) -> None:
        self.zone = zone
        self.model = model

    def inside(self) -> dict[int, ZoneTrack]:
        return {
            track_id: state
            for track_id, state in self.zone.inside().items()
            if state.track is not None and state.track.model == self.model
        }


def _rule_state(name: str, rule: Rule, camera: str, store: CountStore) -> RuleState | None:
    """The state of a rule other than a zone; None for a zone (zones are built first: the others read them)
    and for an external rule (another service decides its events)."""
    if isinstance(rule, LineRule):
        return LineState(name, rule, camera, store)
    if isinstance(rule, DwellRule):
        return DwellState(name, rule)
    if isinstance(rule, CrowdRule):
        return CrowdState(name, rule)
    if isinstance(rule, PpeRule):
        return PpeState(name, rule)
    if isinstance(rule, PresenceRule):
        return PresenceState(name, rule)
    return None

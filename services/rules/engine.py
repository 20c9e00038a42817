"""The rules of one camera: tracked objects in, event drafts out.

``CameraRules`` builds a state for each rule of the camera's site-file section (``kinds``: one
module a kind), zones first so that dwell, crowd, PPE and presence rules can ask which objects are
in them, steps them every frame while their schedule holds, and lets each object's events through
its rule's cooldown. A reload builds a new one that takes over what did not change (``carry_over``).
"""

from __future__ import annotations

from common.config import CameraConfig
from common.config.rules import CrowdRule, DwellRule, LineRule, PpeRule, PresenceRule, Rule, ZoneRule
from services.rules.cooldown import Cooldown
from services.rules.counts import CountStore
from services.rules.kinds import (
    CrowdState,
    DwellState,
    LineState,
    PpeState,
    PresenceState,
    RuleState,
    ZoneState,
)
from services.rules.moment import Draft, Moment

__all__ = ["CameraRules"]


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
        return kept

    def line_counts(self) -> dict[str, dict[str, dict[str, int]]]:
        """line rule -> label -> {"in", "out"}: cumulative, as stored."""
        return {
            rule.name: rule.store.of_rule(self.camera, rule.name) for rule in self.rules if isinstance(rule, LineState)
        }

    def step(self, moment: Moment) -> list[Draft]:
        drafts: list[Draft] = []
        for rule in self.rules:
            if rule.active(moment):
                decided = rule.step(moment, self.zones)
                drafts.extend(self.cooldown.admit(rule.name, rule.config.cooldown_s, decided, moment.t))
        self.cooldown.forget(moment.gone)
        return drafts

    def occupancy(self) -> dict[str, dict[str, int]]:
        return {name: zone.occupancy() for name, zone in self.zones.items()}


def _rule_state(name: str, rule: Rule, camera: str, store: CountStore) -> RuleState | None:
    """The state of a rule other than a zone; None for a zone (zones are built first: the others read them)."""
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

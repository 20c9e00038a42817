"""Per-object cooldown: a rule's ``cooldown_s`` keeps an object from repeating an event.

State is kept per object so that it goes when the object does (``forget``): track ids never come back.
"""

from __future__ import annotations

from collections.abc import Iterable

from services.rules.moment import Draft, Observed

__all__ = ["Cooldown"]


class Cooldown:
    def __init__(self) -> None:
        # object -> (rule, event type) -> when its last event went out
        self.last_event: dict[int, dict[tuple[str, str], float]] = {}
        # object -> rules whose start event was dropped: their end is dropped too
        self.suppressed: dict[int, set[str]] = {}

    def admit(self, rule: str, cooldown_s: float, drafts: list[Draft], t: float) -> list[Draft]:
        """``drafts`` less an object's repeated events within ``cooldown_s``, and the end of any start dropped."""
        if not cooldown_s:
            return drafts
        kept = []
        for draft in drafts:
            if draft.track is None:
                kept.append(draft)  # camera-level events (crowd, presence end) are not per object
                continue
            track_id = draft.track.track_id
            last = self.last_event.setdefault(track_id, {})
            quiet = self.suppressed.setdefault(track_id, set())
            if draft.lifecycle == "end":
                if rule in quiet:
                    quiet.discard(rule)
                else:
                    kept.append(draft)
            elif t - last.get((rule, draft.event_type), -1e18) >= cooldown_s:
                last[rule, draft.event_type] = t
                kept.append(draft)
            else:
                quiet.add(rule)
        return kept

    def forget(self, gone: Iterable[Observed]) -> None:
        """Drops the state of objects whose tracks ended."""
        for track in gone:
            self.last_event.pop(track.track_id, None)
            self.suppressed.pop(track.track_id, None)

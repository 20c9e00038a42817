"""Cumulative counts (line crossings) by camera, rule, label and key ("in", "out").

Kept in memory here; the service gives the rules a persistent one (``SqliteCountStore``) so that a
restart continues the counts. A line keeps at most ``MAX_MAP_ENTRIES - 1`` labels of its own; objects of
later labels are counted as ``other`` (``label_for``), so its counts fit an Event's or a Scene's map and a
sender inventing labels cannot grow the store.
"""

from __future__ import annotations

from contracts.messages import MAX_MAP_ENTRIES

__all__ = ["OTHER", "CountStore"]

OTHER = "other"  # the labels past a line's bound (services.rules.labels sums maps into the same name)


class CountStore:
    def __init__(self) -> None:
        # (camera, rule) -> label -> key -> count: a rule's counts are one lookup (a Scene per frame reads them)
        self.counts: dict[tuple[str, str], dict[str, dict[str, int]]] = {}

    def set(self, camera: str, rule: str, label: str, key: str, value: int) -> None:
        self.counts.setdefault((camera, rule), {}).setdefault(label, {})[key] = value

    def add(self, camera: str, rule: str, label: str, key: str, wall_ns: int = 0) -> int:
        """One more; ``wall_ns`` (when it happened) dates it in a store that keeps series."""
        value = self.get(camera, rule, label, key) + 1
        self.set(camera, rule, label, key, value)
        return value

    def label_for(self, camera: str, rule: str, label: str) -> str:
        """The label ``label``'s crossings of ``rule`` are counted under: its own, or ``other`` once the
        rule counts MAX_MAP_ENTRIES - 1 other labels."""
        counted = self.counts.get((camera, rule), {})
        if label in counted or len(counted.keys() - {OTHER}) < MAX_MAP_ENTRIES - 1:
            return label
        return OTHER

    def get(self, camera: str, rule: str, label: str, key: str) -> int:
        return self.counts.get((camera, rule), {}).get(label, {}).get(key, 0)

    def of_rule(self, camera: str, rule: str) -> dict[str, dict[str, int]]:
        """label -> key -> count of one rule of one camera (the store's own: read, do not change)."""
        return self.counts.get((camera, rule), {})

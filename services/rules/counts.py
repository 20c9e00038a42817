"""Cumulative counts (line crossings) by camera, rule, label and key ("in", "out").

Kept in memory here; the service gives the rules a persistent one (``SqliteCountStore``) so that a
restart continues the counts.
"""

from __future__ import annotations

__all__ = ["CountStore"]


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

    def get(self, camera: str, rule: str, label: str, key: str) -> int:
        return self.counts.get((camera, rule), {}).get(label, {}).get(key, 0)

    def of_rule(self, camera: str, rule: str) -> dict[str, dict[str, int]]:
        """label -> key -> count of one rule of one camera (the store's own: read, do not change)."""
        return self.counts.get((camera, rule), {})

"""How long to wait before restarting a process that died: doubling, capped, forgiven after a healthy run.

One rule for every supervisor of ours (``edgesight run``'s services, the apps service's apps): a process
that dies at once is restarted after ``first_s``, then twice as long each time up to ``max_s``, so a
crash loop costs little; one that ran for longer than ``stable_after_s`` before it died starts again
from ``first_s``, so a rare crash is not punished for the ones of last week.

>>> backoff = RestartBackoff(first_s=1.0, max_s=5.0)
>>> [backoff.next(ran_s=0.5) for _ in range(5)]
[1.0, 2.0, 4.0, 5.0, 5.0]
>>> backoff.next(ran_s=120.0)  # it ran for two minutes: a new crash, not the old loop
1.0
>>> backoff.next(ran_s=0.5)
2.0
"""

from __future__ import annotations

__all__ = ["STABLE_AFTER_S", "RestartBackoff"]

STABLE_AFTER_S = 60.0  # a process that ran this long before it died was healthy: its backoff starts over


class RestartBackoff:
    """The waits before each restart of one process; ``next`` once per death.

    ``first_s``: the first wait; lower restarts sooner after a one-off crash, at the cost of more
    restarts per minute while a process crashes at once. ``max_s``: the longest wait; higher costs
    less while something is broken for long, and is that much slower to notice that it is fixed.
    """

    def __init__(self, first_s: float, max_s: float, *, stable_after_s: float = STABLE_AFTER_S) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.stable_after_s = stable_after_s
        self._upcoming = first_s

    def next(self, ran_s: float) -> float:
        """The wait before restarting a process that ran ``ran_s`` seconds before it died."""
        if ran_s > self.stable_after_s:
            self._upcoming = self.first_s
        wait = self._upcoming
        self._upcoming = min(wait * 2, self.max_s)
        return wait

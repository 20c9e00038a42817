"""Frame rate limits on a frame clock: ingest's ``fps``, rules' Scenes."""

from __future__ import annotations

__all__ = ["FrameRateGate"]


class FrameRateGate:
    """Lets through at most ``fps`` frames per second, spread evenly.

    Each admitted frame books the next slot one period later, so a 25 fps source limited to
    10 fps passes frames 0, 2, 5, 7, 10, … rather than bursts. A frame up to a quarter period
    early still takes its slot, which absorbs network jitter; after a pause the schedule restarts
    instead of letting a backlog through.

    >>> gate = FrameRateGate(10)
    >>> [gate.admit(i / 25) for i in range(6)]
    [True, False, True, False, False, True]
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / fps
        self._next: float | None = None

    def admit(self, t: float) -> bool:
        """Whether the frame at ``t`` seconds (any clock that should not go back) is let through. A clock
        that went back by more than two periods (a restarted sender) starts the schedule again too."""
        if self._next is None or t - self._next >= self.period or t < self._next - 2 * self.period:
            self._next = t + self.period
            return True
        if t >= self._next - self.period / 4:
            self._next += self.period
            return True
        return False

    def reset(self) -> None:
        self._next = None

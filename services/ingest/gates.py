"""Per-frame decisions made before a frame is written: the rate limit and the motion score."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["FrameRateGate", "MotionDetector"]


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
        """Whether the frame at ``t`` seconds (any monotonic clock) should be published."""
        if self._next is None or t - self._next >= self.period:
            self._next = t + self.period
            return True
        if t >= self._next - self.period / 4:
            self._next += self.period
            return True
        return False

    def reset(self) -> None:
        self._next = None


class MotionDetector:
    """Changed share of a small luma image against a running-average background.

    Frigate's approach: compare a ``frame_height``-row grey image (cheap: FFmpeg scales the Y
    plane) with an exponentially averaged background; pixels differing by more than
    ``threshold`` are motion. Returns the changed share and the normalised box around it.
    """

    def __init__(self, threshold: int = 30, min_area: float = 0.001, alpha: float = 0.2) -> None:
        self.threshold = threshold
        self.min_area = min_area
        self.alpha = alpha
        self._background: npt.NDArray[np.float32] | None = None

    def update(self, luma: npt.NDArray[np.uint8]) -> tuple[float, tuple[float, float, float, float] | None]:
        current = luma.astype(np.float32)
        if self._background is None or self._background.shape != current.shape:
            self._background = current
            return 0.0, None
        changed = np.abs(current - self._background) > self.threshold
        # Blend after comparing: a moving object still shows against the old background.
        self._background += self.alpha * (current - self._background)
        score = float(changed.mean())
        if score < self.min_area:
            return score, None
        rows = np.flatnonzero(changed.any(axis=1))
        cols = np.flatnonzero(changed.any(axis=0))
        height, width = changed.shape
        box = (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)
        return score, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))

    def reset(self) -> None:
        self._background = None

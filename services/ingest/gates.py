"""Per-frame decisions made before a frame is written: the rate limit, the consumer's pace, the motion score."""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
import numpy.typing as npt

__all__ = ["ConsumerGate", "FrameRateGate", "MotionDetector"]


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


class ConsumerGate:
    """Backpressure for a file read faster than real time: at most ``window`` frames unanswered.

    The decode thread calls :meth:`wait` before it writes a frame and :meth:`sent` after it has; the
    event loop calls :meth:`answered` with the seq of each Detections heard for the camera, which
    answers that frame and every earlier one (inference skips to the newest). A frame nobody answers
    within ``timeout_s`` counts as taken: a model that skips still frames, a restarting inference, or
    none at all slow the file down to ``window`` frames per ``timeout_s``; they never stop it.
    """

    def __init__(self, window: int = 2, timeout_s: float = 0.5) -> None:
        self.window = window
        self.timeout_s = timeout_s
        self._unanswered: collections.deque[tuple[int, float]] = collections.deque()  # (seq, sent at)
        self._changed = threading.Condition()

    def sent(self, seq: int) -> None:
        with self._changed:
            self._unanswered.append((seq, time.monotonic()))

    def answered(self, seq: int) -> None:
        with self._changed:
            while self._unanswered and self._unanswered[0][0] <= seq:
                self._unanswered.popleft()
            self._changed.notify()

    def wait(self, abort: threading.Event) -> int:
        """Blocks until fewer than ``window`` frames are unanswered (or ``abort`` is set); returns how
        many frames it gave up waiting for."""
        timeouts = 0
        with self._changed:
            while len(self._unanswered) >= self.window and not abort.is_set():
                due = self._unanswered[0][1] + self.timeout_s - time.monotonic()
                if due <= 0:
                    self._unanswered.popleft()
                    timeouts += 1
                    continue
                self._changed.wait(min(due, 0.25))  # abort is looked at at least 4 times a second
        return timeouts

    def clear(self) -> None:
        """A new session (a reconnect): nothing sent before it is waited for."""
        with self._changed:
            self._unanswered.clear()


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

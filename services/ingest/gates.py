"""Per-frame decisions made before a frame is written: the rate limit and the consumer's pace."""

from __future__ import annotations

import collections
import threading
import time

from common.pacing import FrameRateGate

__all__ = ["ConsumerGate", "SourceRateGate"]


class SourceRateGate:
    """A :class:`FrameRateGate` on the source's own clock where it has one: a file read faster than real
    time is limited on its frames' timestamps until they go missing or stop increasing; from then on,
    and for a live source always, on the monotonic clock (``now``).

    >>> gate = SourceRateGate(10, stream_time=True)
    >>> [gate.admit(t, now=0.0) for t in (0.0, 0.04, 0.1)]
    [True, False, True]
    >>> gate.admit(None, now=5.0), gate.stream_time  # no timestamp: paced by the clock from now on
    (True, False)
    """

    def __init__(self, fps: float, *, stream_time: bool) -> None:
        self.gate = FrameRateGate(fps)
        self.stream_time = stream_time
        self._last = float("-inf")

    def admit(self, frame_time: float | None, now: float) -> bool:
        """Whether the frame stamped ``frame_time`` (None: unknown), decoded at ``now``, is published."""
        if self.stream_time and frame_time is not None and frame_time > self._last:
            self._last = frame_time
        else:
            if self.stream_time:  # timestamps missing or not increasing: pace by the clock
                self.stream_time = False
                self.gate.reset()
            self._last = now
        return self.gate.admit(self._last)


class ConsumerGate:
    """Backpressure for a file read faster than real time: at most ``window`` frames unanswered.

    The decode thread calls :meth:`wait` before it writes a frame and :meth:`sent` after it has; the
    event loop calls :meth:`answered` with the seq of each Detections heard for the camera, which
    answers that frame and every earlier one (inference skips to the newest). A frame nobody answers
    within ``timeout_s`` counts as taken: a model that skips still frames, a restarting inference, or
    none at all slow the file down to ``window`` frames per ``timeout_s``; they never stop it.
    """

    def __init__(self, window: int = 1, timeout_s: float = 0.5) -> None:
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

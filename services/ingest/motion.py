"""Motion: how much of a frame changed, scored on a small grey image before the frame is written.

The score and its box ride on the FrameRef, so that a model may skip still frames
(``models.<name>.skip_still_frames``) without reading a pixel.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["MotionDetector", "luma_width", "small_luma"]

_PLANAR_LUMA = ("yuv", "yuvj", "nv12", "nv21", "gray")  # pixel formats whose first plane is the luma


class MotionDetector:
    """Changed share of a small luma image against a running-average background.

    Frigate's approach: compare a grey image of about ``motion.frame_height`` rows (cheap: every n-th
    pixel of the decoder's own Y plane, see :func:`small_luma`) with an exponentially averaged
    background; pixels differing by more than ``threshold`` are motion. Returns the changed share and
    the normalised box (x0, y0, x1, y1) around it.

    >>> detector = MotionDetector(threshold=30, min_area=0.01)
    >>> still = np.zeros((4, 8), np.uint8)
    >>> detector.update(still)
    (0.0, None)
    >>> moved = still.copy()
    >>> moved[1:3, 2:4] = 255
    >>> detector.update(moved)
    (0.125, (0.25, 0.25, 0.5, 0.75))
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
        difference = np.subtract(current, self._background, out=current)  # current is not needed any more
        changed = np.abs(difference) > self.threshold
        # Blend after comparing: a moving object still shows against the old background.
        difference *= self.alpha
        self._background += difference
        score = int(np.count_nonzero(changed)) / changed.size  # a float the bus can encode, not a numpy scalar
        if score < self.min_area:
            return score, None
        rows = np.flatnonzero(changed.any(axis=1))
        cols = np.flatnonzero(changed.any(axis=0))
        height, width = changed.shape
        box = (cols[0] / width, rows[0] / height, (cols[-1] + 1) / width, (rows[-1] + 1) / height)
        return score, (float(box[0]), float(box[1]), float(box[2]), float(box[3]))

    def reset(self) -> None:
        self._background = None


def luma_width(rows: int, width: int, height: int) -> int:
    """The width of a ``rows``-row grey image of a ``width`` x ``height`` frame, aspect ratio kept.

    >>> luma_width(100, 1920, 1080)
    178
    """
    return max(2, round(rows * width / height))


def small_luma(frame: Any, height: int, width: int) -> npt.NDArray[np.uint8]:
    """A grey image of about ``height`` rows and ``width`` columns of the frame, for motion detection.

    Decoders hand out YUV, whose first plane already is the luma: every n-th pixel of it (n a whole
    number, so the image may be a little larger than asked) costs microseconds, where a scaled
    conversion of a 1080p frame costs about half a millisecond. Any other pixel format goes through
    FFmpeg's scaler, to exactly ``height`` x ``width``.
    """
    if frame.format.name.startswith(_PLANAR_LUMA):
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        step_y, step_x = max(1, plane.height // height), max(1, plane.width // width)
        return luma[::step_y, ::step_x]
    return frame.reformat(width=width, height=height, format="gray").to_ndarray()  # type: ignore[no-any-return]

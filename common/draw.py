"""The one drawing room: boxes, labels, zones and lines on a BGR picture, for every picture made for people
(the console's live view, rules' snapshots, an app's ``video_out``, ``edgesight detect --annotate``).

Each caller keeps its look through the arguments (colour, thickness, text scale); the shapes are the same
everywhere. Coordinates are pixels, floats or ints, rounded here; :func:`in_pixels` turns the fractions of
the frame that configs and messages carry into pixels. Nothing here raises for a box or point that is
degenerate, out of the frame or not finite: it is drawn where it falls, clipped, or not at all.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

__all__ = [
    "BLACK",
    "WHITE",
    "Colour",
    "draw_box",
    "draw_label",
    "draw_line",
    "draw_zones",
    "in_pixels",
    "text_colour_for",
]

Colour = tuple[int, int, int]  # BGR, as the pictures are
Image = npt.NDArray[np.uint8]

BLACK: Colour = (0, 0, 0)
WHITE: Colour = (255, 255, 255)
FONT = cv2.FONT_HERSHEY_SIMPLEX
ARROW_TIP = 0.35  # of the arrow's length
_LIMIT = 1 << 24  # coordinates are kept within this: OpenCV refuses what does not fit in 32 bits


def in_pixels(values: Iterable[float], width: int, height: int) -> tuple[float, ...]:
    """Fractions of the frame ``x, y[, x, y...]`` (a point or a box) in pixels of a ``width`` x ``height``
    picture, not rounded."""
    return tuple(float(v) * (height if i % 2 else width) for i, v in enumerate(values))


def text_colour_for(background: Colour) -> Colour:
    """Black or white, whichever reads better on ``background`` (BGR)."""
    b, g, r = background
    return BLACK if 0.114 * b + 0.587 * g + 0.299 * r >= 128 else WHITE


def draw_label(
    image: Image,
    text: str,
    at: Sequence[float],
    colour: Colour,
    *,
    text_colour: Colour | None = None,
    scale: float = 0.5,
    thickness: int = 1,
) -> None:
    """``text`` on a filled background of ``colour``: readable on any picture. ``at`` is the background's
    bottom-left corner (a box's top-left corner: the label sits on top of it); a label that would be cut
    off at the top or the left edge is moved down or right into the picture. ``text_colour`` is black or
    white after the background unless given; the background holds the descenders too."""
    point = _ints(at)
    if point is None:
        return
    thickness = max(1, thickness)
    pad = max(2, round(4 * scale))
    (w, h), descent = cv2.getTextSize(text, FONT, scale, thickness)
    x, y = max(point[0], 0), max(point[1], h + descent + 2 * pad)
    cv2.rectangle(image, (x, y - h - descent - 2 * pad), (x + w + 2 * pad, y), colour, -1)
    ink = text_colour if text_colour is not None else text_colour_for(colour)
    cv2.putText(image, text, (x + pad, y - pad - descent), FONT, scale, ink, thickness, cv2.LINE_AA)


def draw_box(
    image: Image,
    box: Sequence[float],
    colour: Colour,
    *,
    thickness: int = 2,
    label: str | None = None,
    text_colour: Colour | None = None,
    scale: float = 0.5,
    label_thickness: int = 1,
) -> None:
    """A rectangle ``x1, y1, x2, y2`` (pixels) in ``colour``, and ``label`` (if any) on top of its top-left
    corner with :func:`draw_label` on a background of the same colour; no label for a box wholly outside
    the picture."""
    corners = _ints(box)
    if corners is None:
        return
    x1, y1, x2, y2 = corners
    cv2.rectangle(image, (x1, y1), (x2, y2), colour, max(1, thickness))
    height, width = image.shape[:2]
    left, top = min(x1, x2), min(y1, y2)
    if label is not None and left < width and top < height and max(x1, x2) >= 0 and max(y1, y2) >= 0:
        draw_label(image, label, (left, top), colour, text_colour=text_colour, scale=scale, thickness=label_thickness)


def draw_zones(
    image: Image,
    polygons: Sequence[Sequence[Sequence[float]]],
    colour: Colour,
    *,
    alpha: float = 0.25,
    thickness: int = 2,
) -> None:
    """Polygons (lists of ``x, y`` pixels) filled lightly (``alpha`` of ``colour`` over the picture) and
    outlined. All are filled in one blend: where zones overlap they are tinted once, not twice."""
    shapes = [points for points in (_polygon(p) for p in polygons) if points is not None]
    if not shapes:
        return
    height, width = image.shape[:2]
    corners = np.concatenate(shapes)
    x0, y0 = max(int(corners[:, 0].min()), 0), max(int(corners[:, 1].min()), 0)
    x1, y1 = min(int(corners[:, 0].max()) + 1, width), min(int(corners[:, 1].max()) + 1, height)
    if x1 > x0 and y1 > y0 and alpha > 0:  # only the zones' bounding box is blended: the rest is unchanged
        region = image[y0:y1, x0:x1]
        shade = region.copy()
        for points in shapes:  # one at a time: fillPoly leaves where two of its polygons overlap unfilled
            cv2.fillPoly(shade, [points - np.array([x0, y0], np.int32)], colour)
        region[:] = cv2.addWeighted(shade, alpha, region, 1 - alpha, 0)
    cv2.polylines(image, shapes, True, colour, max(1, thickness), cv2.LINE_AA)


def draw_line(
    image: Image,
    a: Sequence[float],
    b: Sequence[float],
    colour: Colour,
    *,
    thickness: int = 3,
    in_side: Literal["left", "right"] | None = None,
    arrow_length: float = 40,
    arrow_thickness: int = 2,
) -> None:
    """A line from ``a`` to ``b`` (pixels) and, with ``in_side``, an arrow from its middle to that side:
    left or right as seen walking from ``a`` to ``b`` on the picture (y down)."""
    start, end = _ints(a), _ints(b)
    if start is None or end is None:
        return
    cv2.line(image, start, end, colour, max(1, thickness), cv2.LINE_AA)
    dx, dy = end[0] - start[0], end[1] - start[1]
    if in_side is None or (dx == 0 and dy == 0):
        return
    middle = ((start[0] + end[0]) // 2, (start[1] + end[1]) // 2)
    length = float(np.hypot(dx, dy))
    sign = 1 if in_side == "right" else -1  # right of a->b with y down is (-dy, dx)
    tip = (
        round(middle[0] - sign * dy / length * arrow_length),
        round(middle[1] + sign * dx / length * arrow_length),
    )
    cv2.arrowedLine(image, middle, tip, colour, max(1, arrow_thickness), cv2.LINE_AA, tipLength=ARROW_TIP)


def _ints(values: Sequence[float]) -> tuple[int, ...] | None:
    """Rounded and kept within what OpenCV takes; None when one is not a finite number."""
    numbers = [float(v) for v in values]
    if not all(math.isfinite(v) for v in numbers):
        return None
    return tuple(min(_LIMIT, max(-_LIMIT, round(v))) for v in numbers)


def _polygon(points: Sequence[Sequence[float]]) -> npt.NDArray[np.int32] | None:
    corners = [_ints(point) for point in points]
    if not corners or any(corner is None for corner in corners):
        return None
    return np.array(corners, np.int32).reshape(-1, 2)

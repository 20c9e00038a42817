"""Plane geometry on 0-1 image coordinates (x right, y down)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "anchor_point",
    "depth_past_line",
    "inside_polygon",
    "overlap_share",
    "segment_crossing",
    "side_of_line",
]

Point = tuple[float, float]


def anchor_point(box: npt.NDArray[np.float64] | Sequence[float], anchor: str) -> Point:
    """The point of an xyxy box a rule tests: bottom_center (feet), center or top_center."""
    x1, y1, x2, y2 = (float(v) for v in box)
    y = {"bottom_center": y2, "center": (y1 + y2) / 2, "top_center": y1}[anchor]
    return (x1 + x2) / 2, y


def inside_polygon(point: Point, polygon: Sequence[Sequence[float]]) -> bool:
    """Even-odd ray casting; points exactly on an edge count as inside half the time, which inertia absorbs."""
    x, y = point
    inside = False
    count = len(polygon)
    for i in range(count):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % count]
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def side_of_line(point: Point, line: Sequence[Sequence[float]]) -> int:
    """+1 right, -1 left of the line walked from its first point to its second (image axes), 0 on it."""
    (x1, y1), (x2, y2) = line
    cross = (x2 - x1) * (point[1] - y1) - (y2 - y1) * (point[0] - x1)
    return 1 if cross > 1e-12 else -1 if cross < -1e-12 else 0


def depth_past_line(point: Point, box: Sequence[float], line: Sequence[Sequence[float]]) -> float:
    """How far ``point`` is from the line (its extension included), in units of the xyxy ``box``'s extent
    across the line: the same share of an object's own size whatever its distance from the camera."""
    (x1, y1), (x2, y2) = line
    length = max(float(np.hypot(x2 - x1, y2 - y1)), 1e-12)
    normal = ((y1 - y2) / length, (x2 - x1) / length)
    distance = abs((point[0] - x1) * normal[0] + (point[1] - y1) * normal[1])
    extent = abs(normal[0]) * (box[2] - box[0]) + abs(normal[1]) * (box[3] - box[1])
    return distance / max(extent, 1e-12)


def segment_crossing(a: Point, b: Point, line: Sequence[Sequence[float]]) -> bool:
    """Whether the move a -> b crosses the line *segment* (not its extension beyond the ends)."""
    (x1, y1), (x2, y2) = line
    d = np.array([x2 - x1, y2 - y1])
    m = np.array([b[0] - a[0], b[1] - a[1]])
    denominator = m[0] * d[1] - m[1] * d[0]
    if abs(denominator) < 1e-12:
        return False  # moving along the line
    offset = np.array([x1 - a[0], y1 - a[1]])
    along_move = (offset[0] * d[1] - offset[1] * d[0]) / denominator
    along_line = (offset[0] * m[1] - offset[1] * m[0]) / denominator
    return bool(0.0 <= along_move <= 1.0 and 0.0 <= along_line <= 1.0)


def overlap_share(item: Sequence[float], person: Sequence[float]) -> float:
    """Share of the item's box inside the person's box."""
    ix = max(0.0, min(item[2], person[2]) - max(item[0], person[0]))
    iy = max(0.0, min(item[3], person[3]) - max(item[1], person[1]))
    area = max((item[2] - item[0]) * (item[3] - item[1]), 1e-12)
    return ix * iy / area

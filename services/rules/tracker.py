"""ByteTrack-style multi-object tracking: a Kalman motion model and two-stage association.

Written here with scipy's ``linear_sum_assignment`` rather than taken from a library: the maintained
implementation (``supervision``'s ByteTrack) brings matplotlib, Pillow and requests with it, too much
for a Jetson image, and the algorithm is a hundred lines.

Stage 1 matches confident detections (``high_score``) to every live track by IoU with the track's
predicted box; stage 2 lets the remaining weak detections (``low_score``..``high_score``) continue
confirmed tracks only, which keeps ids through occlusion without starting tracks on noise. A track
is reported after ``min_hits`` matches and dropped after ``max_age_s`` unmatched. Boxes are
normalised xyxy; time is seconds (frames arrive at whatever rate the camera runs).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from common.config import TrackerConfig

__all__ = ["ByteTracker", "Track", "iou_matrix"]

FloatArray = npt.NDArray[np.float64]


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-12)  # type: ignore[no-any-return]


class _Kalman:
    """Constant-velocity Kalman filter on (cx, cy, w, h) and their rates."""

    def __init__(self, box: FloatArray) -> None:
        cx, cy, w, h = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]
        self.x = np.array([cx, cy, w, h, 0.0, 0.0, 0.0, 0.0])
        scale = max(w, h, 1e-3)
        self.P = np.diag([scale, scale, scale, scale, 10 * scale, 10 * scale, 10 * scale, 10 * scale]) ** 2 * 0.01

    def predict(self, dt: float) -> FloatArray:
        F = np.eye(8)
        F[:4, 4:] = np.eye(4) * dt
        scale = max(self.x[2], self.x[3], 1e-3)
        q = (0.05 * scale) ** 2 * max(dt, 1e-3)
        self.x = F @ self.x
        self.P = F @ self.P @ F.T + np.diag([q, q, q, q, 4 * q, 4 * q, 4 * q, 4 * q])
        return self.box()

    def update(self, box: FloatArray) -> None:
        z = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])
        H = np.zeros((4, 8))
        H[:4, :4] = np.eye(4)
        r = (0.05 * max(z[2], z[3], 1e-3)) ** 2
        S = H @ self.P @ H.T + np.eye(4) * r
        K = self.P @ H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - H @ self.x)
        self.P = (np.eye(8) - K @ H) @ self.P

    def box(self) -> FloatArray:
        cx, cy, w, h = self.x[:4]
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclasses.dataclass
class Track:
    track_id: int
    class_id: int
    box: FloatArray  # the last matched detection's box (what rules see)
    score: float
    first_seen: float
    last_seen: float
    hits: int = 1
    confirmed: bool = False
    best_score: float = 0.0
    kalman: _Kalman = dataclasses.field(repr=False, default=None)  # type: ignore[assignment]


class ByteTracker:
    def __init__(self, config: TrackerConfig, ids: Iterator[int] | None = None) -> None:
        """``ids`` may be shared by the trackers of one camera (one per model) so track ids never collide."""
        self.config = config
        self.tracks: list[Track] = []
        self._ids = ids or itertools.count(1)
        self._last_t: float | None = None

    def update(
        self, boxes: npt.ArrayLike, class_ids: npt.ArrayLike, scores: npt.ArrayLike, t: float
    ) -> tuple[list[Track], list[Track]]:
        """One frame's detections at time ``t`` (seconds): (confirmed tracks seen in it, confirmed tracks gone)."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        class_ids = np.asarray(class_ids, np.int64).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        predicted = np.array([track.kalman.predict(dt) for track in self.tracks]).reshape(-1, 4)
        high = np.flatnonzero(scores >= self.config.high_score)
        low = np.flatnonzero((scores >= self.config.low_score) & (scores < self.config.high_score))
        unmatched_tracks = list(range(len(self.tracks)))
        seen: list[Track] = []

        def associate(detections: npt.NDArray[np.intp], candidates: list[int]) -> list[int]:
            """Matches ``detections`` to ``candidates`` (track indices); returns unmatched detections."""
            if len(detections) == 0 or not candidates:
                return list(detections)
            iou = iou_matrix(predicted[candidates], boxes[detections])
            same_class = (
                class_ids[detections][None, :] == np.array([self.tracks[i].class_id for i in candidates])[:, None]
            )
            cost = np.where(same_class & (iou >= self.config.match_iou), 1.0 - iou, 1e6)
            rows, cols = linear_sum_assignment(cost)
            matched_detections = set()
            for row, col in zip(rows, cols, strict=True):
                if cost[row, col] >= 1e6:
                    continue
                track = self.tracks[candidates[row]]
                detection = detections[col]
                track.kalman.update(boxes[detection])
                track.box, track.score, track.last_seen = boxes[detection].copy(), float(scores[detection]), t
                track.hits += 1
                track.best_score = max(track.best_score, track.score)
                track.confirmed = track.confirmed or track.hits >= self.config.min_hits
                unmatched_tracks.remove(candidates[row])
                matched_detections.add(col)
                if track.confirmed:
                    seen.append(track)
            return [detections[i] for i in range(len(detections)) if i not in matched_detections]

        new_detections = associate(high, list(unmatched_tracks))
        associate(low, [i for i in unmatched_tracks if self.tracks[i].confirmed])
        for detection in new_detections:
            track = Track(
                track_id=next(self._ids),
                class_id=int(class_ids[detection]),
                box=boxes[detection].copy(),
                score=float(scores[detection]),
                first_seen=t,
                last_seen=t,
                best_score=float(scores[detection]),
                kalman=_Kalman(boxes[detection]),
            )
            track.confirmed = self.config.min_hits <= 1
            self.tracks.append(track)
            if track.confirmed:
                seen.append(track)
        alive = [track for track in self.tracks if t - track.last_seen <= self.config.max_age_s]
        gone = [track for track in self.tracks if track.confirmed and t - track.last_seen > self.config.max_age_s]
        self.tracks = alive
        return seen, gone

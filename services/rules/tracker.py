"""Multi-object tracking that holds from 5 to 30 fps: ByteTrack's two stages, a motion model in
capture time, and a distance fallback for objects that move further than their own size between frames.

Written here with scipy's ``linear_sum_assignment`` rather than taken from a library: the maintained
implementation (``supervision``'s ByteTrack) brings matplotlib, Pillow and requests with it, too much
for a Jetson image, and it matches by IoU alone, which fails at the frame rates edge boxes run.

- **Motion**: a constant-velocity Kalman filter per track whose velocity is per *second* of capture
  time, so a skipped frame, a slow inference or a camera at 5 fps only lengthens the prediction
  (``services.rules.kalman``: in closed form, every track of the tracker in one set of arrays).
- **Association**, ByteTrack's two stages: confident detections (``high_score``) are matched to every
  live track, lost ones included; weak ones (``low_score``..``high_score``) only continue confirmed
  tracks. A pair is scored by IoU with the track's predicted box when that reaches ``match_iou``;
  otherwise (a fast object whose boxes no longer overlap, OC-SORT's and BoT-SORT's observation) by the
  distance between the centres in box sizes, within a gate of ``match_distance`` box sizes around the
  prediction that widens with the time since the track was last matched: for a track seen once (its
  velocity unknown) by how fast this class's moving tracks go on this camera (three times their
  median speed plus one, at most ``max_speed``, box sizes per second), for a track whose velocity is
  known by a quarter of its speed. Only the same class and sizes within a factor of two pair up this
  way. A confirmed track that is lost keeps predicting, so one re-found within ``max_age_s`` keeps its
  id (re-identification by motion, without appearance); a track not yet confirmed ends at its first
  miss (ByteTrack's rule), so a false positive never lingers with a widening gate.
- **Confirmation in time**: a track is reported after ``min_hits`` matches, or after two matches at
  least ``confirm_s`` apart, so an object seen in only a few frames at a low rate still exists.
  ``Track.origin`` keeps where it was first seen, so a rule can judge what it did before that.

Boxes are normalised xyxy. Distances are measured on square pixels (``aspect`` = frame width /
height), so a box size means the same along x and y.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import statistics
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from scipy.optimize import linear_sum_assignment

from common.config import TrackerConfig
from services.rules.kalman import BoxMotion

__all__ = ["ByteTracker", "Track", "iou_matrix"]

FloatArray = npt.NDArray[np.float64]

KNOWN_VELOCITY_SLACK = 0.25  # once a track's velocity is known: how wrong it may be, as a share of its speed
SPEED_SAMPLES = 256  # speeds of moving confirmed tracks kept per class, for the gate of newborn tracks
MIN_SPEED_SAMPLES = 16  # until then a newborn track's gate uses max_speed
MOVING = 0.25  # box sizes per second: slower tracks are parked, not evidence of how fast things move
MAX_SIZE_RATIO = 2.0  # a distance match pairs boxes whose sides (geometric mean) differ at most this much
INFEASIBLE = 1e6
MAX_DETECTIONS_TRACKED = 512  # the most confident detections of a frame that the tracker takes
MAX_TRACKS = 2048  # live tracks of one tracker (one camera and model); past it, no new track starts


def iou_matrix(a: FloatArray, b: FloatArray) -> FloatArray:
    """IoU of every box in ``a`` [N, 4] with every box in ``b`` [M, 4] (xyxy)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    overlap = np.maximum(bottom_right - top_left, 0)
    inter = overlap[..., 0] * overlap[..., 1]
    return inter / np.maximum(_areas(a)[:, None] + _areas(b)[None, :] - inter, 1e-12)  # type: ignore[no-any-return]


def _areas(boxes: FloatArray) -> FloatArray:
    """Of xyxy boxes [N, 4]: two products, not np.prod's reduction (a hot path: every frame, every pair)."""
    sides = boxes[:, 2:] - boxes[:, :2]
    return sides[:, 0] * sides[:, 1]  # type: ignore[no-any-return]


@dataclasses.dataclass
class Track:
    track_id: int
    class_id: int
    box: FloatArray  # the last matched detection's box (what rules see), normalised xyxy
    score: float
    first_seen: float
    last_seen: float
    origin: FloatArray  # the first matched box: where the object was before it was confirmed
    hits: int = 1
    confirmed: bool = False


@dataclasses.dataclass(frozen=True)
class _Frame:
    """One frame's detections as the tracker matches them."""

    boxes: FloatArray  # [N, 4] normalised xyxy
    square: FloatArray  # the same on square pixels: distances mean the same along x and y
    class_ids: npt.NDArray[np.int64]
    scores: FloatArray
    t: float  # capture time, seconds

    @classmethod
    def of(
        cls, boxes: npt.ArrayLike, class_ids: npt.ArrayLike, scores: npt.ArrayLike, t: float, aspect: float
    ) -> _Frame:
        normalised = np.asarray(boxes, np.float64).reshape(-1, 4)
        return cls(
            boxes=normalised,
            square=normalised * np.array([aspect, 1.0, aspect, 1.0]),
            class_ids=np.asarray(class_ids, np.int64).reshape(-1),
            scores=np.asarray(scores, np.float64).reshape(-1),
            t=t,
        )

    def strongest(self, count: int) -> _Frame:
        """The ``count`` most confident detections (a frame with more is no scene a camera shows: a
        sender's flood would cost the tracker quadratic time)."""
        if len(self.scores) <= count:
            return self
        keep = np.sort(np.argsort(-self.scores, kind="stable")[:count])
        return _Frame(self.boxes[keep], self.square[keep], self.class_ids[keep], self.scores[keep], self.t)


class ByteTracker:
    def __init__(self, config: TrackerConfig, ids: Iterator[int] | None = None) -> None:
        """``ids`` may be shared by the trackers of one camera (one per model) so track ids never collide."""
        self.config = config
        self.tracks: list[Track] = []
        self._motion = BoxMotion(config.max_speed)  # row i: the motion of tracks[i]
        self._ids = ids or itertools.count(1)
        self._last_t: float | None = None
        self._speeds: dict[int, collections.deque[float]] = {}  # class -> speeds of moving confirmed tracks

    def update(
        self,
        boxes: npt.ArrayLike,
        class_ids: npt.ArrayLike,
        scores: npt.ArrayLike,
        t: float,
        aspect: float = 16 / 9,
    ) -> tuple[list[Track], list[Track]]:
        """One frame's detections at capture time ``t`` (seconds) from a frame ``aspect`` (width / height)
        wide: (confirmed tracks seen in it, confirmed tracks gone)."""
        frame = _Frame.of(boxes, class_ids, scores, t, aspect).strongest(MAX_DETECTIONS_TRACKED)
        restarted: list[Track] = []
        if self._last_t is not None and t < self._last_t - self.config.max_age_s:
            restarted = self._restart()  # the clock went back: tracks dated after it would never age out
        predicted = self._predict(t)
        high = np.flatnonzero(frame.scores >= self.config.high_score)
        low = np.flatnonzero((frame.scores >= self.config.low_score) & (frame.scores < self.config.high_score))
        # ByteTrack's two stages: confident detections may continue any live track, lost ones included;
        # weak ones only a confirmed track the first stage left unmatched
        every = list(range(len(self.tracks)))
        continued, unmatched = self._associate(frame, high, every, predicted)
        matched = set(continued)
        confirmed_left = [i for i in every if i not in matched and self.tracks[i].confirmed]
        continued_weak, _ = self._associate(frame, low, confirmed_left, predicted)
        seen = [self.tracks[i] for i in continued + continued_weak if self.tracks[i].confirmed]
        seen += [track for track in self._start_tracks(frame, unmatched) if track.confirmed]
        return seen, restarted + self._end_tracks(t)

    def _restart(self) -> list[Track]:
        """Ends every track at once; returns the confirmed ones (gone)."""
        gone = [track for track in self.tracks if track.confirmed]
        self.tracks = []
        self._motion.keep(np.zeros(len(self._motion), bool))
        self._last_t = None
        return gone

    def _predict(self, t: float) -> FloatArray:
        """Every track's box at ``t`` (square pixels), from its motion since the last frame."""
        dt = 0.0 if self._last_t is None else max(0.0, t - self._last_t)
        self._last_t = t
        return self._motion.predict(dt)

    def _associate(
        self, frame: _Frame, detections: npt.NDArray[np.intp], candidates: list[int], predicted: FloatArray
    ) -> tuple[list[int], list[int]]:
        """Matches ``detections`` to ``candidates`` (track indices) and continues the matched tracks:
        (the tracks continued, in the order matched; the detections left)."""
        if len(detections) == 0 or not candidates:
            return [], list(detections)
        cost = self._cost(candidates, predicted[candidates], frame.square[detections], frame.t)
        track_classes = np.array([self.tracks[i].class_id for i in candidates])
        cost[frame.class_ids[detections][None, :] != track_classes[:, None]] = INFEASIBLE
        rows, cols = linear_sum_assignment(cost)
        feasible = cost[rows, cols] < INFEASIBLE
        continued = [candidates[row] for row in rows[feasible].tolist()]
        self._continue(continued, frame, detections[cols[feasible]])
        left = np.ones(len(detections), bool)
        left[cols[feasible]] = False
        return continued, list(detections[left])

    def _continue(self, rows: list[int], frame: _Frame, detections: npt.NDArray[np.intp]) -> None:
        """``tracks[rows[i]]`` matched ``detections[i]``: their motion, box, score and proof of life follow."""
        self._motion.update(np.array(rows, np.intp), frame.square[detections])
        speeds = self._motion.speeds(np.array(rows, np.intp)).tolist()
        for row, detection, speed in zip(rows, detections.tolist(), speeds, strict=True):
            track = self.tracks[row]
            track.box, track.score = frame.boxes[detection].copy(), float(frame.scores[detection])
            track.last_seen = frame.t
            track.hits += 1
            track.confirmed = track.confirmed or self._confirms(track)
            if track.hits >= self.config.min_hits and speed >= MOVING:
                self._speeds.setdefault(track.class_id, collections.deque(maxlen=SPEED_SAMPLES)).append(speed)

    def _start_tracks(self, frame: _Frame, detections: list[int]) -> list[Track]:
        """A new track for each confident detection no track continued (while there is room for one)."""
        detections = detections[: max(0, MAX_TRACKS - len(self.tracks))]
        started = []
        for detection in detections:
            track = Track(
                track_id=next(self._ids),
                class_id=int(frame.class_ids[detection]),
                box=frame.boxes[detection].copy(),
                score=float(frame.scores[detection]),
                first_seen=frame.t,
                last_seen=frame.t,
                origin=frame.boxes[detection].copy(),
            )
            track.confirmed = self.config.min_hits <= 1
            started.append(track)
        self.tracks += started
        self._motion.add(frame.square[np.array(detections, np.intp)])
        return started

    def _end_tracks(self, t: float) -> list[Track]:
        """Drops the tracks that ended at ``t``; returns the confirmed ones among them."""
        # ByteTrack's rule: a track not yet confirmed lives only while matched in every frame; a false
        # positive must not linger with a widening gate and take over a real object's detection later
        alive = [
            t - track.last_seen <= self.config.max_age_s and (track.confirmed or track.last_seen == t)
            for track in self.tracks
        ]
        gone = [track for track in self.tracks if track.confirmed and t - track.last_seen > self.config.max_age_s]
        if not all(alive):
            self.tracks = [track for track, kept in zip(self.tracks, alive, strict=True) if kept]
            self._motion.keep(np.array(alive, bool))
        return gone

    def _confirms(self, track: Track) -> bool:
        """``min_hits`` matches, or two spanning ``confirm_s``: the same proof of life at any frame rate."""
        return track.hits >= self.config.min_hits or (
            track.hits >= 2 and track.last_seen - track.first_seen >= self.config.confirm_s
        )

    def newborn_speed(self, class_id: int) -> float:
        """How far per second a track seen once may have gone (box sizes): three times the median speed of
        this class's moving confirmed tracks plus one, so a crowd's slow walkers do not lend their
        detections to each other when frames are far apart while a highway's cars are still found;
        ``max_speed`` until enough have been seen, and never more."""
        speeds = self._speeds.get(class_id)
        if speeds is None or len(speeds) < MIN_SPEED_SAMPLES:
            return self.config.max_speed
        return min(self.config.max_speed, 1.0 + 3.0 * statistics.median(speeds))

    def _cost(self, candidates: list[int], predicted: FloatArray, detections: FloatArray, t: float) -> FloatArray:
        """[tracks, detections]: 1 - IoU where the IoU with the prediction reaches ``match_iou``; else
        1 + the centre distance in box sizes where it is inside the track's gate; else infeasible."""
        iou = iou_matrix(predicted, detections)
        centre_detection = (detections[:, :2] + detections[:, 2:]) / 2
        size_track = np.sqrt(np.maximum(_areas(predicted), 1e-12))
        size_detection = np.sqrt(np.maximum(_areas(detections), 1e-12))
        size = np.sqrt(size_track[:, None] * size_detection[None, :])
        offset = (predicted[:, None, :2] + predicted[:, None, 2:]) / 2 - centre_detection
        distance = np.sqrt(offset[..., 0] ** 2 + offset[..., 1] ** 2) / size
        size_ratio = np.maximum(
            size_track[:, None] / size_detection[None, :], size_detection[None, :] / size_track[:, None]
        )
        tracks = [self.tracks[i] for i in candidates]
        lost_for = np.array([t - track.last_seen for track in tracks])
        # a track seen once has no velocity yet: its gate widens by how fast its class goes here
        speed = KNOWN_VELOCITY_SLACK * self._motion.speeds(np.array(candidates, np.intp))
        newborn: dict[int, float] = {}
        for index, track in enumerate(tracks):
            if track.hits == 1:
                if track.class_id not in newborn:
                    newborn[track.class_id] = self.newborn_speed(track.class_id)
                speed[index] = newborn[track.class_id]
        gate = self.config.match_distance + speed * lost_for
        near = (distance <= gate[:, None]) & (size_ratio <= MAX_SIZE_RATIO) & (self.config.match_distance > 0)
        cost = np.where(near, 1.0 + distance, INFEASIBLE)
        return np.where(iou >= self.config.match_iou, 1.0 - iou, cost)  # type: ignore[no-any-return]

"""The tracker's motion model: a constant-velocity Kalman filter on a box's (cx, cy, w, h) and their rates
per second, for every track of a tracker at once.

Nothing couples the four axes: the covariance starts diagonal, the transition moves each position by its
own velocity, the process noise of an axis touches only its own (position, velocity) pair, and each
measurement sees one position. So the 8x8 filter is four independent 2x2 ones, and each 2x2 one is three
numbers (position variance, their covariance, velocity variance) updated in closed form — no matrix
products and no inverse (the innovation's covariance is a scalar per axis). Rows are tracks: a frame's
prediction and its matches' update are a few numpy operations over all of them, not 8x8 algebra per track.

Noise scales with the box, so the same settings serve a far-away person and a near truck. The velocity
starts unknown (a spread of ``max_speed`` box sizes per second), which makes the second match set it to
the displacement between the first two, however far apart in time they were.

>>> motion = BoxMotion(max_speed=15.0)
>>> motion.add(np.array([[0.0, 0.0, 0.1, 0.1]]))
>>> motion.predict(0.5).round(3).tolist()  # at rest until a second match says otherwise
[[0.0, 0.0, 0.1, 0.1]]
>>> motion.update(np.array([0]), np.array([[0.1, 0.0, 0.2, 0.1]]))
>>> motion.speeds(np.array([0])).round(2).tolist()  # moved one box size in half a second
[2.0]
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["BoxMotion"]

FloatArray = npt.NDArray[np.float64]
IndexArray = npt.NDArray[np.intp]

MEASUREMENT_STD = 0.05  # a detection's centre and size jitter, in box sizes
ACCELERATION_STD = 2.0  # how fast velocity changes, in box sizes per second squared
SMALLEST_AREA = 1e-8  # a box's area is at least this when its size is taken (a degenerate box has one)
SMALLEST_SIDE = 1e-6  # a predicted box keeps at least this width and height


def _box_sizes(centred: FloatArray) -> FloatArray:
    """The sizes of boxes given as (cx, cy, w, h, ...) rows: the geometric mean of their sides."""
    return np.sqrt(np.maximum(centred[:, 2] * centred[:, 3], SMALLEST_AREA))  # type: ignore[no-any-return]


def _centred(boxes: FloatArray) -> FloatArray:
    """xyxy rows -> (cx, cy, w, h) rows."""
    return np.concatenate([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], axis=1)


class BoxMotion:
    """One Kalman filter per row (track): the state's mean and, per axis, its 2x2 covariance.

    Boxes in and out are xyxy on square pixels; rows stay in the order they were added, and
    :meth:`keep` drops the rows of tracks that ended.
    """

    def __init__(self, max_speed: float) -> None:
        self.max_speed = max_speed  # box sizes per second: the spread of a new track's unknown velocity
        self.position = np.empty((0, 4))  # cx, cy, w, h
        self.velocity = np.empty((0, 4))  # their rates per second
        self.position_var = np.empty((0, 4))  # per axis: var(position), cov(position, velocity), var(velocity)
        self.covariance = np.empty((0, 4))
        self.velocity_var = np.empty((0, 4))

    def __len__(self) -> int:
        return len(self.position)

    def add(self, boxes: FloatArray) -> None:
        """New rows for tracks first seen at ``boxes`` [M, 4], at rest with an unknown velocity."""
        position = _centred(boxes.reshape(-1, 4))
        size = _box_sizes(position)[:, None]
        velocity_var = (self.max_speed * size) ** 2 * np.array([1.0, 1.0, 0.25, 0.25])  # sizes change slower
        self.position = np.concatenate([self.position, position])
        self.velocity = np.concatenate([self.velocity, np.zeros_like(position)])
        self.position_var = np.concatenate([self.position_var, np.repeat((MEASUREMENT_STD * size) ** 2, 4, axis=1)])
        self.covariance = np.concatenate([self.covariance, np.zeros_like(position)])
        self.velocity_var = np.concatenate([self.velocity_var, velocity_var])

    def keep(self, rows: npt.NDArray[np.bool_]) -> None:
        """Keeps the rows where ``rows`` is true, in order."""
        self.position, self.velocity = self.position[rows], self.velocity[rows]
        self.position_var, self.covariance = self.position_var[rows], self.covariance[rows]
        self.velocity_var = self.velocity_var[rows]

    def predict(self, dt: float) -> FloatArray:
        """Moves every row ``dt`` seconds on; returns every row's box then [N, 4]."""
        if dt > 0 and len(self):
            # white-noise acceleration, its variance scaled by the box's size before the move: per unit of it,
            # position gains dt^4/4, their covariance dt^3/2, velocity dt^2
            noise = ((ACCELERATION_STD * _box_sizes(self.position)) ** 2)[:, None]
            self.position = self.position + dt * self.velocity
            moved_var = self.position_var + dt * self.covariance + dt * (self.covariance + dt * self.velocity_var)
            self.position_var = moved_var + (dt * dt / 2) ** 2 * noise
            self.covariance = self.covariance + dt * self.velocity_var + dt**3 / 2 * noise
            self.velocity_var = self.velocity_var + dt * dt * noise
        return self.boxes()

    def update(self, rows: IndexArray, boxes: FloatArray) -> None:
        """Row ``rows[i]`` was measured at ``boxes[i]`` (each row at most once)."""
        if len(rows) == 0:
            return
        measured = _centred(boxes.reshape(-1, 4))
        noise = ((MEASUREMENT_STD * _box_sizes(measured)) ** 2)[:, None]
        position_var, covariance = self.position_var[rows], self.covariance[rows]
        inverse = 1 / (position_var + noise)  # of the innovation's variance: a scalar per axis, nothing to invert
        position_gain, velocity_gain = position_var * inverse, covariance * inverse
        innovation = measured - self.position[rows]
        self.position[rows] += position_gain * innovation
        self.velocity[rows] += velocity_gain * innovation
        kept = 1 - position_gain  # the share of the prior's uncertainty left
        self.velocity_var[rows] -= velocity_gain * covariance
        self.covariance[rows] = kept * covariance
        self.position_var[rows] = kept * position_var

    def speeds(self, rows: IndexArray) -> FloatArray:
        """How fast ``rows`` move, in box sizes per second."""
        velocity = self.velocity[rows]
        return np.hypot(velocity[:, 0], velocity[:, 1]) / _box_sizes(self.position[rows])  # type: ignore[no-any-return]

    def boxes(self) -> FloatArray:
        """Every row's box now, xyxy [N, 4]; never narrower or lower than SMALLEST_SIDE."""
        centre = self.position[:, :2]
        half = np.maximum(self.position[:, 2:], SMALLEST_SIDE) / 2
        return np.concatenate([centre - half, centre + half], axis=1)

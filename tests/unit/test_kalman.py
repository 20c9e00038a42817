"""The tracker's closed-form Kalman filter (``BoxMotion``, every track at once) is the 8x8 matrix filter it
replaced: the same states and covariances to 1e-9, and so the same tracks, ids and all.

The reference is the ``rules_cpu`` benchmark's baseline, ``MatrixKalmanBaseline``: the filter as the tracker
ran it until then (commit 8554382, ``_Kalman`` in services/rules/tracker.py), kept line for line — one copy,
which the benchmark times and this test trusts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
import pytest

from benchmarks._tracking import DetectedFrame, Scene, highway, moving_objects
from benchmarks.rules_cpu import MatrixMotionBaseline as ReferenceMotion
from common.config import TrackerConfig
from services.rules import tracker as tracker_module
from services.rules.kalman import BoxMotion
from services.rules.tracker import ByteTracker

FloatArray = npt.NDArray[np.float64]

RELATIVE = 1e-9


def _same(ours: FloatArray, reference: FloatArray) -> None:
    """Equal to RELATIVE of each value (of the largest in its array where a value is a rounding's zero)."""
    scale = float(np.max(np.abs(reference), initial=0.0))
    np.testing.assert_allclose(ours, reference, rtol=RELATIVE, atol=RELATIVE * 1e-6 * scale)


def _check(motion: BoxMotion, reference: ReferenceMotion) -> None:
    """Every row's mean and covariance, and the boxes and speeds they give."""
    assert len(motion) == len(reference)
    states = np.array([kalman.x for kalman in reference.filters]).reshape(-1, 8)
    _same(np.hstack([motion.position, motion.velocity]), states)
    covariances = np.array([kalman.P for kalman in reference.filters]).reshape(-1, 8, 8)
    axes = np.arange(4)
    _same(motion.position_var, covariances[:, axes, axes])
    _same(motion.covariance, covariances[:, axes, axes + 4])
    _same(motion.covariance, covariances[:, axes + 4, axes])
    _same(motion.velocity_var, covariances[:, axes + 4, axes + 4])
    others = covariances.copy()
    others[:, axes, axes] = others[:, axes, axes + 4] = others[:, axes + 4, axes] = others[:, axes + 4, axes + 4] = 0
    assert not others.any()  # the reference never couples two axes: four 2x2 filters are all of it
    _same(motion.boxes(), reference.boxes())
    rows = np.arange(len(motion))
    _same(motion.speeds(rows), reference.speeds(rows))


def _random_boxes(rng: np.random.Generator, count: int) -> FloatArray:
    """Boxes of every size the tracker meets, from a far person to a near truck, on square pixels (cx, cy, w, h)."""
    return np.hstack([rng.uniform(0, 1.8, (count, 2)), np.exp(rng.uniform(np.log(0.005), np.log(0.6), (count, 2)))])


def _xyxy(centred: FloatArray) -> FloatArray:
    return np.hstack([centred[:, :2] - centred[:, 2:] / 2, centred[:, :2] + centred[:, 2:] / 2])


@pytest.mark.parametrize("seed", range(5))
def test_the_closed_form_filter_is_the_matrix_filter(seed: int) -> None:
    """Objects of every size moving up to 10 of their sizes a second and growing or shrinking, tracks born at
    any time, frames 0 to 2 s apart, each object detected (jittered by 3% of its size) at random, tracks
    ending at random."""
    rng = np.random.default_rng(seed)
    motion, reference = BoxMotion(max_speed=15.0), ReferenceMotion(max_speed=15.0)
    truth, velocity = np.empty((0, 4)), np.empty((0, 2))  # cx, cy, w, h; centre's velocity in sizes per second
    for step in range(150):
        if step == 0 or rng.random() < 0.3:
            born = _random_boxes(rng, int(rng.integers(1, 4)))
            truth, velocity = np.vstack([truth, born]), np.vstack([velocity, rng.uniform(-10, 10, (len(born), 2))])
            motion.add(_xyxy(born))
            reference.add(_xyxy(born))
        dt = float(rng.choice([0.0, rng.uniform(0.01, 0.2), rng.uniform(0.2, 2.0)], p=[0.1, 0.7, 0.2]))
        sizes = np.sqrt(truth[:, 2] * truth[:, 3])[:, None]
        truth[:, :2] += velocity * sizes * dt
        truth[:, 2:] *= np.exp(rng.normal(0, 0.1 * np.sqrt(dt), (len(truth), 2)))
        _same(motion.predict(dt), reference.predict(dt))
        rows = np.flatnonzero(rng.random(len(motion)) < 0.7)
        measured = _xyxy(truth[rows] + rng.normal(0, 0.03, (len(rows), 4)) * np.tile(truth[rows, 2:], 2))
        motion.update(rows, measured)
        reference.update(rows, measured)
        _check(motion, reference)
        if len(motion) > 3:
            kept = rng.random(len(motion)) < 0.9
            truth, velocity = truth[kept], velocity[kept]
            motion.keep(kept)
            reference.keep(kept)
    assert len(motion) > 0


def _crowd() -> Scene:
    """50 people walking, as detected: 8% missed, a false positive in a third of the frames, a third of
    the detections weak (below high_score: ByteTrack's second stage)."""
    walk = moving_objects(count=50, frames=120, fps=10, seed=5)
    rng = np.random.default_rng(11)
    frames = []
    for frame in walk.frames:
        kept = rng.random(len(frame.boxes)) >= 0.08
        boxes, classes, scores = frame.boxes[kept], frame.class_ids[kept], frame.scores[kept]
        if rng.random() < 0.3:
            cx, cy = rng.uniform(0.1, 0.9, 2)
            boxes = np.vstack([boxes, [cx - 0.02, cy - 0.04, cx + 0.02, cy + 0.04]])
            classes, scores = np.append(classes, 0), np.append(scores, rng.uniform(0.5, 0.7))
        frames.append(DetectedFrame(frame.index, frame.t, boxes, classes, scores))
    return Scene(frames, walk.aspect, {}, walk.labels)


def _highway() -> Scene:
    return highway(seconds=10, seed=2)


SCENES = {"crowd": _crowd, "highway": _highway}


def _tracked(scene: Scene, stride: int) -> Iterator[tuple[dict[int, list[float]], list[int], FloatArray]]:
    """Per frame: the tracks seen (id -> box), the ids gone, every live track's predicted box."""
    tracker = ByteTracker(TrackerConfig())
    for frame in scene.frames[::stride]:
        seen, gone = tracker.update(frame.boxes, frame.class_ids, frame.scores, frame.t, scene.aspect)
        yield {t.track_id: t.box.tolist() for t in seen}, [t.track_id for t in gone], tracker._motion.boxes()


@pytest.mark.parametrize("stride", [1, 5])
@pytest.mark.parametrize("name", sorted(SCENES))
def test_tracks_are_those_of_the_matrix_filter(name: str, stride: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tracker over the same frames with each filter: the same ids seen and gone in every frame, the
    same boxes, the same predictions."""
    scene = SCENES[name]()
    ours = list(_tracked(scene, stride))
    monkeypatch.setattr(tracker_module, "BoxMotion", ReferenceMotion)
    theirs = list(_tracked(scene, stride))
    assert len(ours) == len(theirs)
    for (seen, gone, predicted), (seen_before, gone_before, predicted_before) in zip(ours, theirs, strict=True):
        assert seen == seen_before and gone == gone_before
        _same(predicted, predicted_before)
    ids = {track_id for seen, _, _ in ours for track_id in seen}
    assert len(ids) >= (20 if name == "crowd" else 10)  # a scene with many tracks, not an empty one

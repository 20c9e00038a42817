"""The tracker at the frame rates edge boxes run: fast objects, few frames, gaps, confirmation in time."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks._tracking import count_crossings, highway
from common.config import TrackerConfig
from services.rules.tracker import ByteTracker

ASPECT = 16 / 9


def box(cx: float, cy: float, w: float = 0.06, h: float = 0.06 * ASPECT * 0.55) -> list[float]:
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def drive(
    tracker: ByteTracker, centres: list[tuple[float, float] | None], fps: float, class_id: int = 2
) -> list[set[int]]:
    """One object at each centre (None: missed), one frame each; the ids reported per frame."""
    reported = []
    for index, centre in enumerate(centres):
        boxes = [] if centre is None else [box(*centre)]
        seen, _ = tracker.update(boxes, [class_id] * len(boxes), [0.9] * len(boxes), index / fps, ASPECT)
        reported.append({track.track_id for track in seen})
    return reported


def fast_car(fps: float, sizes_per_second: float = 15, frames: int = 8) -> list[tuple[float, float] | None]:
    size = np.sqrt(0.06 * ASPECT * 0.06 * ASPECT * 0.55) / ASPECT  # the box's size in units of the frame width
    return [(0.1 + i * sizes_per_second * size / fps, 0.5) for i in range(frames)]


def test_a_fast_object_keeps_its_id_when_its_boxes_no_longer_overlap() -> None:
    path = fast_car(fps=10)  # 1.5 box sizes between frames: IoU with the last box is 0
    ids = set().union(*drive(ByteTracker(TrackerConfig()), path, fps=10))
    assert len(ids) == 1
    iou_only = set().union(*drive(ByteTracker(TrackerConfig(match_distance=0)), path, fps=10))
    assert iou_only == set()  # IoU alone starts a track every frame, and none lives long enough to exist


def test_two_fast_objects_passing_each_other_keep_their_ids() -> None:
    tracker = ByteTracker(TrackerConfig())
    size = 0.06
    ids: list[list[int]] = []
    for index in range(12):
        east, west = 0.1 + index * 1.2 * size, 0.9 - index * 1.2 * size  # opposite lanes, one box apart
        seen, _ = tracker.update([box(east, 0.45), box(west, 0.55)], [2, 2], [0.9, 0.9], index / 10, ASPECT)
        ids.append([t.track_id for t in sorted(seen, key=lambda t: t.box[1])])
    assert ids[-1] == ids[3] and len(set(ids[-1])) == 2


def test_a_lost_track_is_refound_where_its_motion_says() -> None:
    path = fast_car(fps=10, sizes_per_second=5, frames=14)
    gap = [centre if not 4 <= i < 9 else None for i, centre in enumerate(path)]  # unseen for 0.5 s
    reported = drive(ByteTracker(TrackerConfig()), gap, fps=10)
    assert reported[3] == reported[9] == reported[-1] and len(reported[-1]) == 1
    # beyond max_age_s it is gone, and a new id takes over
    tracker = ByteTracker(TrackerConfig(max_age_s=0.3))
    reported = drive(tracker, gap, fps=10)
    assert reported[-1] and reported[-1] != reported[3]


def test_confirmation_in_time_not_frames() -> None:
    two_frames_at_5fps = drive(ByteTracker(TrackerConfig()), fast_car(fps=5, frames=2), fps=5)
    assert two_frames_at_5fps[1]  # 0.2 s apart: it exists
    two_frames_at_30fps = drive(ByteTracker(TrackerConfig()), fast_car(fps=30, frames=3), fps=30)
    assert [bool(ids) for ids in two_frames_at_30fps] == [False, False, True]  # min_hits: 3


def test_an_unconfirmed_track_ends_at_its_first_miss() -> None:
    tracker = ByteTracker(TrackerConfig())
    tracker.update([box(0.5, 0.5)], [2], [0.9], 0.0, ASPECT)  # a false positive, once
    tracker.update([], [], [], 0.1, ASPECT)
    assert tracker.tracks == []


def test_another_class_is_never_matched_by_distance() -> None:
    tracker = ByteTracker(TrackerConfig())
    drive(tracker, fast_car(fps=10, frames=4), fps=10, class_id=2)
    (car,) = tracker.tracks
    seen, _ = tracker.update([box(0.1 + 4 * 0.045, 0.5)], [0], [0.9], 0.4, ASPECT)  # a person where the car goes
    assert car not in seen and len(tracker.tracks) == 2


@pytest.fixture(scope="module")
def road():  # type: ignore[no-untyped-def]
    return highway(seconds=60)


@pytest.mark.parametrize(("fps", "stride", "least_share"), [(30, 1, 0.95), (10, 3, 0.95), (5, 6, 0.85)])
def test_highway_counts_hold_at_low_frame_rates(road, fps: int, stride: int, least_share: float) -> None:  # type: ignore[no-untyped-def]
    """Cars moving 50-100 px between frames at 10 fps are counted, once each, at 30, 10 and 5 fps."""
    counted = count_crossings(road, stride)
    assert road.truth and least_share * road.truth <= len(counted.crossings) <= 1.05 * road.truth, fps
    ids = [track_id for _, track_id, _ in counted.crossings]
    assert len(ids) == len(set(ids))


def test_iou_alone_collapses_on_the_highway_at_10fps(road) -> None:  # type: ignore[no-untyped-def]
    """What the tracker replaced: matching by IoU alone counts fewer than two thirds of the cars at 10 fps."""
    counted = count_crossings(road, 3, TrackerConfig(match_distance=0))
    assert road.truth and len(counted.crossings) < 0.67 * road.truth

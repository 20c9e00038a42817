"""The tracker and line rules on real detections: YOLOX-Nano on the whole shared clip, at full rate
and with frames far apart (every 10th frame of the clip is 2.5 fps)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from benchmarks._tracking import Counted, Scene, count_crossings, identity_scores, people_frames

pytestmark = pytest.mark.slow

# The clip's crossings of its three lines (PEOPLE_LINES: y = 0.3, 0.5, 0.7 of the height, "in" is down), counted
# by eye: a slit-scan image along each line (the rows just above, on and below it against time) shows every body
# that passes it and which way; each doubtful one was followed frame by frame. Counted: whoever is in view and whose
# feet get past the line within the clip. Left out as doubtful, about 6 more: people half out of the frame at its
# left or right edge, and feet reaching a line in the clip's last frames.
BY_EYE = {
    ("y30", "in"): 11,
    ("y30", "out"): 9,
    ("y50", "in"): 10,
    ("y50", "out"): 8,
    ("y70", "in"): 13,
    ("y70", "out"): 7,
}
# The one known shortfall: YOLOX-Nano misses the smallest people, those walking towards the camera at the far line;
# it finds 5 of those 11 (YOLOv8n-int8 finds 9). Every other line and direction is found as counted by eye.
FAR_IN = ("y30", "in")
FAR_IN_FOUND = 5


@pytest.fixture(scope="module")
def clip(shared_dir: Path) -> Scene:  # shared_dir: fails clearly where the clip is missing
    return people_frames()


@pytest.fixture(scope="module")
def full_rate(clip: Scene) -> Counted:
    return count_crossings(clip)


def test_people_crossing_three_lines_of_the_hall(clip: Scene, full_rate: Counted) -> None:
    counted = Counter((line, direction) for line, _, direction in full_rate.crossings)
    off = {key: counted[key] - truth for key, truth in BY_EYE.items()}
    # within one of the count by eye (a float's difference between ONNX Runtime builds may tip one person)
    assert all(abs(difference) <= 1 for key, difference in off.items() if key != FAR_IN), off
    assert FAR_IN_FOUND - 1 <= counted[FAR_IN] <= BY_EYE[FAR_IN], off
    assert set(counted) == set(BY_EYE), counted  # nothing counted on a line that does not exist
    assert count_crossings(clip).crossings == full_rate.crossings  # deterministic
    per_line = {(line, track_id) for line, track_id, _ in full_rate.crossings}
    assert len(per_line) == len(full_rate.crossings), "a track counted twice on one line"


@pytest.mark.parametrize(("stride", "tolerance"), [(2, 0.15), (5, 0.15), (10, 0.25), (20, 0.25)])
def test_counts_hold_with_frames_far_apart(clip: Scene, full_rate: Counted, stride: int, tolerance: float) -> None:
    counted = count_crossings(clip, stride)
    reference = len(full_rate.crossings)
    assert abs(len(counted.crossings) - reference) <= tolerance * reference, (len(counted.crossings), reference)


def test_identities_hold_at_every_fifth_frame(clip: Scene, full_rate: Counted) -> None:
    scores = identity_scores(full_rate, count_crossings(clip, 5))
    assert scores["idf1"] >= 0.8, scores


def test_counts_do_not_depend_on_the_load(clip: Scene, full_rate: Counted) -> None:
    """At 30 fps the same line once counted 8/19 with inference keeping 90 % of frames and 5/15 at 62 %:
    with 40 % of the frames dropped at random, and at the 8 fps of an edge box, counts stay within 15 %."""
    reference = len(full_rate.crossings)
    for seed in (1, 2, 3):
        dropped = len(count_crossings(clip, drop=0.4, seed=seed).crossings)
        assert abs(dropped - reference) <= 0.15 * reference, (seed, dropped, reference)
    fps = (len(clip.frames) - 1) / (clip.frames[-1].t - clip.frames[0].t)
    at_8_fps = len(count_crossings(clip, stride=round(fps / 8)).crossings)
    assert abs(at_8_fps - reference) <= 0.15 * reference, (at_8_fps, reference)

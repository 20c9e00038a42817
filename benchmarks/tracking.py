"""tracking: line counts and identities when frames are far apart.

The shared clip (a crowd, 25 fps) through YOLOX-Nano once; then the rules service's tracker and line
rules over every frame (the reference), and over every 2nd, 5th, 10th and 20th frame. For each stride:
crossings counted on three lines against the reference's, and IDF1 / ID switches / MOTA of the tracks
against the reference tracks on the frames both saw (py-motmetrics). The same for a synthetic highway
(cars 5-16 of their own sizes per second, misses, jitter and false positives; truth known) at 30, 10 and
5 fps. Baseline, same run: the same tracker matching by IoU alone (``match_distance: 0``), which is
ByteTrack's association. Last, the tracker's time per frame with 50 objects in view.
"""

from __future__ import annotations

from benchmarks._tracking import (
    Counted,
    count_crossings,
    highway,
    identity_scores,
    moving_objects,
    people_frames,
)
from common.config import TrackerConfig

TITLE = "tracker + line rules at strides 1-20: counts and IDF1 against full rate; IoU-only baseline"
OURS = TrackerConfig()
IOU_ONLY = TrackerConfig(match_distance=0)


def run(quick: bool) -> dict[str, float]:
    figures: dict[str, float] = {}
    people = people_frames()
    for name, config in (("ours", OURS), ("iou_only", IOU_ONLY)):
        reference = count_crossings(people, 1, config)
        figures[f"people_{name}_count_stride_1"] = len(reference.crossings)
        for stride in (2, 5, 10) if quick else (2, 5, 10, 20):
            counted = count_crossings(people, stride, config)
            _compare(figures, f"people_{name}_stride_{stride}", reference, counted)
            print(f"  people {name:<8} stride {stride:>2}: {len(counted.crossings):>3} crossings", flush=True)
    road = highway(seconds=30 if quick else 120)
    figures["highway_truth"] = float(road.truth or 0)
    for name, config in (("ours", OURS), ("iou_only", IOU_ONLY)):
        for fps, stride in ((30, 1), (10, 3), (5, 6)):
            counted = count_crossings(road, stride, config)
            figures[f"highway_{name}_{fps}fps_count_share"] = len(counted.crossings) / max(1, road.truth or 0)
    crowd = moving_objects(count=50, frames=100 if quick else 300)
    ours_time = count_crossings(crowd, 1, OURS).seconds_per_frame
    baseline_time = count_crossings(crowd, 1, IOU_ONLY).seconds_per_frame
    figures["ms_per_frame_50_objects"] = ours_time * 1e3
    figures["ms_per_frame_50_objects_iou_only"] = baseline_time * 1e3
    figures["time_ratio"] = ours_time / baseline_time
    return figures


def _compare(figures: dict[str, float], prefix: str, reference: Counted, counted: Counted) -> None:
    figures[f"{prefix}_count_share"] = len(counted.crossings) / max(1, len(reference.crossings))
    for metric, value in identity_scores(reference, counted).items():
        figures[f"{prefix}_{metric}"] = value

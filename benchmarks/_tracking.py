"""Scenes for measuring tracking and line counting, shared by the ``tracking`` benchmark and its tests.

- ``people_frames``: YOLOX-Nano's detections on every frame of the shared clip (a crowd in a hall).
- ``highway``: a synthetic road seen from the side at 30 fps, cars moving 5-16 of their own sizes per
  second (50-100 px between frames at 10 fps, as on a real highway), with the detector's failings:
  jittered boxes, missed detections, weak scores and false positives. Its truth is known.
- ``count_crossings``: the rules service's tracker and line rule over such frames, at any stride.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from common.config import TrackerConfig, parse_config
from services.rules.counts import CountStore
from services.rules.engine import CameraRules
from services.rules.moment import Moment, Observed
from services.rules.tracker import ByteTracker, Track

FloatArray = npt.NDArray[np.float64]
WALL = dt.datetime(2026, 11, 23, 12, 0)
PEOPLE_LINES = {f"y{int(y * 100)}": [[0.0, y], [1.0, y]] for y in (0.3, 0.5, 0.7)}
HIGHWAY_LINE = {"gantry": [[0.5, 0.2], [0.5, 0.8]]}


@dataclasses.dataclass(frozen=True)
class DetectedFrame:
    index: int  # frame number in the source at its full rate
    t: float  # capture time, seconds
    boxes: FloatArray  # [N, 4] normalised xyxy
    class_ids: npt.NDArray[np.int64]
    scores: FloatArray


@dataclasses.dataclass(frozen=True)
class Scene:
    frames: list[DetectedFrame]
    aspect: float  # width / height
    lines: dict[str, list[list[float]]]
    labels: dict[int, str]
    truth: int | None = None  # crossings of all lines, where known


@dataclasses.dataclass
class Counted:
    crossings: list[tuple[str, int, str]]  # (line, track id, direction)
    tracks: dict[int, dict[int, FloatArray]]  # frame index -> track id -> box (reported tracks)
    seconds_per_frame: float  # tracker update alone


def people_frames() -> Scene:
    """The shared clip through YOLOX-Nano (persons, score >= 0.1), one DetectedFrame per frame at 25 fps."""
    import av

    from common.assets import find_asset
    from common.config import ModelConfig
    from services.inference.detector import Detector

    detector = Detector.from_config(ModelConfig(path="yolox_nano.onnx", score_threshold=0.1, classes=["person"]))
    frames = []
    with av.open(str(find_asset("people.mp4"))) as container:
        stream = container.streams.video[0]
        aspect = stream.codec_context.width / stream.codec_context.height
        for index, frame in enumerate(container.decode(stream)):
            found = detector.detect([frame.to_ndarray(format="bgr24")])[0][0]
            frames.append(
                DetectedFrame(
                    index,
                    index / 25,
                    np.asarray(found.boxes, np.float64),
                    np.asarray(found.class_ids, np.int64),
                    np.asarray(found.scores, np.float64),
                )
            )
    return Scene(frames, aspect, PEOPLE_LINES, {0: "person"})


def highway(seconds: float = 60, seed: int = 1, fps: float = 30) -> Scene:
    """Cars in four lanes (two each way) on a 1280x720 view, crossing a gantry line at x = 0.5."""
    rng = np.random.default_rng(seed)
    width, height = 1280.0, 720.0
    lanes = [(0.38, 1), (0.46, 1), (0.56, -1), (0.64, -1)]  # (centre y, direction)
    cars = []  # (lane y, direction, entry time, speed px/s, width px)
    for y, direction in lanes:
        entry = rng.uniform(0, 1.5)
        while entry < seconds:
            speed, car_width = rng.uniform(500, 1000), rng.uniform(80, 120)
            cars.append((y, direction, entry, speed, car_width))
            entry += rng.uniform(1.0, 3.0)  # headway: never two cars of one lane on one spot
    frames, crossings = [], 0
    for index in range(int(seconds * fps)):
        t = index / fps
        boxes, scores = [], []
        for y, direction, entry, speed, car_width in cars:
            travelled = (t - entry) * speed - car_width
            if travelled < -car_width or travelled > width + car_width:
                continue
            x = travelled if direction == 1 else width - travelled
            car_height = car_width * 0.55
            if rng.random() < 0.1:
                continue  # missed by the detector
            jitter = rng.normal(0, 0.03, 4) * np.array([car_width, car_height, car_width, car_height])
            cx, cy, w, h = np.array([x, y * height, car_width, car_height]) + jitter
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            scores.append(rng.uniform(0.2, 0.5) if rng.random() < 0.1 else rng.uniform(0.55, 0.95))
        for _ in range(rng.poisson(0.3)):  # false positives: one frame each, anywhere
            cx, cy, w = rng.uniform(0, width), rng.uniform(0.25, 0.75) * height, rng.uniform(60, 120)
            boxes.append([cx - w / 2, cy - w * 0.3, cx + w / 2, cy + w * 0.3])
            scores.append(rng.uniform(0.5, 0.7))
        normalised = np.array(boxes, np.float64).reshape(-1, 4) / np.array([width, height, width, height])
        frames.append(
            DetectedFrame(index, t, normalised, np.full(len(scores), 2, np.int64), np.array(scores, np.float64))
        )
    end = len(frames) / fps
    for _y, _direction, entry, speed, car_width in cars:
        centre_at_line = entry + (width / 2 + car_width) / speed  # when its centre reaches x = 0.5
        crossings += 0.5 < centre_at_line < end - 0.5  # away from the ends: a tracker can tell
    return Scene(frames, width / height, HIGHWAY_LINE, {2: "car"}, truth=int(crossings))


def count_crossings(
    scene: Scene, stride: int = 1, tracker: TrackerConfig | None = None, *, drop: float = 0.0, seed: int = 0
) -> Counted:
    """Every ``stride``-th frame through a tracker and the scene's line rules; what they counted.
    ``drop``: the share of those frames skipped at random (fixed ``seed``), as a loaded inference does."""
    rules = {name: {"type": "line", "line": line} for name, line in scene.lines.items()}
    site = {"site": {"name": "bench"}, "cameras": {"cam": {"url": "rtsp://unused/1", "rules": rules}}}
    engine = CameraRules("cam", parse_config(yaml.safe_dump(site)).cameras["cam"], CountStore())
    byte_tracker = ByteTracker(tracker or TrackerConfig())
    counted = Counted([], {}, 0.0)
    elapsed = 0.0

    def observed(track: Track) -> Observed:
        return Observed(track.track_id, scene.labels[track.class_id], track.score, _box(track.box), _box(track.origin))

    frames = scene.frames[::stride]
    if drop:
        keep = np.random.default_rng(seed).random(len(frames)) >= drop
        frames = [frame for frame, kept in zip(frames, keep, strict=True) if kept]
    for frame in frames:
        started = time.perf_counter()
        seen, gone = byte_tracker.update(frame.boxes, frame.class_ids, frame.scores, frame.t, scene.aspect)
        elapsed += time.perf_counter() - started
        counted.tracks[frame.index] = {track.track_id: track.box.copy() for track in seen}
        moment = Moment(frame.t, WALL, [observed(s) for s in seen], [observed(g) for g in gone])
        for draft in engine.step(moment):
            if draft.event_type == "line_cross" and draft.track is not None:
                counted.crossings.append((draft.rule, draft.track.track_id, str(draft.attributes["direction"])))
    counted.seconds_per_frame = elapsed / max(1, len(frames))
    return counted


def _box(values: Any) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = (float(v) for v in values)
    return x1, y1, x2, y2


def identity_scores(reference: Counted, hypothesis: Counted) -> dict[str, float]:
    """IDF1, ID switches and MOTA of ``hypothesis`` against ``reference`` on the frames both saw (boxes
    matched at IoU >= 0.5), with py-motmetrics. Its own IoU helper uses a function numpy 2 removed, so
    the distance matrices come from the tracker's."""
    import motmetrics

    from services.rules.tracker import iou_matrix

    accumulator = motmetrics.MOTAccumulator(auto_id=True)
    for index, hypothesis_tracks in hypothesis.tracks.items():
        reference_tracks = reference.tracks.get(index, {})
        truth_ids, truth_boxes = list(reference_tracks), np.array(list(reference_tracks.values())).reshape(-1, 4)
        ids, boxes = list(hypothesis_tracks), np.array(list(hypothesis_tracks.values())).reshape(-1, 4)
        iou = iou_matrix(truth_boxes, boxes)
        accumulator.update(truth_ids, ids, np.where(iou >= 0.5, 1.0 - iou, np.nan))
    summary = motmetrics.metrics.create().compute(accumulator, metrics=["idf1", "num_switches", "mota"])
    return {
        "idf1": float(summary["idf1"].iloc[0]),
        "id_switches": float(summary["num_switches"].iloc[0]),
        "mota": float(summary["mota"].iloc[0]),
    }


def moving_objects(count: int = 50, frames: int = 300, fps: float = 10, seed: int = 3) -> Scene:
    """``count`` objects walking about a 16:9 frame (random headings, 1-3 box sizes per second), for timing."""
    rng = np.random.default_rng(seed)
    position = rng.uniform(0.1, 0.9, (count, 2))
    size = rng.uniform(0.03, 0.06, count)
    heading = rng.uniform(0, 2 * np.pi, count)
    speed = rng.uniform(1, 3, count) * size
    result = []
    for index in range(frames):
        heading += rng.normal(0, 0.1, count)
        position += np.stack([np.cos(heading), np.sin(heading)], axis=1) * speed[:, None] / fps
        position = np.clip(position, 0.05, 0.95)
        half = np.stack([size / 2, size], axis=1)
        boxes = np.concatenate([position - half, position + half], axis=1) + rng.normal(0, 0.002, (count, 4))
        result.append(
            DetectedFrame(index, index / fps, boxes, np.zeros(count, np.int64), rng.uniform(0.3, 0.95, count))
        )
    return Scene(result, 16 / 9, {}, {0: "person"})

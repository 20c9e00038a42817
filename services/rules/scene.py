"""A camera's Scene (its tracks, line counts and zone occupancy as rules sees them now), and how often rules
publishes one.

Its only listener is the console's live view, which draws at most the camera's ``fps`` pictures a second
and never more than 15 (the console's ``MAX_LIVE_FPS``); a Scene per frame beyond that is built, encoded and
sent for nothing (at 50 objects about 0.2 ms, a seventh of rules' CPU per frame). So each camera's Scenes
are paced on the frames' own clock, per model (each model's tracks are a Scene of their own), on the schedule
of ``common.pacing.FrameRateGate``, as ingest paces its frames: a frame up to a quarter period early takes the
next slot, so a camera sending at its ``fps`` loses none to jitter. A Scene
is not a frame: frames through rules are its Health counter ``frames``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from common.pacing import FrameRateGate
from contracts import Detections, LineCounts, Scene, TrackedObject
from services.rules.labels import bounded, bounded_lines
from services.rules.tracker import Track

__all__ = ["SCENE_MAX_FPS", "SceneRate", "scene_of", "unit_box"]

SCENE_MAX_FPS = 15.0  # the console's MAX_LIVE_FPS: a live view never shows more


class SceneRate:
    """Whether a frame of one camera gets a Scene: at most ``fps`` (and SCENE_MAX_FPS) a second per model,
    on the schedule of :class:`~common.pacing.FrameRateGate` (ingest's ``fps`` too).

    >>> rate = SceneRate()
    >>> [rate.due("people", frame / 30, fps=10) for frame in range(7)]  # 30 frames a second, 10 Scenes
    [True, False, False, True, False, False, True]
    >>> [rate.due("cars", frame / 10, fps=10) for frame in range(3)]  # each model its own
    [True, True, True]
    """

    def __init__(self) -> None:
        self._gates: dict[str, FrameRateGate] = {}  # model -> its schedule (the frames' clock, seconds)

    def due(self, model: str, t: float, fps: float) -> bool:
        """Whether the frame at ``t`` seconds (the frames' monotonic clock) gets a Scene; books the next if so."""
        fps = min(fps, SCENE_MAX_FPS)
        gate = self._gates.get(model)
        if gate is None or gate.period != 1.0 / fps:  # new, or the camera's fps changed with a reload
            gate = self._gates[model] = FrameRateGate(fps)
        return gate.admit(t)

    def forget(self, model: str) -> None:
        """A model no longer tracked here: its next Scene, if it comes back, is due at once."""
        self._gates.pop(model, None)


def scene_of(
    camera: str,
    detections: Detections,
    seen: Sequence[Track],
    lines: Mapping[str, Mapping[str, Mapping[str, int]]],
    zones: dict[str, dict[str, int]],
) -> Scene:
    """The Scene of ``camera`` after ``detections``: the confirmed tracks ``seen`` in them, the line counts
    (line -> label -> "in"/"out") and the zones' occupancy (zone -> label -> objects), each rule's in at most
    MAX_MAP_ENTRIES labels (``services.rules.labels``)."""
    labels = detections.labels
    return Scene(
        camera=camera,
        model=detections.model,
        frame=detections.frame,
        tracks=[
            TrackedObject(
                track_id=track.track_id,
                label=labels.get(track.class_id, str(track.class_id)),
                score=min(1.0, round(track.score, 4)),
                box=unit_box(track.box),
            )
            for track in seen
        ],
        lines={
            line: {label: LineCounts(in_=c.get("in", 0), out=c.get("out", 0)) for label, c in bounded_lines(by).items()}
            for line, by in lines.items()
        },
        zones={zone: bounded(occupancy) for zone, occupancy in zones.items()},
    )


def unit_box(box: npt.NDArray[np.floating[Any]] | Sequence[float]) -> tuple[float, float, float, float]:
    """A track's box is its last detection's, and ``Detections`` does not bound boxes (our inference
    clips them, another sender may not); a Scene's and an Event's boxes are 0-1.

    >>> unit_box(np.array([-0.1, 0.2, 0.5, 1.25]))
    (0.0, 0.2, 0.5, 1.0)
    """
    x1, y1, x2, y2 = box.tolist() if isinstance(box, np.ndarray) else map(float, box)  # one call, not four
    return min(1.0, max(0.0, x1)), min(1.0, max(0.0, y1)), min(1.0, max(0.0, x2)), min(1.0, max(0.0, y2))

"""rules_cpu: the rules service's CPU per frame, by the path it runs per Detections message.

One camera, a line and a zone rule (as ``pipeline``'s), 10 or 50 people walking about (``moving_objects``),
their detections as Detections messages at 10 fps, the camera's ``fps``; each through ``RulesService.handle``
— tracker, rules, events into the outbox, counts over time, and the Scene built, encoded and sent (a
publisher with nobody listening) — timed in CPU seconds after the first 30 frames.

Baseline, same run: the same path as rules ran it before (``as_before``): the tracker's motion model as
one 8x8 matrix Kalman filter per track (``MatrixKalmanBaseline``, the filter the tracker had, kept here
line for line; ``tests/unit/test_kalman.py`` checks ours against it) and a Scene for every frame. The
sides alternate, back to back in each round; ``ratio`` is the median of the rounds' ours / baseline at 50
objects (goal: <= 0.5, the CPU halved). ``*_30fps`` figures: frames at 30 fps from a camera set to 10,
where rules publishes a Scene for one frame in three. ``*_ms_<part>``: where a frame's CPU goes at 50
objects (tracker, rules, Scene, the rest of ``handle``), measured apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import numpy.typing as npt
import yaml

from benchmarks._tracking import moving_objects
from common.bus import Publisher
from common.config import load_config
from contracts import Detections, FrameRef
from services.rules.service import RulesService

TITLE = "rules CPU per frame (tracker, rules, Scene) at 10 and 50 objects; baseline: matrix Kalman, a Scene a frame"
FPS = 10
WARM_UP = 30  # frames not timed: the tracks are being born
RULES = {
    "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"]},
    "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]], "classes": ["person"]},
}
T0_S = 1_795_392_000  # 2026-11-23 00:00 UTC

FloatArray = npt.NDArray[np.float64]


class MatrixKalmanBaseline:
    """The baseline's motion model: the tracker's filter until the closed form replaced it (commit 8554382),
    one track's constant-velocity Kalman filter as 8x8 matrices with an inverse per update; its arithmetic
    kept as it was."""

    MEASUREMENT_STD = 0.05
    ACCELERATION_STD = 2.0
    H = np.hstack([np.eye(4), np.zeros((4, 4))])

    def __init__(self, box: FloatArray, max_speed: float) -> None:
        self.x = np.concatenate([_measure(box), np.zeros(4)])
        size = _size(self.x)
        position, velocity = (self.MEASUREMENT_STD * size) ** 2, (max_speed * size) ** 2
        self.P = np.diag([position, position, position, position, velocity, velocity, velocity / 4, velocity / 4])

    def predict(self, dt: float) -> FloatArray:
        if dt > 0:
            F = np.eye(8)
            F[:4, 4:] = np.eye(4) * dt
            q = (self.ACCELERATION_STD * _size(self.x)) ** 2
            G = np.concatenate([np.full(4, dt * dt / 2), np.full(4, dt)])
            Q = np.diag(G * G * q)
            Q[:4, 4:] = Q[4:, :4] = np.diag(np.full(4, dt**3 / 2 * q))
            self.x = F @ self.x
            self.P = F @ self.P @ F.T + Q
        return self.box()

    def update(self, box: FloatArray) -> None:
        z = _measure(box)
        R = np.eye(4) * (self.MEASUREMENT_STD * _size(z)) ** 2
        S = self.H @ self.P @ self.H.T + R
        K = self.P @ self.H.T @ np.linalg.inv(S)
        self.x = self.x + K @ (z - self.H @ self.x)
        self.P = (np.eye(8) - K @ self.H) @ self.P

    def speed(self) -> float:
        return float(np.hypot(self.x[4], self.x[5])) / _size(self.x)

    def box(self) -> FloatArray:
        cx, cy, w, h = self.x[:4]
        w, h = max(w, 1e-6), max(h, 1e-6)
        return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def _measure(box: FloatArray) -> FloatArray:
    """xyxy -> (cx, cy, w, h)."""
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2, box[2] - box[0], box[3] - box[1]])


def _size(state: FloatArray) -> float:
    return float(np.sqrt(max(state[2] * state[3], 1e-8)))


class MatrixMotionBaseline:
    """``services.rules.kalman.BoxMotion``'s interface over one ``MatrixKalmanBaseline`` per track, in the
    tracker's place: the tracker as it ran before, per track and per frame."""

    def __init__(self, max_speed: float) -> None:
        self.max_speed = max_speed
        self.filters: list[MatrixKalmanBaseline] = []

    def __len__(self) -> int:
        return len(self.filters)

    def add(self, boxes: FloatArray) -> None:
        self.filters += [MatrixKalmanBaseline(box, self.max_speed) for box in boxes.reshape(-1, 4)]

    def keep(self, rows: npt.NDArray[np.bool_]) -> None:
        self.filters = [kalman for kalman, kept in zip(self.filters, rows, strict=True) if kept]

    def predict(self, dt: float) -> FloatArray:
        return np.array([kalman.predict(dt) for kalman in self.filters]).reshape(-1, 4)

    def update(self, rows: npt.NDArray[np.intp], boxes: FloatArray) -> None:
        for row, box in zip(rows, boxes.reshape(-1, 4), strict=True):
            self.filters[row].update(box)

    def speeds(self, rows: npt.NDArray[np.intp]) -> FloatArray:
        return np.array([self.filters[row].speed() for row in rows])

    def boxes(self) -> FloatArray:
        return np.array([kalman.box() for kalman in self.filters]).reshape(-1, 4)


@contextlib.contextmanager
def as_before() -> Iterator[None]:
    """Rules as it ran before, meanwhile: the matrix Kalman filter per track, a Scene for every frame."""
    from services.rules import tracker
    from services.rules.scene import SceneRate

    with (
        mock.patch.object(tracker, "BoxMotion", MatrixMotionBaseline),
        mock.patch.object(SceneRate, "due", _every_frame),
    ):
        yield


def _every_frame(*_: object) -> bool:
    """``SceneRate.due`` as it was: a Scene for every frame."""
    return True


def run(quick: bool) -> dict[str, float]:
    frames = 300 if quick else 1200
    rounds = 3 if quick else 5
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-rules-cpu-") as temporary:
        folder = Path(temporary)
        for objects, fps in ((10, FPS), (50, FPS), (50, 3 * FPS)):
            messages = detections(objects, frames, fps)
            best = {"ours": float("inf"), "baseline": float("inf")}
            ratios = []
            for round_ in range(rounds):
                seconds = {}
                for side in ("ours", "baseline") if round_ % 2 == 0 else ("baseline", "ours"):
                    with as_before() if side == "baseline" else contextlib.nullcontext():
                        seconds[side] = cpu_per_frame(folder / f"{objects}-{fps}-{round_}-{side}", messages)
                    best[side] = min(best[side], seconds[side])
                ratios.append(seconds["ours"] / seconds["baseline"])
            suffix = f"{objects}" + ("" if fps == FPS else f"_{fps}fps")
            figures[f"cpu_ms_per_frame_{suffix}"] = best["ours"] * 1e3
            figures[f"baseline_cpu_ms_per_frame_{suffix}"] = best["baseline"] * 1e3
            figures[f"ratio_{suffix}"] = statistics.median(ratios)
            print(f"  {suffix:>8}: {best['ours'] * 1e3:.3f} ms ours, {best['baseline'] * 1e3:.3f} baseline", flush=True)
        figures["ratio"] = figures["ratio_50"]
        messages = detections(50, frames, FPS)
        for side in ("ours", "baseline"):
            with as_before() if side == "baseline" else contextlib.nullcontext():
                parts = breakdown(folder / f"parts-{side}", messages)
            prefix = "" if side == "ours" else "baseline_"
            figures |= {f"{prefix}50_ms_{part}": seconds * 1e3 for part, seconds in parts.items()}
    return figures


def detections(objects: int, frames: int, fps: float) -> list[Detections]:
    """``objects`` people walking on camera ``cam`` (1280x720), ``frames`` Detections ``fps`` a second."""
    scene = moving_objects(count=objects, frames=frames, fps=fps, seed=3)
    messages = []
    for index, frame in enumerate(scene.frames):
        at_ns = int(index / fps * 1e9)
        ref = FrameRef(
            camera="cam", seq=index + 1, capture_ns=T0_S * 10**9 + at_ns, monotonic_ns=at_ns + 1,
            segment="edgesight.bench.cam", slot=0, generation=2, width=1280, height=720, stride=3840,
        )  # fmt: skip
        boxes = np.clip(frame.boxes, 0, 1).astype("<f4")
        messages.append(Detections.from_arrays(ref, "m", boxes, frame.class_ids, frame.scores, labels={0: "person"}))
    return messages


def _service(folder: Path) -> RulesService:
    """A rules service with the defaults (counts over time on) for camera ``cam`` at 10 fps."""
    folder.mkdir(parents=True)
    site = {
        "site": {"name": "bench", "state_dir": str(folder / "state"), "shm_dir": str(folder / "shm")},
        "logging": {"level": "warning"},
        "cameras": {"cam": {"url": "rtsp://camera/stream", "fps": FPS, "rules": RULES}},
    }
    path = folder / "site.yaml"
    path.write_text(yaml.safe_dump(site))
    return RulesService(load_config(path))


def cpu_per_frame(folder: Path, messages: list[Detections], parts: dict[str, float] | None = None) -> float:
    """CPU seconds per message through ``handle`` (after WARM_UP), a Scene publisher with nobody listening;
    ``parts`` (CPU seconds, added to as they run) start from 0 when the timing does."""
    service = _service(folder)

    async def drive() -> float:
        async with Publisher(f"pub+bind:inproc://bench-rules-cpu-{id(service)}", "rules") as publisher:
            service.publisher = publisher
            for message in messages[:WARM_UP]:
                await service.handle(message)
            if parts is not None:
                parts.update(dict.fromkeys(parts, 0.0))
            started = time.process_time()
            for message in messages[WARM_UP:]:
                await service.handle(message)
            return (time.process_time() - started) / (len(messages) - WARM_UP)

    try:
        return asyncio.run(drive())
    finally:
        service.outbox.close()
        service.store.close()


def breakdown(folder: Path, messages: list[Detections]) -> dict[str, float]:
    """CPU seconds per message in the tracker, the rules, the Scene, and the rest of ``handle``."""
    from services.rules.engine import CameraRules
    from services.rules.tracker import ByteTracker

    inside = {"track": 0.0, "rules": 0.0, "scene": 0.0}
    with (
        mock.patch.object(ByteTracker, "update", _timed(ByteTracker.update, inside, "track")),
        mock.patch.object(CameraRules, "step", _timed(CameraRules.step, inside, "rules")),
        mock.patch.object(RulesService, "_publish_scene", _timed_async(RulesService._publish_scene, inside, "scene")),
    ):
        total = cpu_per_frame(folder, messages, inside)
    parts = {part: seconds / (len(messages) - WARM_UP) for part, seconds in inside.items()}
    return parts | {"other": total - sum(parts.values())}


def _timed(call: Callable[..., Any], inside: dict[str, float], part: str) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return call(*args, **kwargs)
        finally:
            inside[part] += time.process_time() - started

    return timed


def _timed_async(call: Callable[..., Awaitable[Any]], inside: dict[str, float], part: str) -> Callable[..., Any]:
    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.process_time()
        try:
            return await call(*args, **kwargs)
        finally:
            inside[part] += time.process_time() - started

    return timed

"""What a sender on the bus could do to inference and rules with FrameRefs and Detections, written as its
attacker would: each one is refused, bounded or dropped and counted, and the honest cameras go on."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client import REGISTRY

from common.config import ModelConfig, TrackerConfig, load_config
from common.errors import ShmError
from common.shm import FrameRingReader, FrameRingWriter, frame_bytes
from contracts import Detections, FrameRef, decode, encode
from contracts.errors import ContractError
from services.inference.detector import Detector
from services.inference.worker import ModelWorker, WorkerLinks
from services.rules.tracker import MAX_DETECTIONS_TRACKED, MAX_TRACKS, ByteTracker
from tests.conftest import write_site
from tests.support import frame_ref


def _detections(camera: str, boxes: Any, *, model: str = "people", t_ns: int = 10**9) -> Detections:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    ref = frame_ref(camera, 1, monotonic_ns=t_ns)
    return Detections.from_arrays(
        ref, model, boxes, np.zeros(len(boxes), np.int32), np.full(len(boxes), 0.9, np.float32)
    )


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_detections_with_a_box_or_score_that_is_no_number_is_refused(bad: float) -> None:
    """One NaN box once crashed rules (its heatmap took int() of it) after each restart."""
    with pytest.raises(ValueError, match="finite"):
        _detections("gate", [[bad, 0.1, 0.2, 0.2]])
    honest = encode(_detections("gate", [[0.1, 0.1, 0.2, 0.2]]))
    forged = honest.replace(np.float32(0.9).tobytes(), np.float32(bad).tobytes())  # the score, on the wire
    assert forged != honest
    with pytest.raises(ContractError, match="finite"):
        decode(forged)


def test_an_nv12_frame_with_odd_sides_is_refused() -> None:
    """OpenCV cannot convert it: in a batch it took the other cameras' frames down with it."""
    with pytest.raises(ValueError, match="even sides"):
        frame_ref("gate", 1, pixel_format="nv12", width=3, height=3, stride=3)


def test_a_frameref_naming_another_cameras_ring_is_refused(tmp_path: Path) -> None:
    """Else one camera's pixels were read, detected and published as another's."""
    with FrameRingWriter.create("t", "dock", slots=2, capacity=frame_bytes("bgr24", 64, 48), shm_dir=tmp_path) as ring:
        honest = ring.write(np.zeros((48, 64, 3), np.uint8))
        with FrameRingReader(ring.name, shm_dir=tmp_path) as reader:
            assert reader.view(honest).ref.camera == "dock"
            forged = msgspec.structs.replace(honest, camera="gate")
            with pytest.raises(ShmError, match="holds camera 'dock', not 'gate'"):
                reader.view(forged)


def test_a_flood_of_boxes_is_bounded_before_the_tracker() -> None:
    """4096 boxes a frame took seconds of the tracker and stalled every camera's rules."""
    rng = np.random.default_rng(1)
    tracker = ByteTracker(TrackerConfig(min_hits=1))
    started = time.process_time()
    for frame in range(8):
        corners = rng.random((4096, 2)) * 0.9
        boxes = np.hstack([corners, corners + 0.05])
        scores = rng.random(4096) * 0.5 + 0.5
        seen, _ = tracker.update(boxes, np.zeros(4096, int), scores, frame * 0.1)
        assert len(seen) <= MAX_TRACKS
    assert len(tracker.tracks) <= MAX_TRACKS
    assert time.process_time() - started < 30  # a guard against a hang, not a timing: ~1 s here
    # the most confident detections are the ones kept
    strongest = np.full(600, 0.5)
    strongest[7] = 0.99
    boxes = np.tile([[0.4, 0.4, 0.45, 0.5]], (600, 1)) + np.linspace(0, 0.4, 600)[:, None] * [1, 0, 1, 0]
    fresh = ByteTracker(TrackerConfig(min_hits=1))
    seen, _ = fresh.update(boxes, np.zeros(600, int), strongest, 0.0)
    assert len(seen) == MAX_DETECTIONS_TRACKED and any(track.score == pytest.approx(0.99) for track in seen)


def test_a_clock_that_goes_back_ends_the_tracks_instead_of_keeping_them_forever() -> None:
    tracker = ByteTracker(TrackerConfig(min_hits=1, max_age_s=1.0))
    box = [[0.1, 0.1, 0.2, 0.3]]
    for step in range(3):
        tracker.update(box, [0], [0.9], 1000.0 + step * 0.1)
    assert len(tracker.tracks) == 1
    _, gone = tracker.update([[0.6, 0.6, 0.7, 0.8]], [0], [0.9], 10.0)  # 990 s back
    assert [track.track_id for track in gone] == [1], "the old track was not ended"
    assert [track.track_id for track in tracker.tracks] == [2], "the new frame starts afresh"
    tracker.update(np.zeros((0, 4)), [], [], 12.0)  # 2 s on the new clock: the new track ages out as usual
    assert tracker.tracks == []


def test_rules_drops_detections_of_model_names_past_the_bound(tmp_path: Path) -> None:
    """A new model name per message left a tracker, items and Scenes behind each: 1.3 GB in 300 messages."""
    from services.rules.service import MAX_MODELS_PER_CAMERA, RulesService

    line = {"door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}}
    service = RulesService(
        load_config(write_site(tmp_path, {"cameras": {"gate": {"url": "rtsp://h/1", "rules": line}}}))
    )
    dropped = {"camera": "gate", "reason": "models"}
    before = REGISTRY.get_sample_value("edgesight_rules_detections_dropped_total", dropped) or 0.0

    async def flood() -> None:
        for number in range(MAX_MODELS_PER_CAMERA + 40):
            await service.handle(_detections("gate", [[0.1, 0.1, 0.2, 0.3]], model=f"m{number}"))

    asyncio.run(flood())
    service.outbox.close()
    service.store.close()
    camera = service.cameras["gate"]
    assert len(camera.trackers) == MAX_MODELS_PER_CAMERA
    assert len(camera.items) == MAX_MODELS_PER_CAMERA
    assert REGISTRY.get_sample_value("edgesight_rules_detections_dropped_total", dropped) == before + 40


def test_a_forged_early_frame_time_does_not_starve_another_camera() -> None:
    """Pending frames once went oldest first by the sender's own monotonic_ns: a flood dated 0 always won."""
    engine = Detector.from_config(ModelConfig(path="yolox_nano.onnx", threads=1))
    ran: list[str] = []

    def infer(model: str, detector: Detector, refs: list[FrameRef]) -> list[Detections]:
        ran.extend(ref.camera for ref in refs)
        time.sleep(0.01)
        return []

    async def unused(*args: object, **kwargs: object) -> None:
        raise AssertionError("not called")

    links = WorkerLinks(infer=infer, publish=unused, load=lambda name: engine, audit=unused)
    worker = ModelWorker("people", ModelConfig(path="yolox_nano.onnx", max_batch=1), [engine], links)

    async def feed() -> None:
        runner = asyncio.ensure_future(worker.run())
        for seq in range(1, 60):
            worker.offer(frame_ref("honest", seq, monotonic_ns=time.monotonic_ns()))
            worker.offer(frame_ref("flood", seq, monotonic_ns=0))  # always "older" by its own word
            await asyncio.sleep(0.012)
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)

    try:
        asyncio.run(feed())
    finally:
        engine.close()
    assert ran.count("honest") >= 0.3 * len(ran), f"honest {ran.count('honest')} of {len(ran)}"

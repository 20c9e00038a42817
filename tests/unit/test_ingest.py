"""The ingest service's pure parts: rate gate, motion, output size, sources and credentials."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from common.errors import AssetError
from common.pacing import FrameRateGate
from services.ingest.gates import ConsumerGate
from services.ingest.motion import MotionDetector
from services.ingest.pixels import output_size
from services.ingest.source import Source


@pytest.mark.parametrize(("source_fps", "limit"), [(25, 10), (30, 7.5), (25, 24), (10, 25)])
def test_rate_gate_holds_the_limit_and_spreads_frames(source_fps: float, limit: float) -> None:
    gate = FrameRateGate(limit)
    times = [i / source_fps for i in range(int(source_fps * 20))]
    admitted = [t for t in times if gate.admit(t)]
    expected = min(limit, source_fps) * 20
    assert abs(len(admitted) - expected) <= 1
    gaps = np.diff(admitted)
    # evenly: no gap longer than one limit period plus one source frame (no bursts, no holes)
    assert gaps.max() <= 1 / limit + 1 / source_fps + 1e-9
    assert gaps.min() >= min(1 / limit, 1 / source_fps) * 0.74


def test_rate_gate_jitter_does_not_lose_frames() -> None:
    gate = FrameRateGate(10)
    rng = np.random.default_rng(1)
    times = np.arange(0, 30, 0.1) + rng.uniform(-0.02, 0.02, 300)  # a 10 fps camera with network jitter
    assert sum(gate.admit(float(t)) for t in times) >= 295


def test_rate_gate_restarts_after_a_pause() -> None:
    gate = FrameRateGate(5)
    assert gate.admit(0.0)
    assert gate.admit(100.0)  # a backlog is not let through in a burst
    assert not gate.admit(100.01)


def test_motion_detector_scores_and_boxes_the_change() -> None:
    detector = MotionDetector(threshold=30, min_area=0.001)
    still = np.full((100, 200), 80, np.uint8)
    assert detector.update(still) == (0.0, None)
    assert detector.update(still) == (0.0, None)
    moved = still.copy()
    moved[20:40, 150:190] = 200
    score, box = detector.update(moved)
    assert type(score) is float  # the FrameRef's field: the bus encodes no numpy scalar
    assert score == pytest.approx(20 * 40 / (100 * 200))
    assert box == pytest.approx((0.75, 0.2, 0.95, 0.4))
    # noise below the threshold is not motion
    noisy = (still + np.random.default_rng(0).integers(0, 20, still.shape)).astype(np.uint8)
    assert detector.update(noisy) == (0.0, None)


def test_motion_is_scored_on_the_decoders_own_luma_plane() -> None:
    """A YUV frame's Y plane sampled every n-th pixel (no scaler): about the rows asked for; any other
    format through FFmpeg's scaler, to exactly the size asked for."""
    import av

    from services.ingest.motion import small_luma

    grey = np.random.default_rng(2).integers(0, 255, (1080, 1920), dtype=np.uint8)
    yuv = av.VideoFrame.from_ndarray(grey, format="gray").reformat(format="yuv420p")
    luma = yuv.to_ndarray()[:1080]  # yuv420p as an array: the Y plane, then U and V
    assert np.array_equal(small_luma(yuv, 200, 356), luma[::5, ::5])  # 1080 // 200 = 5: 216 rows
    bgr = av.VideoFrame.from_ndarray(np.zeros((1080, 1920, 3), np.uint8), format="bgr24")
    assert small_luma(bgr, 200, 356).shape == (200, 356)


@pytest.mark.parametrize(
    ("size", "max_width", "slot", "expected"),
    [
        ((854, 480), None, (1920, 1080), (854, 480)),
        ((1920, 1080), 640, (1920, 1080), (640, 360)),
        ((3840, 2160), None, (1920, 1080), (1920, 1080)),  # fits the ring instead of failing
        ((1080, 1920), None, (1920, 1080), (608, 1080)),  # portrait camera
    ],
)
def test_output_size(
    size: tuple[int, int], max_width: int | None, slot: tuple[int, int], expected: tuple[int, int]
) -> None:
    assert output_size(*size, max_width, *slot) == expected


def test_credentials_are_used_but_never_shown() -> None:
    source = Source.parse("rtsp://admin:s3cr%40t@10.0.0.5:554/stream1")
    assert source.url == "rtsp://admin:s3cr%40t@10.0.0.5:554/stream1"
    assert str(source) == "rtsp://admin:***@10.0.0.5:554/stream1"
    assert source.redact("401 for rtsp://admin:s3cr@t@host") == "401 for rtsp://admin:***@host"
    configured = Source.parse("rtsp://10.0.0.5/s", username="op", password="p@ss:word", transport="udp")
    assert configured.url == "rtsp://op:p%40ss%3Aword@10.0.0.5/s"
    assert "p@ss" not in str(configured) and "p%40ss" not in str(configured)
    assert configured.open_arguments(5)["options"]["rtsp_transport"] == "udp"


def test_sources_by_kind(shared_dir: Path) -> None:
    assert Source.parse("https://example.com/live/index.m3u8").kind == "http"
    assert Source.parse("/dev/video0").open_arguments(5)["format"] == "v4l2"
    found = Source.parse("people.mp4")  # on the asset search path
    assert (found.kind, Path(found.url)) == ("file", shared_dir / "media" / "people.mp4")
    assert not found.is_live
    with pytest.raises(AssetError, match=r"nosuch\.mp4 not found"):
        Source.parse("nosuch.mp4")
    with pytest.raises(AssetError, match="unsupported camera URL scheme 'srt'"):
        Source.parse("srt://host:9000")


def test_ingest_groups_split_the_cameras(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.config import INGEST_GROUP_VARIABLE, parse_config
    from services.ingest.service import IngestService

    config = parse_config(
        "site: {name: s}\n"
        "cameras:\n"
        "  a: {url: rtsp://h/a}\n"
        "  b: {url: rtsp://h/b, ingest_group: east}\n"
        "  c: {url: rtsp://h/c, ingest_group: east}\n"
        "  d: {url: rtsp://h/d, ingest_group: east, enabled: false}\n"
    )
    assert list(IngestService(config).cameras()) == ["a"]
    monkeypatch.setenv(INGEST_GROUP_VARIABLE, "east")
    assert list(IngestService(config).cameras()) == ["b", "c"]


def test_consumer_gate_holds_the_decoder_two_frames_ahead_of_the_answers() -> None:
    gate, abort = ConsumerGate(window=2, timeout_s=5.0), threading.Event()
    assert gate.wait(abort) == 0  # nothing sent: no wait
    gate.sent(1)
    gate.sent(2)
    released: list[float] = []
    waiter = threading.Thread(target=lambda: released.append(gate.wait(abort)))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not released  # two unanswered: the third frame waits
    gate.answered(1)
    waiter.join(2)
    assert released == [0]
    gate.sent(3)
    gate.answered(3)  # inference skipped to the newest: 2 is answered with it
    assert gate.wait(abort) == 0
    gate.sent(4)
    gate.sent(5)
    gate.clear()  # a new session waits for nothing it sent before
    assert gate.wait(abort) == 0


def test_consumer_gate_gives_up_on_a_frame_nobody_answers() -> None:
    gate, abort = ConsumerGate(window=2, timeout_s=0.2), threading.Event()
    gate.sent(1)
    gate.sent(2)
    started = time.monotonic()
    assert gate.wait(abort) == 1  # frame 1 counted as taken after 0.2 s
    assert 0.15 < time.monotonic() - started < 1.0
    gate.sent(3)
    abort.set()  # stopping: no wait at all
    started = time.monotonic()
    assert gate.wait(abort) == 0
    assert time.monotonic() - started < 0.1


def test_a_looping_file_that_cannot_seek_is_reopened(
    shared_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from services.ingest.decode import DecodeSession
    from tests.media import elementary_stream, encode_clip

    caplog.set_level("INFO", logger="services.ingest.decode")
    raw = tmp_path / "clip.h264"  # FFmpeg refuses seek(0) on a raw H.264 stream
    elementary_stream(shared_dir / "media" / "people.mp4", raw, frames=10)
    with DecodeSession(Source(str(raw), "file"), timeout_s=5, loop=True, camera="raw") as session:
        session.open()
        frames = session.frames()
        decoded = [next(frames)[0] for _ in range(35)]  # three and a half passes
        frames.close()
    assert all((frame.width, frame.height) == (854, 480) for frame in decoded)
    reopened = [r for r in caplog.records if r.getMessage() == "cannot seek in the file: looping by reopening it"]
    assert len(reopened) == 1 and getattr(reopened[0], "camera", "") == "raw"  # once, not once a loop

    caplog.clear()  # an MP4 still loops by seeking
    mp4 = tmp_path / "clip.mp4"
    encode_clip(shared_dir / "media" / "people.mp4", mp4, "libx264", frames=10)
    with DecodeSession(Source(str(mp4), "file"), timeout_s=5, loop=True) as session:
        session.open()
        frames = session.frames()
        assert len([next(frames) for _ in range(25)]) == 25
        frames.close()
    assert not [r for r in caplog.records if r.name == "services.ingest.decode"]


def test_a_looping_file_without_frames_fails_instead_of_spinning(shared_dir: Path, tmp_path: Path) -> None:
    from services.ingest.decode import DecodeSession, SourceError
    from tests.media import elementary_stream

    raw = tmp_path / "clip.h264"
    elementary_stream(shared_dir / "media" / "people.mp4", raw, frames=10)
    with DecodeSession(Source(str(raw), "file"), timeout_s=5, loop=True) as session:
        session.open()
        session._demux = lambda: iter(())  # type: ignore[method-assign]  # every pass ends at once
        with pytest.raises(SourceError, match="no decodable frame"):
            next(session.frames())

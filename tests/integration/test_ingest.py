"""The ingest service against a real RTSP server (gst-rtsp-server) serving the shared clip."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.bus import Subscriber
from common.errors import StaleFrameError
from common.shm import FrameRingReader
from contracts import CameraStatus, FrameRef, topic
from tests.conftest import free_port
from tests.integration.conftest import RtspServer, Services
from tests.media import digest, elementary_stream, encode_clip, frame_digests, segment_hls
from tests.support import deadline, http_get, scaled

pytestmark = pytest.mark.slow


class Watcher:
    """Records every FrameRef and CameraStatus of the site, with the monotonic time it arrived."""

    def __init__(self) -> None:
        self.frames: dict[str, list[tuple[float, FrameRef]]] = {}
        self.statuses: dict[str, list[CameraStatus]] = {}

    def state(self, camera: str) -> str | None:
        statuses = self.statuses.get(camera)
        return statuses[-1].state if statuses else None

    async def until(self, condition: Callable[[], bool], seconds: float, what: str) -> float:
        """Waits for ``condition`` (``seconds``, scaled); returns the monotonic time it became true."""
        end = deadline(seconds)
        while not condition():
            if time.monotonic() > end:
                raise AssertionError(f"not within {scaled(seconds):g} s: {what}; states {self.summary()}")
            await asyncio.sleep(0.05)
        return time.monotonic()

    def frames_after(self, camera: str, since: float) -> int:
        return sum(1 for arrived, _ in self.frames.get(camera, []) if arrived > since)

    def summary(self) -> dict[str, str]:
        return {camera: f"{s[-1].state} ({s[-1].error})" for camera, s in self.statuses.items()}


@contextlib.asynccontextmanager
async def watch(site: Services, on_frame: Callable[[FrameRef], None] | None = None) -> AsyncIterator[Watcher]:
    watcher = Watcher()

    async def receive(subscriber: Subscriber) -> None:
        async for received in subscriber:
            message = received.message
            if isinstance(message, FrameRef):
                if on_frame is not None:
                    on_frame(message)
                watcher.frames.setdefault(message.camera, []).append((time.monotonic(), message))
            elif isinstance(message, CameraStatus):
                watcher.statuses.setdefault(message.camera, []).append(message)

    async with Subscriber(site.config.bus.subscribe, "test", [topic("frames"), topic("cameras")], hwm=1000) as sub:
        task = asyncio.create_task(receive(sub))
        try:
            yield watcher
        finally:
            task.cancel()


def test_rtsp_frames_match_the_file_and_the_rate_limit_holds(
    long_clip: Path, shared_dir: Path, rtsp_servers: Callable[..., RtspServer], services: Callable[..., Services]
) -> None:
    server = rtsp_servers({"cam": long_clip})
    url = server.url("cam").replace("rtsp://", "rtsp://viewer:hunter2@")
    camera = {"url": url, "fps": 10, "decoder": "h264_v4l2m2m", "ring_slots": 16}
    site = services({"cameras": {"dock": camera}})
    expected = frame_digests(shared_dir / "media" / "people.mp4")
    started_ns = time.time_ns()
    site.start("broker")
    base = site.start("ingest")
    reader = FrameRingReader("edgesight.test.dock", shm_dir=site.config.site.shm_dir)
    digests: list[str] = []
    stale = 0

    def read(ref: FrameRef) -> None:  # at once, as a consumer would: the ring holds 1.6 s
        nonlocal stale
        try:
            digests.append(digest(reader.copy(ref)))
        except StaleFrameError:
            stale += 1

    async def scenario() -> list[tuple[float, FrameRef]]:
        async with watch(site, read) as watcher:
            first = await watcher.until(lambda: "dock" in watcher.frames, 20, "first frame")
            await asyncio.sleep(10.5)
            return [(t, ref) for t, ref in watcher.frames["dock"] if first <= t < first + 10]

    window = asyncio.run(scenario())
    refs = [ref for _, ref in window]
    # the fps limit: 10 per second of the camera's own clock, within 10 %
    span = [ref for ref in refs if ref.monotonic_ns - refs[0].monotonic_ns < 10e9]
    assert 90 <= len(span) <= 110, len(span)
    assert [r.seq for r in refs] == sorted({r.seq for r in refs})
    assert all(b.monotonic_ns > a.monotonic_ns for a, b in itertools.pairwise(refs))
    assert all(started_ns < r.capture_ns < time.time_ns() for r in refs)
    assert {(r.width, r.height, r.pixel_format) for r in refs} == {(854, 480, "bgr24")}
    # the pixels are the file's: every frame read from shared memory is a frame of a direct decode
    assert stale == 0 and len(digests) >= 90
    assert sum(d in expected for d in digests) == len(digests)
    # a crowd walks: motion is seen and boxed
    assert sum(r.motion > 0.001 and r.motion_box is not None for r in refs) > len(refs) / 2
    # the requested hardware decoder does not exist here: one line, then software
    log = site.log("ingest")
    assert log.count("hardware decoder unavailable, decoding in software") == 1
    _, metrics = http_get(f"{base}/metrics")
    assert 'edgesight_camera_up{camera="dock"} 1.0' in metrics
    assert 'edgesight_camera_frames_dropped_total{camera="dock",reason="rate_limit"}' in metrics
    assert "edgesight_camera_decode_seconds_count" in metrics and "edgesight_camera_convert_seconds_count" in metrics
    # the password reaches the camera only
    assert "hunter2" not in log and "hunter2" not in metrics
    assert "viewer:***@" in log


def test_server_restart_reconnects_and_other_cameras_never_stop(
    long_clip: Path, rtsp_servers: Callable[..., RtspServer], services: Callable[..., Services]
) -> None:
    server_a = rtsp_servers({"cam": long_clip})
    server_b = rtsp_servers({"cam": long_clip})
    live = {"fps": 5, "max_backoff_s": 2, "stall_timeout_s": 4}
    site = services({"cameras": {"a": {"url": server_a.url("cam"), **live}, "b": {"url": server_b.url("cam"), **live}}})
    site.start("broker")
    base = site.start("ingest")

    async def scenario() -> tuple[float, float]:
        async with watch(site) as watcher:
            await watcher.until(lambda: "a" in watcher.frames and "b" in watcher.frames, 20, "both streaming")
            server_a.kill()
            killed = time.monotonic()
            await watcher.until(lambda: watcher.state("a") in ("backoff", "stalled"), 10, "a notices")
            await asyncio.sleep(max(0.0, killed + 3 - time.monotonic()))
            server_a.start()  # the same port, 3 s later
            back = time.monotonic()
            streaming = await watcher.until(lambda: watcher.frames_after("a", back) > 0, 15, "a streams again")
            await asyncio.sleep(1)
            arrivals = [t for t, _ in watcher.frames["b"] if t > killed - 1]
            longest_gap = max(b - a for a, b in itertools.pairwise(arrivals))
            return streaming - back, longest_gap

    recovered_in, longest_gap_b = asyncio.run(scenario())
    assert recovered_in < 5, f"camera a streamed again {recovered_in:.1f} s after its server returned"
    assert longest_gap_b < 1.0, f"camera b paused for {longest_gap_b:.2f} s"
    _, metrics = http_get(f"{base}/metrics")
    reconnects = dict(re.findall(r'^edgesight_camera_reconnects_total\{camera="(\w+)"\} (\S+)$', metrics, re.M))
    assert float(reconnects["a"]) >= 1
    assert float(reconnects["b"]) == 0  # exported at 0 from the start, never increased


def test_unreachable_camera_joins_when_it_appears(
    long_clip: Path, rtsp_servers: Callable[..., RtspServer], services: Callable[..., Services]
) -> None:
    present = rtsp_servers({"cam": long_clip})
    late_port = free_port()
    site = services(
        {
            "cameras": {
                "late": {"url": f"rtsp://127.0.0.1:{late_port}/cam", "fps": 5, "max_backoff_s": 1},
                "present": {"url": present.url("cam"), "fps": 5},
            }
        }
    )
    site.start("broker")
    site.start("ingest")

    async def scenario() -> None:
        async with watch(site) as watcher:
            await watcher.until(lambda: "present" in watcher.frames, 20, "present streams")
            await watcher.until(lambda: watcher.state("late") == "backoff", 10, "late in backoff")
            assert "Connection refused" in watcher.statuses["late"][-1].error
            rtsp_servers({"cam": long_clip}, port=late_port)
            await watcher.until(lambda: "late" in watcher.frames, 10, "late streams")
            assert watcher.state("late") == "streaming"

    asyncio.run(scenario())


def test_bad_sources_get_a_clear_state_and_one_log_line(
    shared_dir: Path,
    tmp_path: Path,
    long_clip: Path,
    rtsp_servers: Callable[..., RtspServer],
    services: Callable[..., Services],
) -> None:
    clip = (shared_dir / "media" / "people.mp4").read_bytes()
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(clip[: len(clip) // 2])
    corrupted = tmp_path / "corrupted.mp4"
    corrupted.write_bytes(b"\0" * 4096 + clip[4096:])
    server = rtsp_servers({"cam": long_clip})
    retry = {"max_backoff_s": 1}
    cameras: dict[str, dict[str, Any]] = {
        "truncated": {"url": str(truncated), **retry},
        "corrupted": {"url": str(corrupted), **retry},
        "wrong-path": {"url": server.url("nosuch"), **retry},
        "good": {"url": server.url("cam"), "fps": 5},
    }
    site = services({"cameras": cameras})
    site.start("broker")
    base = site.start("ingest")

    async def scenario() -> Watcher:
        async with watch(site) as watcher:
            await watcher.until(lambda: "good" in watcher.frames, 20, "good streams")
            await asyncio.sleep(6)  # several retries of each bad source
            return watcher

    watcher = asyncio.run(scenario())
    assert site.processes["ingest"].poll() is None
    errors = {camera: watcher.statuses[camera][-1] for camera in ("truncated", "corrupted", "wrong-path")}
    assert {status.state for status in errors.values()} <= {"backoff", "connecting"}
    assert "truncated, corrupted or not a video" in errors["truncated"].error
    assert "truncated, corrupted or not a video" in errors["corrupted"].error
    assert "404 Not Found" in errors["wrong-path"].error
    log = site.log("ingest")
    for camera in errors:
        assert log.count(f'camera={camera} logger=services.ingest.camera msg="camera unavailable"') == 1, log
    _, metrics = http_get(f"{base}/metrics")
    for camera in errors:
        reconnects = float(metrics.split(f'edgesight_camera_reconnects_total{{camera="{camera}"}} ')[1].split()[0])
        assert 2 <= reconnects <= 15, f"{camera}: {reconnects} attempts in ~7 s"  # retrying, not spinning
    assert watcher.state("good") == "streaming"


def test_hls_over_http_and_h265_over_rtsp(
    shared_dir: Path,
    tmp_path: Path,
    rtsp_servers: Callable[..., RtspServer],
    services: Callable[..., Services],
) -> None:
    clip = shared_dir / "media" / "people.mp4"
    hevc = tmp_path / "people_h265.mp4"
    encode_clip(clip, hevc, "libx265")
    hls = tmp_path / "hls"
    hls.mkdir()
    segment_hls(clip, hls)
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(hls)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server = rtsp_servers({"hevc": f"{hevc}:h265"})
        cameras = {
            "hls": {"url": f"http://127.0.0.1:{port}/index.m3u8", "fps": 5},
            "hevc": {"url": server.url("hevc"), "fps": 5},
        }
        site = services({"cameras": cameras})
        site.start("broker")
        site.start("ingest")

        async def scenario() -> Watcher:
            async with watch(site) as watcher:
                await watcher.until(lambda: {"hls", "hevc"} <= watcher.frames.keys(), 30, "both stream")
                await watcher.until(lambda: len(watcher.statuses.get("hevc", [])) > 0, 5, "a status")
                return watcher

        watcher = asyncio.run(scenario())
    finally:
        web.terminate()
        web.wait()
    codecs = {camera: {s.codec for s in statuses if s.codec} for camera, statuses in watcher.statuses.items()}
    assert codecs["hevc"] == {"hevc"}
    assert codecs["hls"] == {"h264"}
    for camera in ("hls", "hevc"):
        _, ref = watcher.frames[camera][-1]
        assert (ref.width, ref.height) == (854, 480)


def test_a_frozen_camera_is_detected_as_stalled_and_reconnected(
    long_clip: Path, rtsp_servers: Callable[..., RtspServer], services: Callable[..., Services]
) -> None:
    server = rtsp_servers({"cam": long_clip})
    camera = {"url": server.url("cam"), "fps": 5, "stall_timeout_s": 2, "max_backoff_s": 1}
    site = services({"cameras": {"frozen": camera}})
    site.start("broker")
    site.start("ingest")
    assert server.process is not None

    async def scenario() -> None:
        async with watch(site) as watcher:
            await watcher.until(lambda: "frozen" in watcher.frames, 20, "streaming")
            server.process.send_signal(signal.SIGSTOP)  # the connection stays open; nothing more arrives
            try:
                await watcher.until(lambda: watcher.state("frozen") == "stalled", 6, "stalled")
                assert watcher.statuses["frozen"][-1].error == "no frame for 2 s"
            finally:
                server.process.send_signal(signal.SIGCONT)
            thawed = time.monotonic()
            await watcher.until(lambda: watcher.frames_after("frozen", thawed + 0.5) > 0, 10, "streaming again")

    asyncio.run(scenario())
    assert site.log("ingest").count("camera stalled") == 1


def test_a_missing_file_camera_does_not_stop_the_others_in_its_group(
    shared_dir: Path, tmp_path: Path, services: Callable[..., Services]
) -> None:
    """It used to crash-loop the whole ingest process: now it retries alone, and joins once the file is there."""
    late = tmp_path / "late.mp4"
    cameras = {
        "good": {"url": str(shared_dir / "media" / "people.mp4"), "fps": 5, "loop": True},
        "late": {"url": str(late), "max_backoff_s": 1, "loop": True},
    }
    site = services({"cameras": cameras})
    site.start("broker")
    site.start("ingest")

    async def scenario() -> Watcher:
        async with watch(site) as watcher:
            await watcher.until(lambda: "good" in watcher.frames, 20, "good streams")
            await watcher.until(lambda: bool(watcher.statuses.get("late")), 10, "late reports its state")
            assert site.processes["ingest"].poll() is None
            assert "No such file" in watcher.statuses["late"][-1].error
            late.write_bytes((shared_dir / "media" / "people.mp4").read_bytes())
            await watcher.until(lambda: "late" in watcher.frames, 20, "late streams once its file is there")
            return watcher

    watcher = asyncio.run(scenario())
    assert watcher.state("good") == "streaming"
    assert site.log("ingest").count("camera source not found") == 1


def test_a_looping_file_that_cannot_seek_is_reopened_without_a_gap(
    shared_dir: Path, tmp_path: Path, services: Callable[..., Services]
) -> None:
    """FFmpeg refuses to seek in a raw H.264 stream; looping used to fail at every end of file (PermissionError
    from seek(0)) and the camera backed off before each loop. Now the file is reopened in place."""
    clip = tmp_path / "short.h264"
    elementary_stream(shared_dir / "media" / "people.mp4", clip, frames=25)  # one second: a loop every few frames
    site = services({"cameras": {"raw": {"url": str(clip), "fps": 10, "loop": True}}})
    site.start("broker")
    base = site.start("ingest")

    async def scenario() -> tuple[Watcher, float]:
        async with watch(site) as watcher:
            first = await watcher.until(lambda: "raw" in watcher.frames, 20, "first frame")
            await asyncio.sleep(5)
            return watcher, first

    watcher, first = asyncio.run(scenario())
    arrivals = [arrived for arrived, _ in watcher.frames["raw"] if arrived >= first]
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # 10 fps by the clock (the stream has no timestamps); a backoff alone would be 0.4-0.6 s
    assert len(arrivals) >= 30 and max(gaps) < scaled(0.4), (len(arrivals), max(gaps))
    assert [s.state for s in watcher.statuses["raw"] if s.state != "streaming"] in ([], ["connecting"])
    _, metrics = http_get(f"{base}/metrics")
    decoded = float(metrics.split('edgesight_camera_decode_seconds_count{camera="raw"} ')[1].split()[0])
    assert decoded >= 4 * 25, decoded  # several loops, not one pass
    assert 'edgesight_camera_reconnects_total{camera="raw"} 0.0' in metrics
    log = site.log("ingest")
    assert "camera unavailable" not in log and "crashed" not in log
    assert log.count("cannot seek in the file: looping by reopening it") == 1, log

"""``ingest_decode``: the ingest service decoding 1, 2 and 4 1080p H.264 files into shared memory,
against a bare PyAV decode loop over the same files in the same run.

The baseline is the least a decoder for the models must do: one process per stream, ``decode``
and ``to_ndarray("bgr24")`` and nothing else. The ingest service does that on one decode thread
per camera in one process, plus the motion score, the copy into the shm slot and a FrameRef on
the bus. Files are read as fast as they decode (``realtime: false``) with no rate limit, so both
sides are bound by the CPU; aggregate frames/s and CPU seconds per frame are reported.
"""

from __future__ import annotations

import asyncio
import fractions
import multiprocessing
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks._site import service_command, start, stop, write_site
from common.assets import find_asset
from common.bus import Subscriber
from contracts import CameraStatus, FrameRef, topic

TITLE = "1080p H.264 files into shared memory: the ingest service vs a bare PyAV decode loop"

_TICKS = os.sysconf("SC_CLK_TCK")


def make_clip(frames: int) -> Path:
    """The shared clip scaled to 1920x1080 and encoded as H.264 (cached between runs)."""
    path = Path(tempfile.gettempdir()) / "edgesight-bench" / f"people_1080p_{frames}.mp4"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.mp4")
    with av.open(str(find_asset("people.mp4"))) as source, av.open(str(partial), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 1920, 1080, "yuv420p"
        stream.options = {"preset": "veryfast", "crf": "23"}
        written = 0
        while written < frames:
            source.seek(0)
            for frame in source.decode(video=0):
                if written == frames:
                    break
                big = frame.reformat(width=1920, height=1080, format="yuv420p")
                big.pts, big.time_base = written, fractions.Fraction(1, 25)
                out.mux(stream.encode(big))
                written += 1
        out.mux(stream.encode(None))
    partial.rename(path)
    return path


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _bare_loop(path: str, out: Any) -> None:
    frames = 0
    first_wall = first_cpu = 0.0
    with av.open(path) as container:
        container.streams.video[0].thread_type = "AUTO"
        for frame in container.decode(video=0):
            frame.to_ndarray(format="bgr24")
            if frames == 0:  # clocks start at the first frame, as on the ingest side
                first_wall, first_cpu = time.perf_counter(), time.process_time()
            frames += 1
    out.put((frames, first_wall, time.perf_counter(), time.process_time() - first_cpu))


def baseline(path: Path, streams: int) -> tuple[int, float, float]:
    """(frames, wall seconds, CPU seconds) of ``streams`` bare loops in parallel processes."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_bare_loop, args=(str(path), results)) for _ in range(streams)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    # perf_counter is CLOCK_MONOTONIC: comparable between processes
    wall = max(end for _, _, end, _ in outcomes) - min(first for _, first, _, _ in outcomes)
    return sum(o[0] for o in outcomes), wall, sum(o[3] for o in outcomes)


def ingest(path: Path, streams: int, folder: Path) -> tuple[int, float, float]:
    """(frames, wall seconds, CPU seconds of the ingest process) for ``streams`` file cameras."""
    cameras = {f"cam{i}": {"url": str(path), "realtime": False, "fps": 120, "ring_slots": 8} for i in range(streams)}
    site, config = write_site(folder, f"ingest{streams}", {"cameras": cameras})
    broker = start("broker", site)
    try:
        return asyncio.run(_watch_ingest(service_command("ingest", site), config, streams))
    finally:
        stop([broker])


async def _watch_ingest(command: list[str], config: Any, streams: int) -> tuple[int, float, float]:
    frames = 0
    stopped: set[str] = set()
    async with Subscriber(config.bus.subscribe, "bench", [topic("frames"), topic("cameras")], hwm=100_000) as bus:
        await asyncio.sleep(0.5)  # the broker and the subscription settle
        process = await asyncio.create_subprocess_exec(*command)
        try:
            first_wall = first_cpu = 0.0
            while len(stopped) < streams:
                message = (await asyncio.wait_for(bus.receive(), 120)).message
                if isinstance(message, FrameRef):
                    if frames == 0:  # start the clocks at the first frame: not counting Python's start-up
                        first_wall, first_cpu = time.perf_counter(), _cpu_seconds(process.pid)
                    frames += 1
                elif isinstance(message, CameraStatus) and message.state == "stopped":
                    stopped.add(message.camera)
            wall, cpu = time.perf_counter() - first_wall, _cpu_seconds(process.pid) - first_cpu
        finally:
            process.terminate()
            await process.wait()
    return frames, wall, cpu


def run(quick: bool) -> dict[str, float]:
    clip = make_clip(100 if quick else 341)
    figures: dict[str, float] = {}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as folder:
        for streams in (1, 2) if quick else (1, 2, 4):
            base_frames, base_wall, base_cpu = baseline(clip, streams)
            our_frames, our_wall, our_cpu = ingest(clip, streams, Path(folder))
            base_fps, our_fps = base_frames / base_wall, our_frames / our_wall
            figures |= {
                f"streams{streams}_pyav_fps": base_fps,
                f"streams{streams}_ingest_fps": our_fps,
                f"streams{streams}_pyav_cpu_ms_per_frame": 1000 * base_cpu / base_frames,
                f"streams{streams}_ingest_cpu_ms_per_frame": 1000 * our_cpu / max(our_frames, 1),
                f"streams{streams}_ingest_frames": our_frames,
                f"streams{streams}_ratio": our_fps / base_fps,
            }
            ratios.append(our_fps / base_fps)
    figures["ratio"] = float(np.min(ratios))  # the worst stream count
    figures["cpu_count"] = float(os.cpu_count() or 0)
    return figures

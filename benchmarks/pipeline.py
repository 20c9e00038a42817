"""``pipeline``: ingest -> inference -> rules as separate processes (as ``edgesight run`` starts them)
against a naive single-process loop over the same frames, in the same run, on 1, 2 and 4 copies of the
shared clip.

Both sides: YOLOX-Nano (ONNX Runtime, CPU), a line and a zone rule per camera, the same tracker and rules
code. The clip is read as fast as the pipeline takes it (no realtime pacing, no fps limit), looping, for a
fixed window: ingest decodes ahead and publishes a frame once inference has answered the one before it
(``backpressure``, on by default for such files); ``newest_wins`` runs the same with backpressure off, as
fast as the CPU decodes. The monolith decodes, letterboxes, runs, decodes boxes, tracks and applies rules
to every frame in turn, round robin over the cameras. The split side runs twice: with the defaults (one
inference process sizing itself: engines and threads ``auto``, see ``common/models/sizing.py``) and
``tuned`` as #13 tuned it by hand for a CPU-only box (``run.inference_replicas`` one per core, each model
on ``threads: 1``).

Figures per stream count: frames/s through rules (split: Scene messages, one per frame rules handled;
monolith: frames through its loop), the ratio, CPU ms per frame through rules (every process of the
side), capture-to-event latency p50/p99 from the events' own timestamps (split: the event's frame
``capture_ns`` to its arrival on the bus; monolith: to its decision from the frame's due time at camera rate,
from its decode as fast as it goes), and peak RSS per service.
``ratio`` is the 2-stream one with the defaults (what a user gets), ``ratio_tuned`` the hand-tuned one,
``ratio_streams4`` the defaults at 4 streams; ``<prefix>_latency_ratio`` the defaults' p50 latency over the
loop's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import itertools
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np

from benchmarks._site import start, stop, write_site
from common.assets import find_asset
from common.bus import Subscriber
from common.config import INFERENCE_SHARD_VARIABLE, SiteConfig
from contracts import Event, Health, Scene, topic

TITLE = "ingest -> inference -> rules as processes vs one loop: YOLOX-Nano, a line and a zone, as fast as they go"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rules() -> dict[str, Any]:
    return {
        "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"]},
        "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]], "classes": ["person"]},
    }


@dataclasses.dataclass(frozen=True)
class Setup:
    """How the split side is configured."""

    name: str = "split"
    replicas: int | str = "auto"  # run.inference_replicas: processes splitting the cameras
    threads: int | str = "auto"  # models.people.threads
    engines: int | str = "auto"  # models.people.engines
    backpressure: bool = True


DEFAULTS = Setup()  # what a user gets: inference sizes itself (common/models/sizing.py)
TUNED = Setup("tuned", replicas=os.cpu_count() or 1, threads=1, engines=1)  # #13's hand tuning: a process per core
NEWEST_WINS = Setup("newest_wins", backpressure=False)


def _site(
    folder: Path, streams: int, *, realtime: bool = False, clip: str | None = None, setup: Setup = DEFAULTS
) -> tuple[Path, SiteConfig]:
    """Cameras on the clip: as fast as the pipeline takes it, or (``realtime``) at its own 25 fps, as a
    camera sends."""
    clip = clip or str(find_asset("people.mp4"))
    pace = {"realtime": True, "fps": 25} if realtime else {"realtime": False, "fps": 120}
    pace["backpressure"] = setup.backpressure
    cameras = {
        f"cam{i}": {
            "url": clip,
            "loop": True,
            **pace,
            "rules": _rules(),
            "motion": {"enabled": False},
        }
        for i in range(streams)
    }
    model = {"path": "yolox_nano.onnx", "classes": ["person"], "max_batch": 1, "threads": setup.threads}
    model["engines"] = setup.engines
    extra = {
        "models": {"people": model},
        "cameras": cameras,
        "uplink": {"jsonl": {"path": "events.jsonl"}},  # rules' events are acknowledged, as in a site
        "run": {"inference_replicas": setup.replicas},
    }
    path, config = write_site(folder, f"pipe{streams}{'rt' if realtime else ''}{setup.name}", extra)
    return path, config


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime


def _rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE / 2**20


# -- split: the services as processes ----------------------------------------------------------------
def split(
    streams: int,
    seconds: float,
    folder: Path,
    *,
    realtime: bool = False,
    clip: str | None = None,
    setup: Setup = DEFAULTS,
) -> dict[str, float]:
    site, config = _site(folder, streams, realtime=realtime, clip=clip, setup=setup)
    processes: dict[str, subprocess.Popen[bytes]] = {"broker": start("broker", site)}
    try:
        return asyncio.run(_measure_split(site, config, streams, seconds, processes))
    finally:
        stop(list(reversed(processes.values())))


async def _measure_split(
    site: Path, config: SiteConfig, streams: int, seconds: float, processes: dict[str, subprocess.Popen[bytes]]
) -> dict[str, float]:
    async with Subscriber(
        config.bus.subscribe, "bench", [topic("scene"), topic("events"), topic("health")], hwm=100_000
    ) as bus:
        for name in ("uplink", "rules", "inference", "ingest"):  # consumers first: nothing decoded unheard
            if name == "inference":  # as `edgesight run` starts its replicas
                count = config.run.inference_processes
                for index in range(count):
                    shard = {INFERENCE_SHARD_VARIABLE: f"{index}/{count}"}
                    processes[name if index == 0 else f"{name}@{index}"] = start(name, site, shard)
            else:
                processes[name] = start(name, site)
        # the handshake: the clock starts at the first Scene of every camera (models loaded, bus connected)
        waiting, deadline = {f"cam{i}" for i in range(streams)}, time.monotonic() + 120
        while waiting:
            try:
                message = (await asyncio.wait_for(bus.receive(), max(0.1, deadline - time.monotonic()))).message
            except asyncio.TimeoutError:
                raise RuntimeError(
                    f"no Scene from rules for {sorted(waiting)} within 120 s: is the pipeline up?"
                ) from None
            if isinstance(message, Scene):
                waiting.discard(message.camera)
        cpu_start = {name: _cpu_seconds(p.pid) for name, p in processes.items()}
        rss = {name: _rss_mb(p.pid) for name, p in processes.items()}
        # frames through rules: its Health counter, between the first and the last report of the window
        # (by its own uptime, so the Health period does not blur the rate)
        first: Health | None = None
        last: Health | None = None
        latencies = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            try:
                received = await asyncio.wait_for(bus.receive(), 1.0)
            except asyncio.TimeoutError:
                continue
            message = received.message
            if isinstance(message, Health) and message.service == "rules":
                first, last = first or message, message
                rss = {name: max(rss[name], _rss_mb(p.pid)) for name, p in processes.items()}
            elif isinstance(message, Event) and message.frame is not None:
                latencies.append((time.time_ns() - message.frame.capture_ns) / 1e6)
        wall = time.perf_counter() - started
        cpu = {name: _cpu_seconds(p.pid) - cpu_start[name] for name, p in processes.items()}
    if first is None or last is None or last.uptime_s <= first.uptime_s:
        raise RuntimeError("rules sent no Health during the window: is it running?")
    fps = (last.counters["frames"] - first.counters["frames"]) / (last.uptime_s - first.uptime_s)
    frames = fps * wall
    figures = {"fps": fps, "cpu_ms_per_frame": 1000 * sum(cpu.values()) / max(frames, 1)}
    figures |= _percentiles(latencies)
    figures |= {f"cpu_ms_per_frame_{name}": 1000 * value / max(frames, 1) for name, value in cpu.items()}
    figures |= {f"rss_mb_{name}": value for name, value in rss.items()}
    return figures


# -- monolith: one loop --------------------------------------------------------------------------------
@dataclasses.dataclass
class _Source:
    """One copy of the clip for the monolith: its decoder, tracker and rules."""

    container: Any
    frames: Iterator[Any]
    tracker: Any
    rules: Any
    clock: float = 0.0  # real-time mode: when its first frame was due
    offset: float = 0.0  # stream time of the clip's earlier loops
    pending: Any = None  # real-time mode: decoded, not due yet
    captured: float = 0.0  # real-time mode: when the frame returned last was sent by the "camera"

    def next(self) -> Any:
        try:
            return next(self.frames)
        except StopIteration:  # loop the clip, as the cameras of the split side do
            self.offset += float(self.container.streams.video[0].duration * self.container.streams.video[0].time_base)
            self.container.seek(0)
            self.frames = self.container.decode(video=0)
            return next(self.frames)

    def newest_due(self) -> Any:
        """Real-time mode: decode every frame due by now (H.264 must), keep the newest; wait for one if
        none is due yet, as a loop reading a camera would."""
        newest = None
        while True:
            frame, self.pending = self.pending or self.next(), None
            due = self.clock + self.offset + (frame.time or 0.0)
            now = time.perf_counter()
            if due > now:
                if newest is not None:
                    self.pending = frame  # the next one: not yet sent by the "camera"
                    return newest
                time.sleep(due - now)
                self.captured = due
                return frame
            newest, self.captured = frame, due


def monolith(streams: int, seconds: float, folder: Path, *, realtime: bool = False) -> dict[str, float]:
    from common.config import ModelConfig
    from services.inference.detector import Detector
    from services.rules.counts import CountStore
    from services.rules.engine import CameraRules
    from services.rules.moment import Moment, Observed
    from services.rules.tracker import ByteTracker

    _, config = _site(folder, streams, realtime=realtime)
    detector = Detector.from_config(ModelConfig(path="yolox_nano.onnx", classes=["person"]))
    labels: list[str] = list(detector.labels)
    now = dt.datetime.now()  # schedules: none here

    def observed(track: Any) -> Observed:
        x1, y1, x2, y2 = (float(v) for v in track.box)
        return Observed(track.track_id, labels[track.class_id], float(track.score), (x1, y1, x2, y2), None)

    sources = []
    for name, camera in config.cameras.items():
        container = av.open(camera.url)
        container.streams.video[0].thread_type = "AUTO"
        tracker = ByteTracker(config.tracker, itertools.count(1))
        sources.append(_Source(container, container.decode(video=0), tracker, CameraRules(name, camera, CountStore())))

    frames, latencies = 0, []
    wall_start = cpu_start = 0.0
    started_at = time.perf_counter()
    warm = 10  # first frames: model and decoder warm-up, outside the clock
    for source in itertools.cycle(sources):
        if realtime and not source.clock:
            source.clock = time.perf_counter()
        frame = source.newest_due() if realtime else source.next()
        decoded = time.perf_counter()
        # capture -> decision, as the split side's events measure it from their frame's capture: at camera
        # rate the frame was captured when it was due (it may have waited for the loop); read as fast as it
        # goes, when it was decoded
        captured = source.captured if realtime else decoded
        pixels = frame.to_ndarray(format="bgr24")
        (found,), _ = detector.detect([pixels])
        seen, gone = source.tracker.update(
            found.boxes, found.class_ids, found.scores, decoded, aspect=pixels.shape[1] / pixels.shape[0]
        )
        drafts = source.rules.step(Moment(decoded, now, [observed(t) for t in seen], [observed(t) for t in gone], []))
        decided = time.perf_counter()
        if warm:
            warm -= 1
            if not warm:
                wall_start, cpu_start = time.perf_counter(), time.process_time()
            continue
        frames += 1
        latencies += [(decided - captured) * 1000] * len(drafts)
        if time.perf_counter() - wall_start >= seconds or time.perf_counter() - started_at > 10 * seconds:
            break
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    for source in sources:
        source.container.close()
    detector.close()
    return {"fps": frames / wall, "cpu_ms_per_frame": 1000 * cpu / max(frames, 1), **_percentiles(latencies)}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    if not latencies:
        return {"latency_ms_p50": float("nan"), "latency_ms_p99": float("nan"), "events": 0.0}
    values = np.asarray(latencies)
    return {
        "latency_ms_p50": float(np.percentile(values, 50)),
        "latency_ms_p99": float(np.percentile(values, 99)),
        "events": float(len(values)),
    }


def run(quick: bool) -> dict[str, float]:
    seconds = 8.0 if quick else 30.0
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as temporary:
        for realtime in (False, True):
            for streams in (1, 2) if quick and realtime else (1, 2, 4):
                folder = Path(temporary) / f"s{streams}{realtime}"
                folder.mkdir()
                prefix = f"{'realtime_' if realtime else ''}streams{streams}"
                one_loop = monolith(streams, seconds, folder, realtime=realtime)
                figures |= {f"{prefix}_monolith_{key}": value for key, value in one_loop.items()}
                setups = [DEFAULTS, TUNED]
                if not realtime and streams == 2 and not quick:  # what backpressure changed, once
                    setups.append(NEWEST_WINS)
                for setup in setups:
                    (folder / setup.name).mkdir()  # a state_dir and bus of its own
                    ours = split(streams, seconds, folder / setup.name, realtime=realtime, setup=setup)
                    figures |= {f"{prefix}_{setup.name}_{key}": value for key, value in ours.items()}
                    label = "" if setup is DEFAULTS else f"_{setup.name}"
                    figures[f"{prefix}{label}_ratio"] = ours["fps"] / one_loop["fps"]
                    if setup is DEFAULTS:  # latency against the loop's, p50
                        figures[f"{prefix}_latency_ratio"] = ours["latency_ms_p50"] / one_loop["latency_ms_p50"]
        if not quick:  # memory at the scale: 4 cameras of 1080p H.264 at 25 fps
            from benchmarks.ingest_decode import make_clip

            folder = Path(temporary) / "memory"
            folder.mkdir()
            big = split(4, seconds, folder, realtime=True, clip=str(make_clip(341)))
            figures |= {f"memory_1080p_streams4_{key}": value for key, value in big.items()}
    figures["ratio"] = figures["streams2_ratio"]  # the defaults: what a user gets
    figures["ratio_tuned"] = figures["streams2_tuned_ratio"]
    figures["ratio_streams4"] = figures["streams4_ratio"]
    figures["cpu_count"] = float(os.cpu_count() or 0)
    return figures

"""Inference sized by itself: engines and threads from the cores and the cameras (``auto``), and the
frames of every camera fed to the engines by load, each camera's Detections in order."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import ModelConfig, parse_config
from common.models.sizing import Sizing, size_model, usable_cores
from contracts import Detections, FrameRef
from services.inference.detector import Detector
from services.inference.worker import ModelWorker, WorkerLinks
from tests.support import frame_ref

CPU = ModelConfig(path="yolox_nano.onnx")


@pytest.mark.parametrize(
    ("cores", "cameras", "engines", "threads"),
    [
        (2, 1, 1, 2),  # one camera: one engine on every core, the lowest latency
        (2, 2, 2, 1),  # the tuned setup of the pipeline benchmark
        (2, 8, 2, 1),  # more cameras than cores: one engine per core
        (4, 2, 2, 2),
        (8, 3, 3, 2),
        (1, 4, 1, 1),
        (6, 0, 1, 6),  # no camera yet: one engine
    ],
)
def test_auto_gives_one_engine_per_core_up_to_the_cameras(cores: int, cameras: int, engines: int, threads: int) -> None:
    sizing = size_model(CPU, cameras=cameras, cores=cores)
    assert (sizing.engines, sizing.threads) == (engines, threads)
    assert sizing.why.startswith("auto: ")


def test_a_gpu_gets_one_engine_and_several_processes_share_the_cores() -> None:
    for gpu in (
        ModelConfig(path="m.onnx", providers=["CUDAExecutionProvider", "CPUExecutionProvider"]),
        ModelConfig(path="m.onnx", backend="tensorrt"),
    ):
        assert size_model(gpu, cameras=6, cores=8).engines == 1
    # two inference processes on 8 cores: each has 4 to share
    assert size_model(CPU, cameras=2, cores=8, processes=2) == Sizing(
        2, 2, "auto: 8 cores, 2 cameras, 2 inference processes"
    )


def test_what_the_site_file_sets_is_kept() -> None:
    config = parse_config("site: {name: t}\nmodels: {people: {path: m.onnx, engines: 3, threads: 0}}\n")
    sizing = size_model(config.models["people"], cameras=1, cores=2)
    assert (sizing.engines, sizing.threads) == (3, 0)
    assert sizing.why == "engines 3 from the site file; threads 0 from the site file (2 cores, 1 camera)"
    # 3 engines on every core each: more threads than cores, said with what to do
    assert "6 threads on 2 core(s)" in sizing.crowded and "auto" in sizing.crowded
    only_threads = size_model(ModelConfig(path="m.onnx", threads=1), cameras=4, cores=4)
    assert (only_threads.engines, only_threads.threads) == (4, 1)
    # threads given: the engines fit them to the cores (2 x 2 on 4 cores), nothing crowded
    two_each = size_model(ModelConfig(path="m.onnx", threads=2), cameras=4, cores=4)
    assert (two_each.engines, two_each.threads, two_each.crowded) == (2, 2, "")
    assert two_each.why == "threads 2 from the site file; engines auto: 4 cores, 4 cameras"
    every_core = size_model(ModelConfig(path="m.onnx", threads=0), cameras=4, cores=4)
    assert (every_core.engines, every_core.crowded) == (1, "")


@pytest.mark.parametrize("text", ["0", "-1", "many", "true", "2.5", "65"])
def test_a_bad_count_says_what_is_expected(text: str) -> None:
    with pytest.raises(Exception, match=r"models\.people\.engines: expected auto or a whole number from 1 to 64"):
        parse_config(f"site: {{name: t}}\nmodels: {{people: {{path: m.onnx, engines: {text}}}}}\n")


def test_the_cores_are_capped_by_a_cgroup_quota(tmp_path: Path) -> None:
    affinity = usable_cores(tmp_path / "absent")
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")  # --cpus 1.5: two threads can run, rounded up
    assert usable_cores(quota) == min(affinity, 2)
    quota.write_text("max 100000\n")
    assert usable_cores(quota) == affinity
    quota.write_text("20000 100000\n")
    assert usable_cores(quota) == 1


# -- the worker: engines fed by load --------------------------------------------------------------------
class _Recorder:
    """A stand-in for ``BatchRunner.infer``: notes which engine ran which frame, on which thread, and takes
    ``busy_s`` (longer for frames listed in ``slow``) as a model would."""

    def __init__(self, busy_s: float, slow: dict[int, float] | None = None) -> None:
        self.busy_s, self.slow = busy_s, slow or {}
        self.runs: list[tuple[int, str, int]] = []  # (engine id, camera, seq)
        self.spans: dict[int, tuple[float, float]] = {}  # seq -> when its run started and ended
        self.threads: set[int] = set()
        self.lock = threading.Lock()
        self.at_once = self.most_at_once = 0

    def __call__(self, model: str, detector: Detector, refs: list[FrameRef]) -> list[Detections]:
        with self.lock:
            self.at_once += 1
            self.most_at_once = max(self.most_at_once, self.at_once)
            self.threads.add(threading.get_ident())
            self.runs += [(id(detector), ref.camera, ref.seq) for ref in refs]
        started = time.monotonic()
        time.sleep(max(self.slow.get(ref.seq, self.busy_s) for ref in refs))
        with self.lock:
            self.at_once -= 1
            self.spans |= {ref.seq: (started, time.monotonic()) for ref in refs}
        empty = np.zeros((0, 4), np.float32)
        return [
            Detections.from_arrays(ref, model, empty, np.zeros(0, np.int32), np.zeros(0, np.float32)) for ref in refs
        ]


@pytest.fixture(scope="module")
def engines() -> list[Detector]:
    model = ModelConfig(path="yolox_nano.onnx", threads=1)
    loaded = [Detector.from_config(model) for _ in range(2)]
    yield loaded
    for engine in loaded:
        engine.close()


def _worker(engines: list[Detector], infer: _Recorder, published: list[Detections], **model: Any) -> ModelWorker:
    async def publish(detections: Detections) -> None:
        published.append(detections)

    async def unused(*args: object, **kwargs: object) -> None:
        raise AssertionError("not called here")

    links = WorkerLinks(infer=infer, publish=publish, load=lambda name: engines[0], audit=unused)
    return ModelWorker("people", ModelConfig(path="yolox_nano.onnx", **model), engines, links)


async def _feed(worker: ModelWorker, cameras: dict[str, float], seconds: float) -> None:
    """Offers each camera's frames at its interval (0: as fast as the worker takes them) for ``seconds``."""
    runner = asyncio.ensure_future(worker.run())
    start, seqs, due = time.monotonic(), dict.fromkeys(cameras, 0), dict.fromkeys(cameras, 0.0)
    while (now := time.monotonic()) - start < seconds:
        for camera, interval in cameras.items():
            if now >= due[camera] and (interval or camera not in worker.pending):
                seqs[camera] += 1
                worker.offer(frame_ref(camera, seqs[camera], monotonic_ns=time.monotonic_ns()))
                due[camera] = now + interval
        await asyncio.sleep(0.002)
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)


def test_a_busy_and_an_idle_camera_keep_both_engines_working(engines: list[Detector]) -> None:
    """Shard by camera and one engine would run the busy camera alone while the other idled; by load,
    the busy camera's frames go to whichever engine is free."""
    infer, published = _Recorder(busy_s=0.03), []
    worker = _worker(engines, infer, published, max_batch=1)
    asyncio.run(_feed(worker, {"busy": 0.0, "idle": 1.0}, seconds=1.5))
    busy_engines = {engine for engine, camera, _ in infer.runs if camera == "busy"}
    assert busy_engines == {id(engines[0]), id(engines[1])}, "the busy camera ran on one engine only"
    assert infer.most_at_once == 2 and len(infer.threads) >= 2, "the engines never ran at once"
    # each engine ran a fair part of the frames, not a token one
    per_engine = [sum(engine == id(e) for engine, _, _ in infer.runs) for e in engines]
    assert min(per_engine) >= 0.3 * sum(per_engine), per_engine
    # two engines at 30 ms a frame: well over what one engine could do (33 frames/s)
    assert len(infer.runs) > 1.5 * 33 * 1.5 * 0.7


def test_a_cameras_detections_leave_in_order_when_a_later_frame_finishes_first(engines: list[Detector]) -> None:
    infer, published = _Recorder(busy_s=0.01, slow={3: 0.2, 7: 0.15}), []
    worker = _worker(engines, infer, published, max_batch=1)
    asyncio.run(_feed(worker, {"cam": 0.0}, seconds=1.0))
    seqs = [d.frame.seq for d in published]
    assert 3 in seqs and 7 in seqs, "the slow frames were never published"
    assert seqs == sorted(seqs), f"out of order: {seqs}"
    # while frame 3 ran for 200 ms, the other engine went on with the frames after it
    slow_start, slow_end = infer.spans[3]
    meanwhile = [seq for seq, (start, _) in infer.spans.items() if seq > 3 and slow_start < start < slow_end]
    assert len(meanwhile) >= 5, meanwhile


def test_one_engine_still_batches_across_cameras(engines: list[Detector]) -> None:
    infer, published = _Recorder(busy_s=0.02), []
    worker = _worker(engines[:1], infer, published, max_batch=4, max_wait_ms=50)
    # the engine runs a static batch-1 model: frames of several cameras still go one engine call each batch
    asyncio.run(_feed(worker, {f"cam{i}": 0.05 for i in range(3)}, seconds=0.8))
    cameras = {camera for _, camera, _ in infer.runs}
    assert cameras == {"cam0", "cam1", "cam2"}
    assert infer.most_at_once == 1

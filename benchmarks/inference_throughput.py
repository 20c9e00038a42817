"""``inference_throughput``: the inference service fed from shared memory as fast as it takes, against a
bare ``session.run`` loop over pre-made input tensors, in the same run.

Ours includes everything the service does per frame: the FrameRef on the bus, the zero-copy read
from shared memory, letterbox, the run, grid decode, NMS and the Detections back on the bus. The
baseline runs the very engines the service chooses for these cameras (``common.models.sizing``: as
many sessions, each on as many threads, with the same session options), each on its own thread
calling ``session.run`` as fast as it returns. The feeder keeps one frame in flight per camera, with
two batches' worth of cameras per engine so the next batch is pending while one runs. YOLOX-Nano;
batch 1 is the shared model as it is (a static batch of 1), batches 4 and 8 a copy made with a
dynamic batch dimension. ``one_session`` is the baseline as it was before engines: one session on
ONNX Runtime's own threads (every core).

Where TensorRT and a GPU are present, TensorRT's rows stand beside ONNX Runtime's: the TensorRT backend's
``run`` alone at batch 1 and at the largest batch, on the same pre-made tensor of the same frame, and its
speed-up over ``session.run`` at that batch (``tensorrt_batch<N>_speedup``); its engines are built once
into the engine cache (``$EDGESIGHT_ENGINE_CACHE``). Where they are not, the run says why, and the JSON
holds ``"tensorrt": {"measured": false, "reason": ...}``. The test stand-in of TensorRT (tests/standin)
is never measured: its figures would be ONNX Runtime's on the CPU.

Beside frames/s, CPU milliseconds per frame of each side (``/proc``): the baseline's sessions, and
the inference service, the broker and the feeder (which stands in for ingest) in the service run.
They move much less than frames/s with what else the machine runs, and say where the time goes.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from benchmarks._backend_bench import dynamic_batch_copy, frames_per_second
from benchmarks._site import start, stop, write_site
from benchmarks.gpu_machine import tensorrt_unavailable
from common.assets import find_asset
from common.bus import Publisher, Subscriber
from common.config import ModelConfig, SiteConfig
from common.errors import ModelError
from common.models.sizing import Sizing, size_model, usable_cores
from common.shm import FrameRingWriter, frame_bytes
from contracts import Detections, topic
from services.inference.detector import Detector

TITLE = "YOLOX-Nano fed from shared memory through the inference service vs bare session.run"

_TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each process in ``pids``, and of this one as ``feeder``."""
    spent = {"feeder": time.process_time()}
    for name, pid in pids.items():
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        spent[name] = (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime
    return spent


def _frame() -> np.ndarray:  # type: ignore[type-arg]
    with av.open(str(find_asset("people.mp4"))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == 60:  # a crowd: about 20 persons for NMS to sort out
                pixels: np.ndarray = frame.to_ndarray(format="bgr24")  # type: ignore[type-arg]
                return pixels
    raise RuntimeError("people.mp4 is shorter than expected")


def _model(folder: Path, batch: int) -> Path:
    """A manifest for YOLOX-Nano; for batches above 1 over a copy with a dynamic batch dimension."""
    model = find_asset("yolox_nano.onnx")
    if batch > 1:
        model = dynamic_batch_copy(model, folder / "yolox_nano_dynamic.onnx")
    manifest = folder / f"yolox_b{batch}.yaml"
    fields = {
        "name": "people",
        "file": str(model),
        "decoder": "yolox",
        "color": "bgr",
        "scale": 1.0,
        "letterbox": "top_left",
        "labels": "coco80",
    }
    manifest.write_text(yaml.safe_dump(fields))
    return manifest


def bare_loop(manifest: Path, batch: int, sizing: Sizing, seconds: float) -> tuple[float, float]:
    """(frames/s, CPU ms per frame) of ``session.run`` alone: the service's engines, each on its own
    thread with a pre-made tensor of ``batch`` frames."""
    config = ModelConfig(path=str(manifest), max_batch=batch, threads=sizing.threads)
    engines = [Detector.from_config(config) for _ in range(sizing.engines)]
    frame = _frame()
    runs = [0] * len(engines)
    ready = threading.Barrier(len(engines) + 1)
    deadline = [float("inf")]  # until every engine is warm

    def run_engine(index: int) -> None:
        backend: Any = engines[index].backend
        tensor = engines[index].letterbox.batch(batch)
        for i in range(batch):
            engines[index].letterbox.place(frame, tensor[i])
        feeds, outputs = {backend.input_name: tensor}, backend.output_names
        backend.session.run(outputs, feeds)  # warm up
        ready.wait()
        while time.perf_counter() < deadline[0]:
            backend.session.run(outputs, feeds)
            runs[index] += 1

    threads = [threading.Thread(target=run_engine, args=(i,)) for i in range(len(engines))]
    for thread in threads:
        thread.start()
    ready.wait()
    cpu, started = time.process_time(), time.perf_counter()
    deadline[0] = started + seconds
    for thread in threads:
        thread.join()
    elapsed, frames = time.perf_counter() - started, sum(runs) * batch
    cpu_ms = (time.process_time() - cpu) / frames * 1e3
    for engine in engines:
        engine.close()
    return frames / elapsed, cpu_ms


def tensorrt_loop(manifest: Path, batch: int, seconds: float) -> tuple[float, str]:
    """(frames/s, what ran it) of the TensorRT backend's ``run`` alone on a pre-made tensor of ``batch``
    frames: the model as the service opens it (``backend: tensorrt``), its engine from the cache."""
    detector = Detector.from_config(ModelConfig(path=str(manifest), backend="tensorrt", max_batch=batch))
    try:
        if detector.backend.name != "tensorrt":  # open_backend fell back, and warned why
            raise ModelError(f"TensorRT could not run the model; {detector.backend.provider} ran it instead")
        tensor = detector.letterbox.batch(batch)
        frame = _frame()
        for row in range(batch):
            detector.letterbox.place(frame, tensor[row])
        return frames_per_second(detector.backend, tensor, seconds), detector.backend.provider
    finally:
        detector.close()


async def _feed(
    config: SiteConfig,
    cameras: list[str],
    frame: np.ndarray,  # type: ignore[type-arg]
    seconds: float,
    pids: dict[str, int],
) -> dict[str, float]:
    """frames/s, mean batch size and CPU ms per frame (of each of ``pids`` and of this feeder) while
    each camera keeps one frame in flight."""
    rings = {
        camera: FrameRingWriter.create(
            config.site.name, camera, slots=4, capacity=frame_bytes("bgr24", frame.shape[1], frame.shape[0])
        )
        for camera in cameras
    }
    try:
        async with (
            Subscriber(config.bus.subscribe, "bench", [topic("detections")], hwm=10_000) as results,
            Publisher(config.bus.publish, "bench", hwm=10_000) as frames,
        ):
            # The handshake: offer every camera a frame again each second until Detections come back
            # (inference subscribed, model loaded); a frame published before its subscription reached the
            # broker is simply lost, which once left this waiting for a result that could never come.
            deadline = time.monotonic() + 60
            while True:
                for camera, ring in rings.items():
                    await frames.publish("frames", camera, ring.write(frame))
                try:
                    message = (await asyncio.wait_for(results.receive(), 1.0)).message
                    break
                except asyncio.TimeoutError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"no Detections from the inference service within 60 s for {len(cameras)} cameras "
                            "(waited for its frames subscription and its model)"
                        ) from None
            done, batches, started, cpu = 0, 0, 0.0, _cpu_seconds(pids)
            while True:
                if isinstance(message, Detections):
                    camera = message.frame.camera
                    await frames.publish("frames", camera, rings[camera].write(frame))
                    if not started:  # the clock starts at the first result: models loaded, pipeline full
                        started = time.perf_counter()
                        cpu = _cpu_seconds(pids)
                    else:
                        done += 1
                        batches += message.timing.batch_size
                        if time.perf_counter() - started >= seconds:
                            figures = {"fps": done / (time.perf_counter() - started), "mean_batch": batches / done}
                            spent = {name: now - cpu[name] for name, now in _cpu_seconds(pids).items()}
                            return figures | {f"{name}_cpu_ms": s / done * 1e3 for name, s in spent.items()}
                message = (await asyncio.wait_for(results.receive(), 60)).message
    finally:
        for ring in rings.values():
            ring.close()


def service_loop(manifest: Path, batch: int, cameras: list[str], seconds: float, folder: Path) -> dict[str, float]:
    model = {"path": str(manifest), "max_batch": batch, "max_wait_ms": 20}
    site, config = write_site(
        folder,
        f"infer{batch}",
        {"models": {"people": model}, "cameras": {c: {"url": f"rtsp://unused/{c}"} for c in cameras}},
    )
    broker, inference = start("broker", site), start("inference", site)
    try:
        pids = {"inference": inference.pid, "broker": broker.pid}
        return asyncio.run(_feed(config, cameras, _frame(), seconds, pids))
    finally:
        stop([inference, broker])


def run(quick: bool) -> dict[str, float | dict[str, Any]]:
    seconds = 4.0 if quick else 10.0
    figures: dict[str, float | dict[str, Any]] = {}
    cores = usable_cores()
    one_session = Sizing(engines=1, threads=0, why="one session on ONNX Runtime's threads (every core)")
    batches = (1, 4) if quick else (1, 4, 8)
    unmeasured = tensorrt_unavailable()
    if unmeasured:
        print(f"tensorrt: not measured — {unmeasured}", flush=True)
    provider = ""
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as temporary:
        folder = Path(temporary)
        for batch in batches:
            manifest = _model(folder, batch)
            cameras = [f"cam{i}" for i in range(2 * batch * cores)]  # two batches pending per engine (1 per core)
            sizing = size_model(ModelConfig(path=str(manifest), max_batch=batch), cameras=len(cameras), cores=cores)
            bare, bare_cpu_ms = bare_loop(manifest, batch, sizing, seconds)
            single, _ = bare_loop(manifest, batch, one_session, seconds)  # the baseline before engines (#29)
            ours = service_loop(manifest, batch, cameras, seconds, folder)
            figures |= {
                f"batch{batch}_engines": sizing.engines,
                f"batch{batch}_threads": sizing.threads,
                f"batch{batch}_session_run_fps": bare,
                f"batch{batch}_one_session_fps": single,
                f"batch{batch}_service_fps": ours["fps"],
                f"batch{batch}_service_mean_batch": ours["mean_batch"],
                f"batch{batch}_session_run_cpu_ms": bare_cpu_ms,
                f"batch{batch}_inference_cpu_ms": ours["inference_cpu_ms"],
                f"batch{batch}_broker_cpu_ms": ours["broker_cpu_ms"],
                f"batch{batch}_feeder_cpu_ms": ours["feeder_cpu_ms"],
                f"batch{batch}_ratio": ours["fps"] / bare,
                f"batch{batch}_ratio_one_session": ours["fps"] / single,
            }
            if unmeasured is None and batch in (batches[0], batches[-1]):
                try:
                    tensorrt_fps, provider = tensorrt_loop(manifest, batch, seconds)
                except ModelError as exc:
                    unmeasured = str(exc)
                    print(f"tensorrt: not measured — {unmeasured}", flush=True)
                else:
                    figures[f"tensorrt_batch{batch}_fps"] = tensorrt_fps
                    figures[f"tensorrt_batch{batch}_speedup"] = tensorrt_fps / bare  # over session.run, same batch
    figures["ratio"] = figures["batch1_ratio"]  # the figure: per-frame overhead at batch 1
    figures["ratio_worst"] = min(
        value for name, value in figures.items() if name.endswith("_ratio") and isinstance(value, float)
    )
    figures["tensorrt"] = (  # not a figure: whether TensorRT was measured, on what, or why not
        {"measured": False, "reason": unmeasured}
        if unmeasured
        else {"measured": True, "provider": provider, "batches": [batches[0], batches[-1]]}
    )
    return figures

"""``inference_throughput``: the inference service fed from shared memory as fast as it takes, against a
bare ``session.run`` loop over pre-made input tensors, in the same run.

Ours includes everything the service does per frame: the FrameRef on the bus, the zero-copy read
from shared memory, letterbox, the run, grid decode, NMS and the Detections back on the bus. The
feeder keeps one frame in flight per camera, with twice as many cameras as the batch size so the
next batch is pending while one runs. YOLOX-Nano; batch 1 is the shared model as it is (a static
batch of 1), batches 4 and 8 a copy made with a dynamic batch dimension.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from benchmarks._site import start, stop, write_site
from common.assets import find_asset
from common.bus import Publisher, Subscriber
from common.config import ModelConfig, SiteConfig
from common.shm import FrameRingWriter, frame_bytes
from contracts import Detections, topic
from services.inference.detector import Detector

TITLE = "YOLOX-Nano fed from shared memory through the inference service vs bare session.run"


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
        import onnx  # only the benchmark needs it (test extra)

        graph = onnx.load(str(model))
        for tensor in [*graph.graph.input, *graph.graph.output]:
            tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
        model = folder / "yolox_nano_dynamic.onnx"
        onnx.save(graph, str(model))
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


def bare_loop(manifest: Path, batch: int, seconds: float) -> float:
    """Frames per second of ``session.run`` alone on a pre-made tensor of ``batch`` frames."""
    detector = Detector.from_config(ModelConfig(path=str(manifest), max_batch=batch))
    backend: Any = detector.backend
    tensor = detector.letterbox.batch(batch)
    for i in range(batch):
        detector.letterbox.place(_frame(), tensor[i])
    backend.run(tensor)  # warm up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        backend.session.run(backend.output_names, {backend.input_name: tensor})
        runs += 1
    return runs * batch / (time.perf_counter() - started)


async def _feed(config: SiteConfig, cameras: list[str], frame: np.ndarray, seconds: float) -> tuple[float, float]:  # type: ignore[type-arg]
    """(frames/s, mean batch size) of Detections coming back while each camera keeps one frame in flight."""
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
            done, batches, started = 0, 0, 0.0
            while True:
                if isinstance(message, Detections):
                    camera = message.frame.camera
                    await frames.publish("frames", camera, rings[camera].write(frame))
                    if not started:  # the clock starts at the first result: models loaded, pipeline full
                        started = time.perf_counter()
                    else:
                        done += 1
                        batches += message.timing.batch_size
                        if time.perf_counter() - started >= seconds:
                            return done / (time.perf_counter() - started), batches / done
                message = (await asyncio.wait_for(results.receive(), 60)).message
    finally:
        for ring in rings.values():
            ring.close()


def service_loop(manifest: Path, batch: int, seconds: float, folder: Path) -> tuple[float, float]:
    cameras = [f"cam{i}" for i in range(2 * batch)]
    model = {"path": str(manifest), "max_batch": batch, "max_wait_ms": 20}
    site, config = write_site(
        folder,
        f"infer{batch}",
        {"models": {"people": model}, "cameras": {c: {"url": f"rtsp://unused/{c}"} for c in cameras}},
    )
    broker, inference = start("broker", site), start("inference", site)
    try:
        return asyncio.run(_feed(config, cameras, _frame(), seconds))
    finally:
        stop([inference, broker])


def run(quick: bool) -> dict[str, float]:
    seconds = 4.0 if quick else 10.0
    figures: dict[str, float] = {}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as temporary:
        folder = Path(temporary)
        for batch in (1, 4) if quick else (1, 4, 8):
            manifest = _model(folder, batch)
            bare = bare_loop(manifest, batch, seconds)
            ours, mean_batch = service_loop(manifest, batch, seconds, folder)
            figures |= {
                f"batch{batch}_session_run_fps": bare,
                f"batch{batch}_service_fps": ours,
                f"batch{batch}_service_mean_batch": mean_batch,
                f"batch{batch}_ratio": ours / bare,
            }
            ratios.append(ours / bare)
    figures["ratio"] = min(ratios)
    return figures

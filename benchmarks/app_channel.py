"""app_channel: a 1080p frame from the apps service to a sandboxed Panorama app, and a model feed back.

Ours: what ``video_in.get()`` costs an app since apps are sandboxed: the app (another process) asks
on its Unix-socket channel and the service answers with the frame's BGR bytes (``pack`` + asyncio's
writer, as services/apps/service.py does), read by the SDK's ``Channel``. Baseline, same run: what it
cost before, when the app read the frame from shared memory itself (``FrameReaders.copy``, BGR).
Also: one ``call()``'s round trip of a YOLOX-Nano input (1x3x416x416 float32) and a 1x3549x85 output.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

TITLE = "1080p frame to a sandboxed app over its channel vs the app reading shared memory itself"
WIDTH, HEIGHT = 1920, 1080


def _serve(path: str, frame: np.ndarray, ready: threading.Event, stop: threading.Event) -> None:
    from services.apps.channel_requests import widen_send_buffer
    from services.apps.sdk._edgesight_channel import header_length, pack, unpack_header

    output = np.zeros((1, 3549, 85), np.float32)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        widen_send_buffer(writer)
        try:
            while True:
                length = header_length(await reader.readexactly(4))
                header, sizes = unpack_header(await reader.readexactly(length))
                for size in sizes:
                    await reader.readexactly(size)
                if header["op"] == "get":
                    described = {"camera": "cam", "shape": list(frame.shape), "cached": False}
                    writer.writelines(pack({"streams": [described]}, [frame]))
                else:
                    writer.writelines(pack({"outputs": [{"dtype": "float32", "shape": [1, 3549, 85]}]}, [output]))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_unix_server(answer, path=path)
        ready.set()
        await asyncio.to_thread(stop.wait)
        server.close()

    asyncio.run(main())


def _app_over_channel(path: str, seconds: float, results: Any) -> None:
    from services.apps.sdk._edgesight_channel import Channel

    channel = Channel(path)
    feed = np.zeros((1, 3, 416, 416), np.float32)
    for op, key in (("get", "channel_fps"), ("call", "call_per_s")):
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            if op == "get":
                _, buffers = channel.request({"op": "get", "timeout": None})
                image = np.frombuffer(buffers[0], np.uint8).reshape(HEIGHT, WIDTH, 3)
                assert image.shape == (HEIGHT, WIDTH, 3)
            else:
                channel.request({"op": "call", "model": "m", "inputs": [{"name": "x"}]}, [feed])
            count += 1
        results[key] = count / (time.perf_counter() - start)


def _app_reading_shm(shm_dir: str, ref: Any, seconds: float, results: Any) -> None:
    from common.shm import FrameReaders

    readers = FrameReaders(shm_dir)
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        image = readers.copy(ref, "bgr")
        assert image.shape == (HEIGHT, WIDTH, 3)
        count += 1
    results["shm_fps"] = count / (time.perf_counter() - start)
    readers.close()


def run(quick: bool) -> dict[str, float]:
    from common.shm import FrameRingWriter, frame_bytes

    seconds = 1.0 if quick else 5.0
    frame = np.random.default_rng(7).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    context = mp.get_context("spawn")
    results = context.Manager().dict()
    with tempfile.TemporaryDirectory() as folder:
        path = str(Path(folder) / "channel.sock")
        ready, stop = threading.Event(), threading.Event()
        server = threading.Thread(target=_serve, args=(path, frame, ready, stop), daemon=True)
        server.start()
        ready.wait(10)
        app = context.Process(target=_app_over_channel, args=(path, seconds, results))
        app.start()
        app.join()
        stop.set()
        server.join(5)
        ring = FrameRingWriter.create(
            "bench", "cam", slots=4, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=folder
        )
        try:
            ref = ring.write(frame)
            reader = context.Process(target=_app_reading_shm, args=(folder, ref, seconds, results))
            reader.start()
            reader.join()
        finally:
            ring.close()
    figures = {key: round(float(value), 1) for key, value in results.items()}
    figures["channel_ms_per_frame"] = round(1000 / figures["channel_fps"], 2)
    figures["ratio"] = round(figures["channel_fps"] / figures["shm_fps"], 2)
    print(f"{'path':<34} {'per s':>8}")
    print(f"{'channel: get() of a 1080p frame':<34} {figures['channel_fps']:>8.1f}")
    print(f"{'shared memory read by the app':<34} {figures['shm_fps']:>8.1f}")
    print(f"{'channel: call() 416x416 in, out':<34} {figures['call_per_s']:>8.1f}")
    print(f"ratio (channel / shared memory): {figures['ratio']}")
    return figures

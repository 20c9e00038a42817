"""frame_hop: one 1080p BGR frame from a writer process to a reader process.

Ours: the writer fills a shared-memory slot and publishes a FrameRef on the bus; the reader maps
the slot, reads it, and checks the generation. Baseline, same run: the frame's bytes sent
through ZeroMQ (ipc, zero-copy send). Both use the project's own Publisher/Subscriber.

Figures: throughput (closed loop: the writer keeps at most ``IN_FLIGHT`` frames ahead of the
reader, which returns a credit per frame, so neither path loses frames to newest-wins and we
measure what one hop sustains; frames the reader handled per second) and hop latency
(writer paced at 200 Hz; from the writer's start of the write to the reader's end of the read,
on CLOCK_MONOTONIC, which both processes share). ``shm_inplace`` is the hop alone: the producer
writes its pixels into the slot in place (a decoder or resize writing into ``ring.fill()``),
so only a stamp is written here; ``shm`` includes copying a whole private frame into the slot.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import tempfile
import time
from typing import Any

import numpy as np

TITLE = "1080p BGR frame writer -> reader in another process: shm + FrameRef vs bytes over ZeroMQ"
WIDTH, HEIGHT = 1920, 1080
STAMP = np.dtype("<u8")
IN_FLIGHT = 4  # with 8 slots the writer never laps a frame the reader has yet to read


def _frames(count: int = 4) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(count)]


def _touch(frame: np.ndarray) -> int:
    """What both readers do with a frame: read its stamp and one byte per page (every page mapped)."""
    flat = frame.reshape(-1)
    return int(flat[:8].view(STAMP)[0]) + int(flat[::4096].sum())


async def _write(mode: str, address: str, shm_dir: str, seconds: float, rate: float, go: Any) -> int:
    import zmq
    import zmq.asyncio

    from common.bus import Publisher
    from common.shm import FrameRingWriter, frame_bytes
    from contracts import FrameRef, encode, topic

    frames = _frames()
    sent = 0
    credits = zmq.asyncio.Context.instance().socket(zmq.PULL)
    credits.bind(f"{address}.credits")
    async with Publisher(f"pub+bind:{address}", "bench", hwm=IN_FLIGHT * 2) as pub:
        ring = None
        if mode != "zmq":
            ring = FrameRingWriter.create(
                "bench", "cam", slots=8, capacity=frame_bytes("bgr24", WIDTH, HEIGHT), shm_dir=shm_dir
            )
        go.wait()
        await asyncio.sleep(0.3)
        deadline = time.monotonic() + seconds
        in_flight = 0
        while time.monotonic() < deadline:
            while in_flight and await credits.poll(0 if in_flight < IN_FLIGHT else 1000):
                await credits.recv()
                in_flight -= 1
            started = time.monotonic_ns()
            frame = frames[sent % len(frames)]
            if ring is None:
                frame.reshape(-1)[:8].view(STAMP)[0] = started
                header = FrameRef(
                    camera="cam",
                    seq=sent,
                    capture_ns=0,
                    monotonic_ns=started,
                    segment="edgesight.bench.none",  # the pixels travel in the next frame, not in a ring
                    slot=0,
                    generation=0,
                    width=WIDTH,
                    height=HEIGHT,
                    stride=WIDTH * 3,
                )
                await pub._socket.send_multipart([topic("frames", "cam"), encode(header), frame.data], copy=False)  # type: ignore[union-attr]
            else:
                with ring.fill(WIDTH, HEIGHT, monotonic_ns=started) as slot:
                    if mode == "shm":
                        np.copyto(slot.array, frame)
                    slot.array.reshape(-1)[:8].view(STAMP)[0] = started
                assert slot.ref is not None
                await pub.publish("frames", "cam", slot.ref)
            sent += 1
            in_flight += 1
            if rate:
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic_ns() - started) / 1e9))
        await asyncio.sleep(0.5)  # let the reader drain before the segment goes
        if ring is not None:
            ring.close()
    credits.close(linger=0)
    return sent


def _writer(mode: str, address: str, shm_dir: str, seconds: float, rate: float, go: Any, out: Any) -> None:
    out.put(("sent", asyncio.run(_write(mode, address, shm_dir, seconds, rate, go))))


async def _read(mode: str, address: str, shm_dir: str, ready: Any) -> dict[str, Any]:
    import zmq
    import zmq.asyncio

    from common.bus import Subscriber
    from common.errors import StaleFrameError
    from common.shm import FrameRingReader, segment_name
    from contracts import FrameRef, decode, topic

    latencies: list[int] = []
    stale = 0
    first = last = 0.0
    sub = Subscriber(f"sub+connect:{address}", "bench", [topic("frames", "cam")], hwm=IN_FLIGHT * 2)
    credits = zmq.asyncio.Context.instance().socket(zmq.PUSH)
    credits.connect(f"{address}.credits")
    async with sub:
        reader = None
        ready.set()
        socket: Any = sub._socket
        assert socket is not None
        while True:
            if not await socket.poll(2000 if not latencies else 1000):
                break
            parts = await socket.recv_multipart(copy=False)
            ref = decode(parts[1].buffer, FrameRef)
            if mode == "zmq":
                frame = np.frombuffer(parts[2].buffer, np.uint8).reshape(HEIGHT, WIDTH, 3)
                _touch(frame)
            else:
                if reader is None:
                    reader = FrameRingReader(segment_name("bench", "cam"), shm_dir=shm_dir)
                try:
                    with reader.read(ref) as frame:
                        _touch(frame)
                except StaleFrameError:
                    stale += 1
                    await credits.send(b"")
                    continue
            now = time.monotonic_ns()
            await credits.send(b"")
            latencies.append(now - ref.monotonic_ns)
            first = first or now / 1e9
            last = now / 1e9
        if reader is not None:
            reader.close()
    credits.close(linger=0)
    return {"latencies": latencies, "stale": stale, "span": last - first}


def _reader(mode: str, address: str, shm_dir: str, ready: Any, out: Any) -> None:
    out.put(("read", asyncio.run(_read(mode, address, shm_dir, ready))))


def _hop(mode: str, seconds: float, rate: float) -> dict[str, Any]:
    context = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(dir="/dev/shm") as shm_dir, tempfile.TemporaryDirectory() as run_dir:
        address = f"ipc://{run_dir}/hop.sock"
        ready, out = context.Event(), context.Queue()
        reader = context.Process(target=_reader, args=(mode, address, shm_dir, ready, out))
        writer = context.Process(target=_writer, args=(mode, address, shm_dir, seconds, rate, ready, out))
        writer.start()
        reader.start()
        results = dict(out.get(timeout=seconds + 60) for _ in range(2))
        writer.join()
        reader.join()
    read = results["read"]
    count = len(read["latencies"])
    return {
        "fps": (count - 1) / read["span"] if count > 1 and read["span"] > 0 else 0.0,
        "sent": results["sent"],
        "latencies_ms": np.array(read["latencies"], dtype=np.float64) / 1e6,
        "stale": read["stale"],
    }


def run(quick: bool) -> dict[str, float]:
    seconds = 1.5 if quick else 5.0
    figures: dict[str, float] = {}
    for mode in ("shm_inplace", "shm", "zmq"):
        throughput = _hop(mode, seconds, rate=0.0)
        paced = _hop(mode, seconds, rate=200.0)
        latencies = paced["latencies_ms"]
        figures[f"{mode}_fps"] = throughput["fps"]
        figures[f"{mode}_p50_ms"] = float(np.percentile(latencies, 50)) if len(latencies) else float("nan")
        figures[f"{mode}_p99_ms"] = float(np.percentile(latencies, 99)) if len(latencies) else float("nan")
        if mode != "zmq":
            figures[f"{mode}_stale_reads"] = float(throughput["stale"] + paced["stale"])
    figures["ratio"] = figures["shm_fps"] / figures["zmq_fps"] if figures["zmq_fps"] else float("nan")
    figures["ratio_inplace"] = figures["shm_inplace_fps"] / figures["zmq_fps"] if figures["zmq_fps"] else float("nan")
    figures["cpu_count"] = float(os.cpu_count() or 0)
    return figures

"""A camera's decode thread hands its FrameRefs and state changes to the event loop in order, waking the
loop once for everything queued until the loop gets round to it (not once per frame)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from common.config import CameraConfig
from services.ingest.camera import CameraWorker
from services.ingest.source import Source


def worker() -> CameraWorker:
    config = CameraConfig(url="clip.mp4")
    ring: Any = None  # nothing here writes a frame
    return CameraWorker("dock", config, Source("clip.mp4", "file"), ring, instance="test", deliver=lambda _: None)


def test_calls_from_the_decode_thread_run_in_order_with_one_wake_up_while_the_loop_is_busy() -> None:
    camera = worker()
    ran: list[int] = []

    async def scenario() -> int:
        loop = asyncio.get_running_loop()
        camera._loop = loop
        wake_ups = 0
        wake = loop.call_soon_threadsafe

        def counted(*args: Any) -> Any:
            nonlocal wake_ups
            wake_ups += 1
            return wake(*args)

        loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
        # the loop is busy (here: joining the thread) while the thread hands over 100 calls
        decode_thread = threading.Thread(target=lambda: [camera._call(ran.append, n) for n in range(100)])
        decode_thread.start()
        decode_thread.join()
        assert ran == []  # nothing runs on the decode thread
        for _ in range(3):
            await asyncio.sleep(0)
        camera._call(ran.append, 100)  # the loop drained: the next call wakes it again
        await asyncio.sleep(0.01)
        return wake_ups

    assert asyncio.run(scenario()) == 2
    assert ran == list(range(101))

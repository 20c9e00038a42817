"""``uplink_throughput``: events from the bus through the uplink's durable spool to a real Mosquitto
(QoS 1), against a bare aiomqtt loop publishing the same payloads (QoS 1, one PUBACK awaited at a
time, like the sink) in the same run. Both are timed until a subscriber has received every event.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from benchmarks._site import start, write_site
from common.bus import EventSender
from common.events import event_dict
from contracts import Event, TrackedObject

BAY = [[0, 0], [1, 0], [1, 1]]
TITLE = "events through the spool (fsync on) to Mosquitto QoS 1 vs a bare aiomqtt publish loop"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _events(count: int) -> list[Event]:
    return [
        Event(
            id=f"bench-{i:06d}",
            # zone_enter: one MQTT message per event, as in the bare loop (a line_cross also
            # publishes its retained count, a second message)
            event_type="zone_enter",
            site="bench",
            camera="dock",
            rule="bay",
            ts_ns=time.time_ns(),
            object=TrackedObject(track_id=i, label="person", score=0.9, box=(0.1, 0.2, 0.3, 0.4)),
            counts={"person": 3},
            attributes={"zone": "bay", "before": "outside", "after": "inside"},
        )
        for i in range(count)
    ]


async def _until_received(port: int, topic: str, count: int, ready: asyncio.Event, done: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bench-sub-{topic}") as client:
        await client.subscribe(topic, qos=1)
        ready.set()
        seen = 0
        async for _ in client.messages:
            seen += 1
            if seen == count:
                done.set()
                return


async def _bare(port: int, events: list[Event]) -> float:
    topic = "bare/bench/events"
    ready, done = asyncio.Event(), asyncio.Event()
    listener = asyncio.create_task(_until_received(port, topic, len(events), ready, done))
    await ready.wait()
    payloads = [json.dumps(event_dict(e, upstream=True)) for e in events]
    started = time.perf_counter()
    async with aiomqtt.Client("127.0.0.1", port, identifier="bench-bare") as client:
        for payload in payloads:
            await client.publish(topic, payload, qos=1)
        await done.wait()
    listener.cancel()
    return len(events) / (time.perf_counter() - started)


async def _through_uplink(port: int, config: Any, events: list[Event]) -> float:
    ready, done = asyncio.Event(), asyncio.Event()
    listener = asyncio.create_task(_until_received(port, "edgesight/bench/events", len(events), ready, done))
    await ready.wait()
    started = time.perf_counter()
    async with EventSender(config.bus.events.send, "bench", window=1000) as sender:
        for event in events:
            await sender.send(event)
        await asyncio.wait_for(done.wait(), 300)
    listener.cancel()
    return len(events) / (time.perf_counter() - started)


def run(quick: bool) -> dict[str, float]:
    count = 500 if quick else 3000
    events = _events(count)
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-") as temporary:
        folder = Path(temporary)
        port = _free_port()
        (folder / "mosquitto.conf").write_text(
            f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\n"
        )
        broker = subprocess.Popen(["mosquitto", "-c", str(folder / "mosquitto.conf")], stderr=subprocess.DEVNULL)
        site, config = write_site(
            folder,
            "bench",
            {
                # the uplink takes events only for the site file's cameras and rules
                "cameras": {
                    "dock": {
                        "url": "rtsp://unused/1",
                        "rules": {"bay": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]]}},
                    }
                },
                "uplink": {"mqtt": {"host": "127.0.0.1", "port": port}, "spool": {"fsync": "batch"}},
            },
        )
        bus_broker, uplink = start("broker", site), start("uplink", site)
        try:
            time.sleep(2.0)  # services and Mosquitto up
            bare = asyncio.run(_bare(port, events))
            ours = asyncio.run(_through_uplink(port, config, events))
        finally:
            for process in (uplink, bus_broker, broker):
                process.terminate()
                process.wait()
    return {
        "events": float(count),
        "bare_aiomqtt_events_per_s": bare,
        "uplink_events_per_s": ours,
        "ratio": ours / bare,
    }

"""A second language in CI: the Node.js client of tests/clients/node, written from contracts/README.md alone,
against a running site (broker, ingest of the shared clip, rules, uplink with a jsonl sink).

It subscribes to the bus, reads frames from shared memory (checked here against Python's own reader of the
same frames), is an external detector whose Detections rules tracks and counts, and sends Events on the
acknowledged path: acked, refused (``wrong_site``), acked again as a duplicate that the uplink stores once,
and, as an attacker, bodies that cannot be answered, after which the uplink still answers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from common.bus.endpoint import Endpoint
from common.errors import ShmError
from common.shm import FrameRingReader
from contracts import FrameRef, decode, topic
from tests.integration.conftest import Services
from tests.support import scaled

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).resolve().parents[1] / "clients" / "node"
MODEL = "node-detector"


def site_sections(shared_dir: Path) -> dict[str, Any]:
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "min_frames": 2, "model": MODEL},
        "manual": {"type": "external"},
    }
    camera = {"url": str(shared_dir / "media" / "people.mp4"), "fps": 5, "loop": True, "rules": rules}
    return {
        "cameras": {"dock": camera},
        "tracker": {"min_hits": 2, "max_age_s": 1.0},
        "uplink": {"jsonl": {"path": "uplink.jsonl"}},
    }


class FrameHashes:
    """Every frame of ``camera`` the bus announces, read with Python's own ring reader: seq -> sha256."""

    def __init__(self, site: Services, camera: str) -> None:
        self.site = site
        self.camera = camera
        self.hashes: dict[int, str] = {}
        self.stop = threading.Event()
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.SUB)
        self.socket.setsockopt(zmq.SUBSCRIBE, topic("frames", camera))
        self.socket.connect(Endpoint.parse(site.config.bus.subscribe[0]).address)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        reader: FrameRingReader | None = None
        while not self.stop.is_set():
            if not self.socket.poll(100):
                continue
            ref = decode(self.socket.recv_multipart()[1], FrameRef)
            try:
                reader = reader or FrameRingReader(ref.segment, shm_dir=self.site.config.site.shm_dir)
                self.hashes[ref.seq] = hashlib.sha256(reader.copy(ref).tobytes()).hexdigest()
            except ShmError:
                continue  # lapped (StaleFrameError) or not there yet: the next frame is read
        if reader is not None:
            reader.close()

    def __enter__(self) -> FrameHashes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        self.socket.close(linger=0)
        self.context.term()


@pytest.fixture
def node() -> Callable[..., dict[str, dict[str, Any]]]:
    """``node(*args, seconds=...)`` runs the client; returns its steps (one JSON object a line) by step name."""
    executable = shutil.which("node")
    assert executable, "node is not installed: run scripts/bootstrap.sh"
    assert (CLIENT / "node_modules" / "zeromq").is_dir(), f"{CLIENT}/node_modules is missing: run scripts/bootstrap.sh"

    def run(*args: str, seconds: float, script: str = "main.mjs") -> dict[str, dict[str, Any]]:
        try:
            done = subprocess.run(
                [executable, str(CLIENT / script), *args], capture_output=True, text=True, timeout=seconds
            )
        except subprocess.TimeoutExpired as exc:
            raise AssertionError(f"the node client ran past {seconds:g} s:\n{exc.stdout!r}\n{exc.stderr!r}") from None
        assert done.returncode == 0, f"node exited {done.returncode}:\n{done.stdout}\n{done.stderr[-3000:]}"
        steps = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
        return {step["step"]: step for step in steps}

    return run


@pytest.fixture
def shm_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real tmpfs, as in production (and test_shm)."""
    folder = Path("/dev/shm") / f"edgesight-node-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()


def test_the_documented_pread_seqlock_never_yields_a_torn_frame(
    tmp_path: Path, shm_dir: Path, python_env: dict[str, str], node: Callable[..., dict[str, dict[str, Any]]]
) -> None:
    """A writer at full speed on two slots laps the node reader (slowed between the pixels and the second
    generation): every frame the generations accept is whole (each frame is one value, from its seq)."""
    address = f"ipc://{tmp_path}/frames.sock"
    argv = [sys.executable, "-m", "tests.integration.shm_writer", "--dir", str(shm_dir), "--publish", address]
    argv += ["--slots", "2", "--width", "640", "--height", "480"]
    writer = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=python_env)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        result = node(
            "--frames",
            address,
            "--shm-dir",
            str(shm_dir),
            "--valid",
            "100",
            seconds=scaled(90),
            script="shm_stress.mjs",
        )
    finally:
        writer.send_signal(signal.SIGTERM)
        writer.wait(timeout=10)
    stress = result["shm_stress"]
    assert stress["torn"] == 0, stress
    assert stress["valid"] >= 100, stress
    assert stress["stale"] > 0, f"the writer never lapped the reader; the test proved nothing: {stress}"


@pytest.mark.timeout(300)  # four services start, then the client's own limit (150 s)
def test_a_node_client_speaks_the_wire_format_from_its_documentation(
    shared_dir: Path, services: Callable[[dict[str, Any]], Services], node: Callable[..., dict[str, dict[str, Any]]]
) -> None:
    site = services(site_sections(shared_dir))
    config = site.config
    for name in ("broker", "uplink", "rules", "ingest"):  # consumers first
        site.start(name)
    bus = config.bus
    args = [
        *("--subscribe", Endpoint.parse(bus.subscribe[0]).address),
        *("--publish", Endpoint.parse(bus.publish).address),
        *("--events", Endpoint.parse(bus.events.send).address),
        *("--shm-dir", str(config.site.shm_dir), "--site", config.site.name, "--camera", "dock"),
        *("--line-rule", "door", "--external-rule", "manual", "--model", MODEL, "--wait-s", str(scaled(30))),
    ]
    started = time.monotonic()
    with FrameHashes(site, "dock") as python_reader:
        steps = node(*args, seconds=scaled(150))
    print(f"node client: {time.monotonic() - started:.1f} s")

    subscribed = steps["subscribe"]
    assert subscribed["frame"]["segment"] == "edgesight.test.dock"
    assert {"ingest", "rules", "uplink"} <= set(subscribed["health"]), subscribed

    # pixels read by node with pread and the seqlock are those Python's reader got for the same frames
    frames = steps["shm"]["frames"]
    compared = [frame for frame in frames if frame["seq"] in python_reader.hashes]
    assert compared, f"python read none of the frames node read: {frames}, {sorted(python_reader.hashes)[-5:]}"
    assert all(frame["sha256"] == python_reader.hashes[frame["seq"]] for frame in compared), frames
    assert 10 < frames[0]["mean"] < 245, frames[0]  # a picture, not an empty slot

    # the external detector's person crossed the line: rules counted it under the detector's model
    assert steps["count"]["model"] == MODEL
    assert steps["count"]["lines"] == {"person": {"in": 1, "out": 0}}, steps["count"]

    acked, refused, duplicate = steps["ack"], steps["refused"], steps["duplicate"]
    assert (acked["topic"], acked["receiver"], acked["refusal"]) == ("acks/uplink/", "uplink", None), acked
    assert acked["id"] in acked["ids"]
    assert refused["refusal"]["reason"] == "wrong_site" and refused["id"] not in refused["ids"], refused
    assert duplicate["id"] in duplicate["ids"] and duplicate["refusal"] is None, duplicate
    assert steps["invalid"]["refusal"]["reason"] in ("invalid", "malformed"), steps["invalid"]
    attack = steps["malformed"]
    assert attack["id"] in attack["ids"], attack  # still up, and answering, after bodies without an id
    assert acked["id"].startswith("manual:"), acked  # an external rule's ids are its own
    foreign = steps["foreign_id"]
    assert foreign["refusal"]["reason"] == "invalid" and "'manual:'" in foreign["refusal"]["detail"], foreign
    assert foreign["id"] not in foreign["ids"], foreign

    # the site's own record: the uplink's jsonl has each accepted event once, the refused one never
    jsonl = Path(config.site.state_dir) / "uplink.jsonl"

    def stored() -> list[dict[str, Any]]:
        return [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.exists() else []

    end = time.monotonic() + scaled(30)
    while not {acked["id"], attack["id"]} <= {e["id"] for e in stored()} or not crossings(stored()):
        assert time.monotonic() < end, f"the uplink's jsonl lacks events: {stored()}"
        time.sleep(0.2)
    ids = [event["id"] for event in stored()]
    assert ids.count(acked["id"]) == 1, ids
    assert refused["id"] not in ids and steps["invalid"]["id"] not in ids and foreign["id"] not in ids
    crossing = crossings(stored())[0]
    assert crossing["counts"] == {"in": 1, "out": 0}, crossing
    assert site.processes["uplink"].poll() is None


def crossings(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [event for event in events if event["event_type"] == "line_cross" and event["rule"] == "door"]

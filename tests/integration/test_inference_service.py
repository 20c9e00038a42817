"""The inference service as a process: frames written to shared memory by the test, Detections on the bus."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from common.bus import Publisher, Subscriber
from common.shm import FrameRingWriter, frame_bytes
from common.trust import ModelStore, TrustPolicy, build_package, generate_key_pair, key_id, load_signing_key
from contracts import Control, Detections, topic
from tests.integration.conftest import Services
from tests.media import dynamic_batch_copy, frame_at
from tests.support import bus_handshake, control_handshake, deadline, http_get, scaled

pytestmark = pytest.mark.slow


def people_manifest(folder: Path, shared_dir: Path, version: str = "1") -> Path:
    """YOLOX-Nano with a dynamic batch, described by a manifest: batches of several cameras run at once."""
    model = folder / "yolox_nano_dynamic.onnx"
    if not model.exists():
        dynamic_batch_copy(shared_dir / "models" / "yolox_nano.onnx", model)
    manifest = folder / "people.yaml"
    fields = {
        "name": "people",
        "version": version,
        "file": model.name,
        "decoder": "yolox",
        "color": "bgr",
        "scale": 1.0,
        "letterbox": "top_left",
        "labels": "coco80",
        "classes": ["person"],
    }
    manifest.write_text(yaml.safe_dump(fields))
    return manifest


async def feed_and_collect(
    site: Services, frame: np.ndarray, cameras: list[str], rounds: int, until: Callable[[list[Detections]], bool]
) -> list[Detections]:  # type: ignore[type-arg]
    """Writes ``frame`` for every camera each round (as ingest would) and collects Detections."""
    config = site.config
    rings = {
        camera: FrameRingWriter.create(
            config.site.name, camera, slots=4, capacity=frame_bytes("bgr24", 854, 480), shm_dir=config.site.shm_dir
        )
        for camera in cameras
    }
    received: list[Detections] = []
    try:
        async with (
            Subscriber(config.bus.subscribe, "test", [topic("detections")], hwm=1000) as subscriber,
            Publisher(config.bus.publish, "test") as publisher,
        ):
            # subscriptions reach the broker: what came meanwhile (a previous round's answers) is kept
            early = await bus_handshake(publisher=publisher, subscriber=subscriber)
            received.extend(r.message for r in early if isinstance(r.message, Detections))

            async def collect() -> None:
                async for message in subscriber:
                    if isinstance(message.message, Detections):
                        received.append(message.message)

            task = asyncio.create_task(collect())
            for _ in range(rounds):
                for camera, ring in rings.items():
                    await publisher.publish("frames", camera, ring.write(frame))
                await asyncio.sleep(0.4)
                if until(received):
                    break
            for _ in range(round(scaled(300))):  # up to 30 s for the last results
                if until(received):
                    break
                await asyncio.sleep(0.1)
            task.cancel()
    finally:
        for ring in rings.values():
            ring.close()
    return received


def test_two_cameras_two_models_batched(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    manifest = people_manifest(tmp_path, shared_dir)
    site = services(
        {
            "models": {
                # one engine, as a GPU gets: two engines would each take one camera's frame, not a batch
                "people": {"path": str(manifest), "max_batch": 4, "max_wait_ms": 100, "engines": 1},
                "v8": {"path": "yolov8n_int8.onnx", "classes": ["person"]},
            },
            "cameras": {"dock-1": {"url": "rtsp://unused/1"}, "dock-2": {"url": "rtsp://unused/2"}},
        }
    )
    site.start("broker")
    base = site.start("inference")
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)

    def enough(received: list[Detections]) -> bool:
        return {(d.model, d.frame.camera) for d in received} == {
            (m, c) for m in ("people", "v8") for c in ("dock-1", "dock-2")
        } and any(d.timing.batch_size == 2 for d in received)

    received = asyncio.run(feed_and_collect(site, frame, ["dock-1", "dock-2"], 15, enough))
    assert enough(received), [(d.model, d.frame.camera, d.timing.batch_size) for d in received]
    for detections in received:
        assert detections.labels in ({0: "person"}, {})
        assert detections.class_ids.to_numpy().tolist() == [0] * len(detections.class_ids.to_numpy())
        persons = len(detections.scores.to_numpy())
        assert persons >= (15 if detections.model == "people" else 20), (detections.model, persons)
        assert detections.timing.provider == "CPUExecutionProvider"
    batched = [d for d in received if d.model == "people" and d.timing.batch_size == 2]
    assert {d.frame.camera for d in batched} == {"dock-1", "dock-2"}
    assert all(d.timing.batch_size == 1 for d in received if d.model == "v8")  # a static batch of 1
    _, metrics = http_get(f"{base}/metrics")
    assert (
        'edgesight_inference_seconds_count{backend="onnxruntime",batch="2",model="people",provider="CPUExecutionProvider"}'
        in metrics
    )
    assert (
        'edgesight_model_info{backend="onnxruntime",model="people",provider="CPUExecutionProvider",version="1"} 1.0'
        in metrics
    )


def test_new_model_version_is_swapped_in_without_a_restart(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    manifest = people_manifest(tmp_path, shared_dir, version="1")
    site = services(
        {
            "models": {"people": {"path": str(manifest), "max_wait_ms": 0}},
            "cameras": {"gate": {"url": "rtsp://unused/1"}},
        }
    )
    site.start("broker")
    site.start("inference")
    process = site.processes["inference"]
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    first = asyncio.run(feed_and_collect(site, frame, ["gate"], 5, lambda r: len(r) > 0))
    assert first and first[0].model_version == "1"
    people_manifest(tmp_path, shared_dir, version="2")  # the watcher notices the manifest changed
    second = asyncio.run(feed_and_collect(site, frame, ["gate"], 30, lambda r: any(d.model_version == "2" for d in r)))
    assert any(d.model_version == "2" for d in second)

    async def control_reload() -> None:
        async with Publisher(site.config.bus.publish, "test") as publisher:
            await control_handshake(publisher, "inference", site.base("inference"))
            await publisher.publish(
                "control", "inference", Control(id="r1", command="reload", args={"model": "people"})
            )

    asyncio.run(control_reload())
    end = deadline(60)
    while site.log("inference").count('msg="model reloaded"') < 2 and time.monotonic() < end:
        time.sleep(0.1)
    log = site.log("inference")
    assert log.count('msg="model reloaded"') == 2, log
    assert 'reason="control r1"' in log
    assert process.poll() is None


def test_a_broken_model_stops_the_service_at_start_with_a_clear_error(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    site = services({"models": {"people": {"path": str(broken)}}, "cameras": {"gate": {"url": "rtsp://unused/1"}}})
    site.start("broker")
    with pytest.raises(AssertionError, match="inference exited with 1"):
        site.start("inference")  # never becomes ready
    assert "broken.onnx is not a loadable ONNX model" in site.log("inference")


def test_forged_frame_refs_are_rejected_and_health_stays_true(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """A FrameRef naming a FIFO once hung inference in open() while /healthz said ok. A ref to a file
    that is not a ring, or to a name outside the pattern, is counted as rejected; real frames flow."""
    import os

    from tests.support import frame_ref

    site = services({"models": {"people": {"path": "yolox_nano.onnx"}}, "cameras": {"gate": {"url": "rtsp://x/1"}}})
    site.start("broker")
    base = site.start("inference")
    shm_dir = Path(site.config.site.shm_dir)
    os.mkfifo(shm_dir / "edgesight.test.fifo")
    (shm_dir / "edgesight.test.plain").write_bytes(b"\0" * 100)

    def rejected_so_far() -> float:
        _, metrics = http_get(f"{base}/metrics")
        found = re.search(
            r'^edgesight_inference_frames_skipped_total\{model="people",reason="rejected"\} (\S+)$', metrics, re.M
        )
        return float(found.group(1)) if found else 0.0

    async def forge() -> None:
        async with Publisher(site.config.bus.publish, "test") as publisher:
            await bus_handshake(publisher=publisher, bus=site.config.bus)
            for seq in range(5):
                for segment in ("edgesight.test.fifo", "edgesight.test.plain", "edgesight.test.absent"):
                    ref = frame_ref("gate", seq, segment=segment, width=64, height=48, stride=192)
                    before = await asyncio.to_thread(rejected_so_far)
                    await publisher.publish("frames", "gate", ref)
                    end = deadline(30)  # one at a time: a newer ref would replace a waiting one
                    while await asyncio.to_thread(rejected_so_far) == before:
                        assert time.monotonic() < end, f"{segment} not rejected"
                        await asyncio.sleep(0.05)

    asyncio.run(forge())
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    received = asyncio.run(feed_and_collect(site, frame, ["gate"], 10, lambda r: len(r) > 0))
    assert received, "real frames still run"
    _, metrics = http_get(f"{base}/metrics")
    rejected = float(
        metrics.split('edgesight_inference_frames_skipped_total{model="people",reason="rejected"} ')[1].split()[0]
    )
    assert rejected >= 3
    assert http_get(f"{base}/healthz")[0] == 200
    assert site.log("inference").count("cannot read frame") <= 3  # once per segment and reason


def test_installed_packages_are_swapped_in_and_a_tampered_one_is_refused_while_serving(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """`models install` and `rollback` under a running inference service; then the current package changed on
    disk: the reload is refused, audited, and the loaded version keeps serving."""
    private, public = generate_key_pair(tmp_path / "keys", "signing")
    signer = load_signing_key(private)
    packages = {}
    for version in ("1", "2"):
        text = people_manifest(tmp_path, shared_dir, version).read_text()
        members = {
            "manifest.yaml": text.encode(),
            "yolox_nano_dynamic.onnx": (tmp_path / "yolox_nano_dynamic.onnx").read_bytes(),
        }
        packages[version] = tmp_path / f"people-{version}.espkg"
        packages[version].write_bytes(build_package(members, name="people", version=version, signing_key=signer))
    site = services(
        {
            "site": {"trusted_keys": [str(public)]},
            "models": {"people": {"path": "people.espkg", "max_wait_ms": 0}},
            "cameras": {"gate": {"url": "rtsp://unused/1"}},
        }
    )
    store = ModelStore(Path(site.config.site.state_dir) / "models")
    policy = TrustPolicy.from_site(site.config.site)
    store.install(packages["1"], policy)
    site.start("broker")
    site.start("inference")
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)

    def serving(version: str) -> list[Detections]:
        return asyncio.run(
            feed_and_collect(site, frame, ["gate"], 30, lambda r: any(d.model_version == version for d in r))
        )

    assert any(d.model_version == "1" for d in serving("1"))
    store.install(packages["2"], policy)  # the link swaps: the file watch reloads within 2 s
    assert any(d.model_version == "2" for d in serving("2"))
    store.rollback("people")
    assert any(d.model_version == "1" for d in serving("1"))

    current = Path(site.config.site.state_dir) / "models" / "people" / "1.espkg"
    tampered = bytearray(current.read_bytes())
    tampered[len(tampered) // 2] ^= 1
    current.write_bytes(bytes(tampered))  # changed on disk behind the store's back
    end = deadline(60)
    while 'msg="model reload failed' not in site.log("inference") and time.monotonic() < end:
        time.sleep(0.2)
    assert "the loaded version stays" in site.log("inference"), site.log("inference")
    assert any(d.model_version == "1" for d in serving("1"))  # still serving what it had loaded
    audit = [json.loads(line) for line in (Path(site.config.site.state_dir) / "audit.jsonl").read_text().splitlines()]
    loads = [(r["action"], r["detail"].get("version")) for r in audit if r["action"].startswith("model.load")]
    assert loads == [("model.load", "1"), ("model.load", "2"), ("model.load", "1"), ("model.load_failed", None)], loads
    assert audit[-1]["detail"]["kept"] == "1" and "people.espkg" in audit[-1]["detail"]["error"]
    assert all(r["detail"].get("signer") == key_id(signer.public_key()) for r in audit if r["action"] == "model.load")

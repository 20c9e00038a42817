"""The inference service as a process with ``backend: tensorrt``, on the stand-in of TensorRT and CUDA
(tests/standin: the engine runs on ONNX Runtime underneath; no GPU ran this): it builds the engine once,
serves Detections in batches, loads the cached engine after a restart, stops cleanly, and runs the model
on ONNX Runtime, said and counted, when TensorRT cannot build it."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from contracts import Detections
from tests.integration.conftest import Services
from tests.integration.test_inference_service import feed_and_collect, people_manifest
from tests.media import frame_at
from tests.standin_support import standin_environment
from tests.support import http_get

pytestmark = pytest.mark.slow

CAMERAS = ["dock-1", "dock-2"]


def tensorrt_site(
    services: Callable[[dict[str, Any]], Services], shared_dir: Path, tmp_path: Path, **standin: Any
) -> tuple[Services, dict[str, str]]:
    manifest = people_manifest(tmp_path, shared_dir)
    model = {"path": str(manifest), "backend": "tensorrt", "max_batch": 4, "max_wait_ms": 100, "engines": 1}
    site = services(
        {"models": {"people": model}, "cameras": {camera: {"url": f"rtsp://unused/{camera}"} for camera in CAMERAS}}
    )
    env = standin_environment(site.env, **standin)
    env["EDGESIGHT_ENGINE_CACHE"] = str(tmp_path / "engines")
    site.start("broker")
    return site, env


def metric(base: str, pattern: str) -> float | None:
    found = re.search(pattern + r" ([0-9.e+-]+)$", http_get(f"{base}/metrics")[1], re.MULTILINE)
    return float(found.group(1)) if found else None


def serves_both(received: list[Detections]) -> bool:
    return {d.frame.camera for d in received} == set(CAMERAS) and any(d.timing.batch_size == 2 for d in received)


def test_the_engine_is_built_once_and_loaded_after_a_restart(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site, env = tensorrt_site(services, shared_dir, tmp_path)
    base = site.start("inference", env=env)
    assert metric(base, r'edgesight_model_info\{[^}]*backend="tensorrt"[^}]*model="people"[^}]*\}') == 1
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    received = asyncio.run(feed_and_collect(site, frame, CAMERAS, 15, serves_both))
    assert serves_both(received), [(d.frame.camera, d.timing.batch_size) for d in received]
    assert all(len(d.boxes.to_numpy()) >= 15 for d in received)  # the crowd, through the engine's buffers
    log = site.log("inference")
    assert "building a TensorRT engine" in log and "TensorRT engine built and cached" in log
    assert len(list((tmp_path / "engines").glob("*.cached-engine"))) == 1

    site.processes["inference"].terminate()
    assert site.processes["inference"].wait(timeout=20) == 0
    assert "Traceback" not in site.log("inference")  # the engines closed cleanly at the stop

    site.start("inference", env=env)
    log = site.log("inference")
    assert "TensorRT engine loaded from the cache" in log and "building a TensorRT engine" not in log
    received = asyncio.run(feed_and_collect(site, frame, CAMERAS, 15, serves_both))
    assert serves_both(received)


def test_a_failed_build_runs_the_model_on_onnx_runtime(
    shared_dir: Path, tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site, env = tensorrt_site(services, shared_dir, tmp_path, build_fail=1)
    base = site.start("inference", env=env)
    fallbacks = (
        r'edgesight_model_backend_fallbacks_total\{model="people",running="CPUExecutionProvider",wanted="tensorrt"\}'
    )
    assert metric(base, fallbacks) == 1
    assert metric(base, r'edgesight_model_info\{[^}]*backend="onnxruntime"[^}]*model="people"[^}]*\}') == 1
    log = site.log("inference")
    assert log.count("TensorRT cannot run this model here; running it on ONNX Runtime") == 1
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    received = asyncio.run(feed_and_collect(site, frame, CAMERAS, 15, serves_both))
    assert serves_both(received)

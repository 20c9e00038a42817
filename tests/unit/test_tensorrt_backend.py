"""The TensorRT backend's whole data path, in CI, on the stand-in of ``tensorrt`` and ``cuda`` (tests/standin),
which enforces the rules the backend depends on and runs the engine with ONNX Runtime: the same boxes as
ONNX Runtime on the clip, the engine cache (reused, locked, torn, read-only), buffers allocated once and
freed on every path, the fallback to ONNX Runtime, JetPack 6.0's TensorRT 8.6. No GPU ran any of this."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

import common.models.engine_cache as engine_cache
import common.models.tensorrt_build as tensorrt_build
from common.config import ModelConfig
from common.errors import ModelError
from common.models import ModelFile, OnnxRuntimeBackend, open_backend
from common.models.engine_cache import pack, unpack
from common.models.tensorrt import TensorRTBackend, TensorRTSetupError
from services.inference.detector import Detector
from services.inference.worker import ModelWorker, WorkerLinks
from tests.media import dynamic_batch_copy, frame_at
from tests.standin_support import STANDIN_DIR, use_standin

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> SimpleNamespace:
    cache = tmp_path / "engines"
    monkeypatch.setenv("EDGESIGHT_ENGINE_CACHE", str(cache))
    monkeypatch.setattr(engine_cache, "STOPPING", threading.Event())  # a service stopped in this process before
    trt, cudart = use_standin(monkeypatch)
    return SimpleNamespace(trt=trt, cudart=cudart, cache=cache)


@pytest.fixture(scope="module")
def yolox(shared_dir: Path) -> Path:
    return shared_dir / "models" / "yolox_nano.onnx"


@pytest.fixture
def dynamic_yolox(yolox: Path, tmp_path: Path) -> Path:
    return dynamic_batch_copy(yolox, tmp_path / "yolox_dynamic.onnx")


def images(batch: int, seed: int = 0) -> np.ndarray:  # type: ignore[type-arg]
    return np.random.default_rng(seed).uniform(0, 255, (batch, 3, 416, 416)).astype(np.float32)


def onnx_runtime(path: Path) -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(ModelFile.at(path, "reference"), ["CPUExecutionProvider"], max_batch=4)


def fp16_close(got: np.ndarray, want: np.ndarray) -> bool:  # type: ignore[type-arg]
    """Within what an FP16 engine differs from FP32 (the stand-in rounds outputs through float16)."""
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=2e-3, atol=2e-2))


def build_once(standin: SimpleNamespace, spec: ModelFile) -> Path:
    """The cache file of ``spec``'s engine, built (and closed) once."""
    TensorRTBackend(spec).close()
    [engine] = standin.cache.glob("*.cached-engine")
    return engine


def leaks(standin: SimpleNamespace) -> tuple[list[Any], list[Any]]:
    return standin.cudart.standin.live_allocations(), standin.cudart.standin.live_streams()


def fallbacks(model: str, running: str) -> float:
    labels = {"model": model, "wanted": "tensorrt", "running": running}
    return REGISTRY.get_sample_value("edgesight_model_backend_fallbacks_total", labels) or 0.0


@pytest.mark.parametrize("integrated", ["1", "0"], ids=["jetson-unified-memory", "discrete-gpu"])
def test_same_boxes_as_onnx_runtime_on_the_clip(
    standin: SimpleNamespace, dynamic_yolox: Path, shared_dir: Path, integrated: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESIGHT_STANDIN_INTEGRATED", integrated)
    config = {"path": str(dynamic_yolox), "score_threshold": 0.3, "max_batch": 4}
    tensorrt = Detector.from_config(ModelConfig(backend="tensorrt", **config))
    reference = Detector.from_config(ModelConfig(backend="onnxruntime", **config))
    assert tensorrt.backend.name == "tensorrt" and tensorrt.max_batch == 4
    frames = [frame_at(shared_dir / "media" / "people.mp4", index) for index in (0, 60, 120, 180, 240, 300)]
    got, timings = tensorrt.detect(frames)  # batches of 4 and 2 through the same buffers
    want, _ = reference.detect(frames)
    assert [t.batch_size for t in timings] == [4, 2]
    for mine, theirs in zip(got, want, strict=True):
        assert len(theirs.boxes) >= 15  # the crowd
        confident = theirs.scores > 0.35  # far enough from the threshold that FP16 cannot move them across
        for box in theirs.boxes[confident]:
            assert np.abs(mine.boxes - box).max(axis=1).min() < 2e-3  # the same box, to a pixel's fraction
        assert abs(len(mine.boxes) - len(theirs.boxes)) <= 1
    if integrated == "1":  # unified memory: the GPU reads the host's buffers, nothing is copied to a device
        assert not standin.cudart.standin.live_allocations("device")
    tensorrt.close()
    assert leaks(standin) == ([], [])


def test_buffers_are_allocated_once_at_the_largest_batch(standin: SimpleNamespace, dynamic_yolox: Path) -> None:
    backend = open_backend(ModelFile.at(dynamic_yolox, "people"), "tensorrt", [], max_batch=4)
    reference = onnx_runtime(dynamic_yolox)
    allocated = standin.cudart.standin.allocation_count
    assert allocated == 2  # one input, one output: not one set per batch size (2 GB at max_batch 16 on an Orin)
    for batch in (3, 1, 4, 2):
        feed = images(batch, seed=batch)
        assert fp16_close(backend.run(feed)[0], reference.run(feed)[0]), f"batch {batch}"
    assert standin.cudart.standin.allocation_count == allocated
    with pytest.raises(ModelError, match="more than this engine's 4"):
        backend.run(images(5))
    backend.close()


@pytest.mark.parametrize("max_batch", [1, 4])
def test_a_dynamic_batch_gets_a_profile_at_any_max_batch(
    standin: SimpleNamespace, dynamic_yolox: Path, max_batch: int
) -> None:
    # max_batch 1 is the apps service's and the Panorama SDK's default: it used to build without a profile
    backend = open_backend(ModelFile.at(dynamic_yolox, "people"), "tensorrt", [], max_batch=max_batch)
    assert backend.name == "tensorrt" and backend.max_batch == max_batch and not backend.static_batch
    assert fp16_close(backend.run(images(1))[0], onnx_runtime(dynamic_yolox).run(images(1))[0])
    backend.close()


def test_a_static_batch_with_a_dynamic_size_gets_a_profile(
    standin: SimpleNamespace, yolox: Path, tmp_path: Path
) -> None:
    import onnx

    graph = onnx.load(str(yolox))
    height, width = graph.graph.input[0].type.tensor_type.shape.dim[2:]
    height.dim_param, width.dim_param = "height", "width"
    graph.graph.output[0].type.tensor_type.shape.dim[1].dim_param = "anchors"
    onnx.save(graph, str(tmp_path / "any_size.onnx"))
    spec = ModelFile.at(tmp_path / "any_size.onnx", "people", input_size=(416, 416))
    backend = open_backend(spec, "tensorrt", [], max_batch=1)
    assert backend.name == "tensorrt" and (backend.input_width, backend.input_height) == (416, 416)
    assert backend.outputs[0].shape == (1, None, 85)
    assert fp16_close(backend.run(images(1))[0], onnx_runtime(yolox).run(images(1))[0])
    backend.close()


def test_the_cache_is_reused_and_keyed_by_the_gpu_model(
    standin: SimpleNamespace, yolox: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelFile.at(yolox, "people")
    TensorRTBackend(spec).close()
    assert standin.trt.standin.builds == 1
    caplog.set_level(logging.INFO)
    TensorRTBackend(spec).close()
    assert standin.trt.standin.builds == 1
    assert "TensorRT engine loaded from the cache" in caplog.text
    monkeypatch.setenv("EDGESIGHT_STANDIN_SMS", "8")  # an Orin Nano: also "Orin", but not the AGX's engine
    TensorRTBackend(spec).close()
    assert standin.trt.standin.builds == 2
    assert len(list(standin.cache.glob("*.cached-engine"))) == 2
    assert not list(standin.cache.glob("*.partial"))


def test_replicas_starting_together_build_the_engine_once(
    standin: SimpleNamespace, yolox: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("EDGESIGHT_STANDIN_BUILD_SECONDS", "0.5")
    caplog.set_level(logging.INFO)
    spec = ModelFile.at(yolox, "people")
    opened: list[TensorRTBackend] = []

    def replica() -> None:
        opened.append(TensorRTBackend(spec))

    replicas = [threading.Thread(target=replica) for _ in range(3)]
    for thread in replicas:
        thread.start()
    for thread in replicas:
        thread.join()
    assert len(opened) == 3
    assert standin.trt.standin.builds == 1  # the others waited on the lock and loaded its engine
    assert "another process is building this TensorRT engine" in caplog.text
    for backend in opened:
        assert fp16_close(backend.run(images(1))[0], onnx_runtime(yolox).run(images(1))[0])
        backend.close()


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_a_torn_cached_engine_is_rebuilt(
    standin: SimpleNamespace, yolox: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    spec = ModelFile.at(yolox, "people")
    engine = build_once(standin, spec)
    data = bytearray(engine.read_bytes())
    if damage == "truncated":  # a power cut while it was written
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    backend = TensorRTBackend(spec)
    assert standin.trt.standin.builds == 2
    assert "torn or corrupt" in caplog.text
    assert fp16_close(backend.run(images(1))[0], onnx_runtime(yolox).run(images(1))[0])
    backend.close()


def test_a_build_shows_progress_and_keeps_a_timing_cache(
    standin: SimpleNamespace,
    dynamic_yolox: Path,
    yolox: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tensorrt_build, "BUILD_HEARTBEAT_S", 0.05)
    monkeypatch.setenv("EDGESIGHT_STANDIN_BUILD_SECONDS", "0.4")
    caplog.set_level(logging.INFO)
    spec = ModelFile.at(dynamic_yolox, "people")
    TensorRTBackend(spec, max_batch=1).close()
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("building a TensorRT engine: minutes on a Jetson") for message in messages)
    assert "building TensorRT engine" in messages  # a phase TensorRT reported
    assert "still building TensorRT engine" in messages  # the heartbeat
    built = [r for r in caplog.records if r.getMessage() == "TensorRT engine built and cached"]
    assert len(built) == 1 and getattr(built[0], "seconds", 0) >= 0.4
    [timing] = standin.cache.glob("timing-*.cache")
    assert len(timing_entries(timing)) == 1
    TensorRTBackend(ModelFile.at(yolox, "people")).close()  # another model on this GPU starts from what is known
    assert standin.trt.standin.builds == 2
    assert len(timing_entries(timing)) == 2


def timing_entries(path: Path) -> list[str]:
    """What the stand-in's timing cache holds, read through the backend's own checked file format."""
    serialized = unpack(path.read_bytes(), None, path.name)
    assert serialized is not None and serialized.startswith(b"ESTRTTC1")
    return json.loads(serialized[len(b"ESTRTTC1") :])["entries"]  # type: ignore[no-any-return]


@pytest.fixture
def world_readable() -> Iterator[Path]:
    """A folder another user may enter (pytest's own are root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="edgesight-trt-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_a_read_only_cache_is_refused_before_a_build(yolox: Path, world_readable: Path) -> None:
    """As in a pod (uid 10001) whose engine folder the node created as root: refused at once, naming
    the folder and the fix, not after minutes of building with a bare PermissionError."""
    tmp_path = world_readable
    cache = tmp_path / "engines"
    cache.mkdir()
    script = """
import json, sys
from pathlib import Path
import tensorrt
from common.models import ModelFile, open_backend
from common.models.tensorrt import TensorRTSetupError
try:
    open_backend(ModelFile.at(Path(sys.argv[1]), "people"), "tensorrt", [])
    outcome = "opened"
except TensorRTSetupError as exc:
    outcome = str(exc)
print(json.dumps({"outcome": outcome, "builds": tensorrt.standin.builds}))
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(STANDIN_DIR), str(ROOT)]),
        "EDGESIGHT_ENGINE_CACHE": str(cache),
        "HOME": str(tmp_path),
    }
    command = ["setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups", sys.executable, "-c", script]
    result = subprocess.run([*command, str(yolox)], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["builds"] == 0
    assert f"the TensorRT engine cache {cache} is not writable by uid 10001" in report["outcome"]
    assert "init container" in report["outcome"]


def test_a_ready_engine_in_a_read_only_cache_is_used(standin: SimpleNamespace, yolox: Path) -> None:
    spec = ModelFile.at(yolox, "people")
    TensorRTBackend(spec).close()
    standin.cache.chmod(0o555)  # shipped with the image: loading needs no write, not even the lock
    try:
        TensorRTBackend(spec).close()
    finally:
        standin.cache.chmod(0o755)
    assert standin.trt.standin.builds == 1


@pytest.mark.parametrize(
    ("setting", "reason"),
    [("EDGESIGHT_STANDIN_BUILD_FAIL", "failed to build an engine"), ("EDGESIGHT_STANDIN_DEVICES", "no NVIDIA GPU")],
)
def test_a_model_tensorrt_cannot_run_falls_back_to_onnx_runtime(
    standin: SimpleNamespace,
    yolox: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    setting: str,
    reason: str,
) -> None:
    monkeypatch.setenv(setting, "1" if setting.endswith("FAIL") else "0")
    before = fallbacks("people", "CPUExecutionProvider")
    backend = open_backend(ModelFile.at(yolox, "people"), "tensorrt", [])
    assert isinstance(backend, OnnxRuntimeBackend) and backend.provider == "CPUExecutionProvider"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "running it on ONNX Runtime" in r.message]
    assert len(warnings) == 1 and reason in getattr(warnings[0], "reason", "")
    assert fallbacks("people", "CPUExecutionProvider") == before + 1
    assert leaks(standin) == ([], [])  # what the failed TensorRT backend allocated is freed
    assert backend.run(images(1))[0].shape == (1, 3549, 85)


def test_what_the_operator_must_fix_is_not_fallen_back_from(
    standin: SimpleNamespace, yolox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESIGHT_STANDIN_TRT_VERSION", "8.5.2")  # JetPack 5
    with pytest.raises(TensorRTSetupError, match=r"TensorRT 8.6 or later \(JetPack 6\), found 8.5.2"):
        open_backend(ModelFile.at(yolox, "people"), "tensorrt", [])
    monkeypatch.setenv("EDGESIGHT_STANDIN_TRT_VERSION", "10.3.0")
    engine = tmp_path / "people.engine"
    engine.write_bytes(b"not an engine")  # a plan from elsewhere: no ONNX graph to fall back to
    with pytest.raises(TensorRTSetupError, match="cannot load this engine"):
        open_backend(ModelFile.at(engine, "people"), "tensorrt", [])
    assert leaks(standin) == ([], [])


def test_tensorrt_8_6_of_jetpack_6_0_builds_and_runs(
    standin: SimpleNamespace, dynamic_yolox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESIGHT_STANDIN_TRT_VERSION", "8.6.2")  # needs an explicit-batch network
    backend = open_backend(ModelFile.at(dynamic_yolox, "people"), "tensorrt", [], max_batch=2)
    assert backend.name == "tensorrt" and backend.provider.startswith("TensorRT 8.6.2 on Orin")
    assert fp16_close(backend.run(images(2))[0], onnx_runtime(dynamic_yolox).run(images(2))[0])
    backend.close()


def test_an_output_sized_by_the_data_falls_back_and_leaks_nothing(standin: SimpleNamespace, tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Greater", ["images", "zero"], ["positive"]),
        helper.make_node("NonZero", ["positive"], ["where"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nonzero",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [4, "found"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])],
    )
    path = tmp_path / "nonzero.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    with pytest.raises(ModelError, match="size that depends on the data"):
        TensorRTBackend(ModelFile.at(path, "where"))
    assert leaks(standin) == ([], [])  # the stream and buffers of the half-made backend
    backend = open_backend(ModelFile.at(path, "where"), "tensorrt", [])
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.run(np.ones((1, 3, 8, 8), np.float32))[0].shape == (4, 192)


def test_close_frees_everything_once(standin: SimpleNamespace, yolox: Path) -> None:
    backend = TensorRTBackend(ModelFile.at(yolox, "people"))
    assert leaks(standin) != ([], [])
    backend.close()
    backend.close()  # again: nothing freed twice (the stand-in refuses a double free)
    assert leaks(standin) == ([], [])
    assert len(standin.cudart.standin.frees) == standin.cudart.standin.allocation_count
    with pytest.raises(ModelError, match="closed"):
        backend.run(images(1))


def test_the_inference_service_closes_engines_off_its_event_loop(standin: SimpleNamespace, yolox: Path) -> None:
    async def scenario() -> tuple[int, set[int]]:
        loop_thread = threading.get_ident()
        engines = [Detector.from_config(ModelConfig(path=str(yolox), backend="tensorrt")) for _ in range(2)]

        async def unused(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError("not expected")

        links = WorkerLinks(infer=lambda *a: [], publish=unused, load=lambda name: engines[0], audit=unused)
        worker = ModelWorker("people", ModelConfig(path=str(yolox), backend="tensorrt"), engines, links)
        await worker.close()
        return loop_thread, {free.thread for free in standin.cudart.standin.frees}

    loop_thread, threads = asyncio.run(scenario())
    assert threads and loop_thread not in threads  # cudaFree waits for the GPU: never on the event loop
    assert leaks(standin) == ([], [])


# As an attacker: what may sit under an engine's name, models that break the bindings, a stuck lock.


def sealed(path: Path) -> ModelFile:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from common.trust.encryption import engine_cache_key_of

    return ModelFile.at(path, "people", seal=engine_cache_key_of(X25519PrivateKey.generate()))


def test_with_a_device_key_a_planted_engine_does_not_run(standin: SimpleNamespace, yolox: Path, tmp_path: Path) -> None:
    """Another process that can write the cache folder (or a copy from another device) cannot swap the signed
    model's engine for its own: sealed entries are authenticated with the device key."""
    spec = sealed(yolox)
    TensorRTBackend(spec).close()
    [engine] = standin.cache.glob("*.cached-engine")
    weights = yolox.read_bytes()[-4096:]
    assert weights not in engine.read_bytes()  # an encrypted model's engine is no plainer on disk than the model
    import onnx
    from onnx import TensorProto, helper

    zeros = helper.make_graph(  # the attacker's look-alike: same input and output, finds nobody
        [helper.make_node("ConstantOfShape", ["shape"], ["output"])],
        "zeros",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 416, 416])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3549, 85])],
        [helper.make_tensor("shape", TensorProto.INT64, [3], [1, 3549, 85])],
    )
    onnx.save(helper.make_model(zeros, opset_imports=[helper.make_opsetid("", 13)]), str(tmp_path / "zeros.onnx"))
    planted = TensorRTBackend(ModelFile.at(tmp_path / "zeros.onnx", "zeros"))  # built unsealed, in the same folder
    planted.close()
    plan = unpack(next(p for p in standin.cache.glob("*.cached-engine") if p != engine).read_bytes(), None, "x")
    assert plan is not None
    for forged in (pack(plan, None, engine.name), pack(plan, engine_cache.AESGCM.generate_key(256), engine.name)):
        engine.write_bytes(forged)
        backend = TensorRTBackend(spec)
        assert fp16_close(backend.run(images(1))[0], onnx_runtime(yolox).run(images(1))[0])  # the real model
        backend.close()
    assert standin.trt.standin.builds == 4  # yolox, zeros, then yolox again after each forgery


def test_an_error_of_the_bindings_is_a_fallback_not_a_crash(
    standin: SimpleNamespace, yolox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unknown(dtype: Any) -> type:  # as TensorRT's own nptype does for BF16 and FP8 outputs
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")

    monkeypatch.setattr(standin.trt, "nptype", unknown)
    with pytest.raises(ModelError, match="TensorRT cannot run it: TypeError"):
        TensorRTBackend(ModelFile.at(yolox, "people"))
    assert leaks(standin) == ([], [])
    assert isinstance(open_backend(ModelFile.at(yolox, "people"), "tensorrt", []), OnnxRuntimeBackend)


def test_buffers_larger_than_a_share_of_the_gpu_are_refused(
    standin: SimpleNamespace, dynamic_yolox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGESIGHT_STANDIN_MEMORY_MIB", "256")  # 64 frames of 416x416 take ~200 MiB pinned
    with pytest.raises(ModelError, match=r"would take 0.2 GiB, more than 1/4 of the GPU's memory; lower max_batch"):
        TensorRTBackend(ModelFile.at(dynamic_yolox, "people"), max_batch=64)
    assert leaks(standin) == ([], [])


def test_a_lock_held_for_ever_is_given_up_on(
    standin: SimpleNamespace, yolox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fcntl

    monkeypatch.setattr(engine_cache, "LOCK_WAIT_S", 0.3)
    spec = ModelFile.at(yolox, "people")
    engine = build_once(standin, spec)
    engine.unlink()
    with open(engine.with_suffix(".lock"), "a+b") as held:  # a stuck process
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ModelError, match="giving up on it"):
            TensorRTBackend(spec)
        assert isinstance(open_backend(spec, "tensorrt", []), OnnxRuntimeBackend)


def test_close_waits_for_a_run_in_flight(standin: SimpleNamespace, yolox: Path) -> None:
    """At a stop the service closes engines while a batch may still run on a thread: the memory that run
    uses is freed only after it."""
    backend = TensorRTBackend(ModelFile.at(yolox, "people"))
    execute = backend.context.execute_async_v3
    started = threading.Event()

    def slow(stream: Any) -> bool:
        started.set()
        threading.Event().wait(0.3)
        return bool(execute(stream))

    backend.context.execute_async_v3 = slow
    outputs: list[np.ndarray] = []  # type: ignore[type-arg]
    run = threading.Thread(target=lambda: outputs.extend(backend.run(images(1))))
    run.start()
    started.wait(5)
    backend.close()
    run.join()
    assert fp16_close(outputs[0], onnx_runtime(yolox).run(images(1))[0])
    assert leaks(standin) == ([], [])


def test_a_refused_detector_frees_its_backend(standin: SimpleNamespace, yolox: Path) -> None:
    for _ in range(3):
        with pytest.raises(ModelError, match="has no classes"):
            Detector.from_config(ModelConfig(path=str(yolox), backend="tensorrt", classes=["forklift"]))
    assert leaks(standin) == ([], [])


def test_an_apps_feed_is_conformed_as_on_onnx_runtime(standin: SimpleNamespace, yolox: Path) -> None:
    backend = open_backend(ModelFile.at(yolox, "people"), "tensorrt", [])
    feed = images(1)[0].astype(np.float64)  # [3, H, W] float64, as a Panorama app may pass it
    assert fp16_close(backend.run_named({"x": feed})[0], onnx_runtime(yolox).run_named({"x": feed})[0])
    backend.close()


def test_config_check_says_what_tensorrt_lacks_without_building(
    standin: SimpleNamespace, yolox: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from common.config import load_config
    from services.inference.service import InferenceService
    from tests.conftest import write_site

    engine = tmp_path / "people.engine"  # a serialized engine: only TensorRT reads it, ONNX Runtime cannot
    engine.write_bytes(b"a plan from trtexec")
    manifest = tmp_path / "people.yaml"
    manifest.write_text("name: people\nfile: people.engine\ndecoder: yolox\ninput_size: [416, 416]\nlabels: coco80\n")
    models = {
        "onnx": {"path": str(yolox), "backend": "tensorrt"},
        "plan": {"path": str(manifest), "backend": "tensorrt"},
    }
    rule = {"type": "line", "line": [[0.1, 0.5], [0.9, 0.5]], "classes": ["person"]}
    site = write_site(tmp_path, {"models": models, "cameras": {"door": {"url": "rtsp://x/1", "rules": {"door": rule}}}})
    assert InferenceService.check(load_config(site)) == []
    assert standin.trt.standin.builds == 0  # a check builds nothing
    assert not standin.cache.exists()  # and creates nothing (a typo in EDGESIGHT_ENGINE_CACHE leaves no folder)
    monkeypatch.setenv("EDGESIGHT_STANDIN_DEVICES", "0")
    problems = InferenceService.check(load_config(site))
    assert len(problems) == 2 and all("models.onnx.backend" in p or "models.plan.backend" in p for p in problems)
    assert all("no NVIDIA GPU is visible to uid" in p and "video group, gid 44" in p for p in problems)


def test_a_build_is_cancelled_when_the_process_stops(
    standin: SimpleNamespace, yolox: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop's grace period (k3s: 15 s) is shorter than a build: the build is abandoned, said, not waited for."""
    import time

    monkeypatch.setenv("EDGESIGHT_STANDIN_BUILD_SECONDS", "30")
    errors: list[Exception] = []

    def load() -> None:
        try:
            TensorRTBackend(ModelFile.at(yolox, "people"))
        except ModelError as exc:
            errors.append(exc)

    builder = threading.Thread(target=load)
    builder.start()
    time.sleep(0.5)
    started = time.monotonic()
    engine_cache.cancel_builds()
    builder.join(10)
    assert not builder.is_alive() and time.monotonic() - started < 5
    assert len(errors) == 1 and "cancelled at a stop" in str(errors[0])
    assert "it starts over at the next start" in caplog.text
    assert not list(standin.cache.glob("*.cached-engine")) and leaks(standin) == ([], [])


@pytest.mark.parametrize("size", ["[-8, -8]", "[0, 416]", "[100000, 416]"])
def test_a_manifest_cannot_ask_for_any_input_size(tmp_path: Path, yolox: Path, size: str) -> None:
    """A backend sizes its buffers and profile by it: a negative side raised from TensorRT's bindings."""
    manifest = tmp_path / "people.yaml"
    manifest.write_text(f"name: people\nfile: {yolox}\ndecoder: yolox\ninput_size: {size}\nlabels: coco80\n")
    with pytest.raises(ModelError, match=r"input_size\.\d: Input should be (greater|less) than or equal to"):
        Detector.from_config(ModelConfig(path=str(manifest)))


# As a second writer of the cache folder (which the deployments give inference alone): what it plants is
# rebuilt over, never a crash-loop, an out-of-memory at every start, or an hour's wait.


PLANTS = ["fifo", "link to /dev/zero", "link to another engine", "folder", "unreadable file", "sparse gigabyte"]


@pytest.mark.parametrize("planted", PLANTS)
def test_what_sits_under_an_engines_name_is_rebuilt_over(
    standin: SimpleNamespace, yolox: Path, planted: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not read (a FIFO would block for ever, /dev/zero or a sparse file cost gigabytes at every start), not a
    crash-loop (another user's unreadable file), not a failed store (a folder): rebuilt over."""
    spec = ModelFile.at(yolox, "people")
    engine = build_once(standin, spec)
    engine.rename(engine.with_name("other.cached-engine"))
    if planted == "fifo":
        os.mkfifo(engine)
    elif planted.startswith("link"):
        engine.symlink_to("/dev/zero" if planted.endswith("/dev/zero") else engine.with_name("other.cached-engine"))
    elif planted == "folder":  # os.replace cannot put the new engine over a folder
        (engine / "inside").mkdir(parents=True)
    elif planted == "unreadable file":  # another user's 0600 file (this test runs as root: made to fail)
        engine.write_bytes(b"")
        real = engine_cache.read_regular

        def denied(path: Path, limit: int) -> bytes:
            if path == engine:
                raise PermissionError(13, "Permission denied")
            return real(path, limit)

        monkeypatch.setattr(engine_cache, "read_regular", denied)
    else:
        with engine.open("wb") as sparse:
            sparse.truncate(1 << 30)
    backend = TensorRTBackend(spec)
    assert standin.trt.standin.builds == 2 and backend.name == "tensorrt"
    assert engine.is_file() and not engine.is_symlink()
    assert engine.stat().st_size < engine_cache.engine_limit(yolox.stat().st_size)
    backend.close()


def test_a_planted_lock_is_replaced_and_a_wait_ends_at_a_stop(
    standin: SimpleNamespace, yolox: Path, tmp_path: Path
) -> None:
    import fcntl
    import time

    spec = ModelFile.at(yolox, "people")
    engine = build_once(standin, spec)
    engine.unlink()
    lock = engine.with_suffix(".lock")
    lock.unlink()
    lock.symlink_to(tmp_path / "elsewhere")  # O_NOFOLLOW refused it: every start fell back to the CPU
    TensorRTBackend(spec).close()
    assert standin.trt.standin.builds == 2 and not lock.is_symlink() and not (tmp_path / "elsewhere").exists()
    engine.unlink()
    with open(lock, "a+b") as held:  # a stuck (or hostile) builder
        fcntl.flock(held, fcntl.LOCK_EX)
        threading.Timer(0.5, engine_cache.cancel_builds).start()  # the service is told to stop
        started = time.monotonic()
        with pytest.raises(ModelError, match="stopped while waiting"):
            TensorRTBackend(spec)
        assert time.monotonic() - started < 5


def test_the_cache_keeps_the_engines_last_used(
    standin: SimpleNamespace, dynamic_yolox: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(engine_cache, "KEEP_ENGINES", 2)
    spec = ModelFile.at(dynamic_yolox, "people")
    for batch in (1, 2, 3):  # three engines of one model: one too many
        TensorRTBackend(spec, max_batch=batch).close()
    assert len(list(standin.cache.glob("*.cached-engine"))) == 2
    assert len(list(standin.cache.glob("*.lock"))) == 2


def test_an_engine_in_a_package_is_not_read_as_onnx() -> None:
    plan = ModelFile(Path("people.espkg/people.engine"), "people", "digest", content=b"a serialized plan")
    assert plan.read() == b"a serialized plan"  # was refused: "not an ONNX model"

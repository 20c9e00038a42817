"""The TensorRT and cudart stand-ins (tests/standin) enforce the rules real TensorRT and CUDA do, so a backend test
that passes on them has not just met a lenient fake."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper

from tests.standin_support import STANDIN_DIR, standin_environment, use_standin

# FP16 keeps 11 significant bits: a value's rounding error is at most 2**-11 of it
FP16_RTOL = 2**-10


def tiny_model(batch: int | str = "N", op: str = "Mul") -> bytes:
    """y = x * 2 over [batch, 4] (``op="NonZero"``: y = the indices of x's non-zeros, data-dependent)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])
    if op == "NonZero":
        y = helper.make_tensor_value_info("y", TensorProto.INT64, [2, "count"])
        nodes = [helper.make_node("NonZero", ["x"], ["y"])]
    else:
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4])
        nodes = [helper.make_node("Mul", ["x", "two"], ["y"])]
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph(nodes, "tiny", [x], [y], [two] if op == "Mul" else [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


@pytest.fixture(scope="module")
def yolox_dynamic(shared_dir: Path) -> bytes:
    """yolox_nano with a dynamic batch: dim 0 of its input and output named "N"."""
    model = onnx.load(shared_dir / "models" / "yolox_nano.onnx")
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "N"
    return model.SerializeToString()


@pytest.fixture
def standin(monkeypatch: pytest.MonkeyPatch) -> tuple[ModuleType, ModuleType]:
    return use_standin(monkeypatch)


def recorder(trt: ModuleType) -> Any:
    """A logger as a backend writes one (an ILogger subclass), keeping what it was told."""

    class Recorder(trt.ILogger):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.messages: list[tuple[Any, str]] = []

        def log(self, severity: Any, msg: str) -> None:
            self.messages.append((severity, msg))

        def errors(self) -> str:
            return "\n".join(msg for severity, msg in self.messages if severity <= trt.ILogger.Severity.ERROR)

    return Recorder()


def parse(trt: ModuleType, model: bytes, logger: Any, flags: int = 0) -> tuple[Any, Any]:
    builder = trt.Builder(logger)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(model), [str(parser.get_error(i)) for i in range(parser.num_errors)]
    return builder, network


def build(
    trt: ModuleType, model: bytes, logger: Any, shapes: tuple[Any, ...] | None = ((1, 4), (4, 4), (8, 4)), **flags: Any
) -> Any:
    """The serialized engine (None when refused), with one profile of ``shapes`` for the input "x"."""
    builder, network = parse(trt, model, logger)
    config = builder.create_builder_config()
    if flags.get("fp16"):
        config.set_flag(trt.BuilderFlag.FP16)
    if shapes is not None:
        profile = builder.create_optimization_profile()
        profile.set_shape(network.get_input(0).name, *shapes)
        config.add_optimization_profile(profile)
    return builder.build_serialized_network(network, config)


def engine(trt: ModuleType, model: bytes | None = None, **build_options: Any) -> Any:
    logger = recorder(trt)
    plan = build(trt, model or tiny_model(), logger, **build_options)
    assert plan is not None, logger.errors()
    return trt.Runtime(logger).deserialize_cuda_engine(plan)


def ok(result: tuple[Any, ...]) -> Any:
    """The value of a cudart call that must succeed."""
    assert int(result[0]) == 0, result
    return result[1] if len(result) == 2 else result[1:]


def pinned_array(cudart: ModuleType, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    pointer = ok(cudart.cudaMallocHost(nbytes))
    return np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(pointer)).view(dtype).reshape(shape)


def test_a_dynamic_input_needs_an_optimisation_profile(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, _ = standin
    logger = recorder(trt)
    assert build(trt, tiny_model(), logger, shapes=None) is None
    assert "Network has dynamic or shape inputs, but no optimization profile has been defined." in logger.errors()
    assert build(trt, tiny_model(batch=2), recorder(trt), shapes=None) is not None  # a static network needs none


def test_a_profile_must_be_ordered_and_match_the_networks_fixed_dims(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, _ = standin
    profile = trt.Builder(recorder(trt)).create_optimization_profile()
    with pytest.raises(RuntimeError, match="Shape provided for opt is inconsistent"):
        profile.set_shape("x", (4, 4), (2, 4), (8, 4))
    with pytest.raises(RuntimeError, match="Shape provided for max is inconsistent"):
        profile.set_shape("x", (1, 4), (2, 4), (8, 4, 1))
    logger = recorder(trt)
    assert build(trt, tiny_model(), logger, shapes=((1, 3), (1, 3), (1, 3))) is None
    assert "for dimension number 1 in profile 0 does not match network definition" in logger.errors()


def test_tensorrt_8_refuses_an_implicit_batch_network(monkeypatch: pytest.MonkeyPatch) -> None:
    trt, _ = use_standin(monkeypatch, TRT_VERSION="8.6.1")
    assert trt.__version__ == "8.6.1"
    logger = recorder(trt)
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    assert not parser.parse(tiny_model())
    assert parser.num_errors == 1
    assert "explicit batch dimension" in str(parser.get_error(0))
    assert parser.get_error(0).code() == trt.ErrorCode.INVALID_VALUE
    parse(trt, tiny_model(), logger, flags=1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    assert not hasattr(trt, "IProgressMonitor")
    assert not hasattr(trt.Builder(logger).create_builder_config(), "progress_monitor")


def test_tensorrt_10_networks_are_always_explicit_batch(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, _ = standin
    _, network = parse(trt, tiny_model(), recorder(trt), flags=0)
    assert (network.num_inputs, network.num_outputs) == (1, 1)
    assert (network.get_input(0).name, tuple(network.get_input(0).shape)) == ("x", (-1, 4))
    assert network.get_input(0).dtype == trt.DataType.FLOAT


@pytest.mark.parametrize("garbage", [b"", b"not an onnx model", bytes(range(256)) * 8])
def test_the_parser_refuses_what_is_not_an_onnx_model(standin: tuple[ModuleType, ModuleType], garbage: bytes) -> None:
    trt, _ = standin
    logger = recorder(trt)
    parser = trt.OnnxParser(trt.Builder(logger).create_network(0), logger)
    assert not parser.parse(garbage)
    assert parser.num_errors > 0
    assert logger.errors()


def test_a_plan_loads_only_whole_and_on_the_version_and_device_that_built_it(
    standin: tuple[ModuleType, ModuleType], monkeypatch: pytest.MonkeyPatch
) -> None:
    trt, _ = standin
    logger = recorder(trt)
    plan = bytes(build(trt, tiny_model(), logger))
    runtime = trt.Runtime(logger)
    assert runtime.deserialize_cuda_engine(plan) is not None
    torn = [plan[: len(plan) // 2], plan[:-1], plan[:100] + bytes([plan[100] ^ 1]) + plan[101:], b"\0" * 4096]
    for broken in torn:
        assert runtime.deserialize_cuda_engine(broken) is None
    assert "Serialization" in logger.errors()
    monkeypatch.setenv("EDGESIGHT_STANDIN_TRT_VERSION", "10.4.0")
    assert runtime.deserialize_cuda_engine(plan) is None
    assert "expecting library version 10.4.0 got 10.3.0, please rebuild" in logger.errors()
    monkeypatch.setenv("EDGESIGHT_STANDIN_TRT_VERSION", "10.3.0")
    monkeypatch.setenv("EDGESIGHT_STANDIN_CC", "7.2")
    assert runtime.deserialize_cuda_engine(plan) is None
    assert "generated on an incompatible device" in logger.errors()
    monkeypatch.setenv("EDGESIGHT_STANDIN_CC", "8.7")
    monkeypatch.setenv("EDGESIGHT_STANDIN_GPU", "Orin Nano")  # same compute capability: loads, with a warning
    assert runtime.deserialize_cuda_engine(plan) is not None
    assert any("across different models of devices" in msg for _, msg in logger.messages)


def test_an_engine_describes_its_tensors_and_profile(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, _ = standin
    built = engine(trt)
    names = [built.get_tensor_name(i) for i in range(built.num_io_tensors)]
    assert names == ["x", "y"]
    assert [built.get_tensor_mode(name) for name in names] == [trt.TensorIOMode.INPUT, trt.TensorIOMode.OUTPUT]
    assert tuple(built.get_tensor_shape("y")) == (-1, 4)
    assert trt.nptype(built.get_tensor_dtype("y")) is np.float32
    assert built.num_optimization_profiles == 1
    assert [tuple(shape) for shape in built.get_tensor_profile_shape("x", 0)] == [(1, 4), (4, 4), (8, 4)]
    assert tuple(engine(trt, tiny_model(batch=2), shapes=None).get_tensor_profile_shape("x", 0)[2]) == (2, 4)


def test_execution_needs_input_shapes_inside_the_profile_and_every_address(
    standin: tuple[ModuleType, ModuleType],
) -> None:
    trt, cudart = standin
    context = engine(trt).create_execution_context()
    stream = ok(cudart.cudaStreamCreate())
    assert not context.execute_async_v3(stream)  # no input shape yet
    assert tuple(context.get_tensor_shape("y")) == (-1, 4)
    assert not context.set_input_shape("x", (9, 4))  # above the profile's max
    assert not context.set_input_shape("x", (2, 5))  # a fixed dim differs
    assert context.set_input_shape("x", (3, 4))
    assert tuple(context.get_tensor_shape("y")) == (3, 4)
    assert not context.execute_async_v3(stream)  # no addresses yet
    device = ok(cudart.cudaMalloc(3 * 4 * 4))
    assert not context.set_tensor_address("x", device + 4)  # TensorRT wants 256-byte alignment
    assert context.set_tensor_address("x", device)
    assert not context.execute_async_v3(stream)  # still no output address
    assert context.set_tensor_address("y", ok(cudart.cudaMalloc(3 * 4 * 4)))
    assert context.execute_async_v3(stream)
    assert ok(cudart.cudaStreamSynchronize(stream)) == ()


def test_outputs_reach_the_host_only_when_the_stream_is_synchronised(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, cudart = standin
    context = engine(trt).create_execution_context()
    context.set_input_shape("x", (2, 4))
    stream = ok(cudart.cudaStreamCreate())
    host_in, host_out = pinned_array(cudart, (2, 4)), pinned_array(cudart, (2, 4))
    device_in, device_out = ok(cudart.cudaMalloc(32)), ok(cudart.cudaMalloc(32))
    assert ctypes.string_at(device_out, 32) == b"\xcd" * 32  # device memory starts as garbage
    host_in[:] = np.arange(8, dtype=np.float32).reshape(2, 4)
    to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
    ok(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, 32, to_device, stream))
    context.set_tensor_address("x", device_in)
    context.set_tensor_address("y", device_out)
    assert context.execute_async_v3(stream)
    ok(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, 32, to_host, stream))
    host_in[:] = -1  # too early: the queued copy has not read it yet, as on a GPU
    assert not host_out.any()
    ok(cudart.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(host_out, np.full((2, 4), -2, np.float32))
    assert trt.standin.executions == 1


def test_copies_from_and_to_pageable_memory_do_not_wait_for_a_synchronise(
    standin: tuple[ModuleType, ModuleType],
) -> None:
    _, cudart = standin
    stream = ok(cudart.cudaStreamCreate())
    device = ok(cudart.cudaMalloc(16))
    source, target = np.arange(4, dtype=np.float32), np.zeros(4, np.float32)
    ok(cudart.cudaMemcpyAsync(device, source, 16, cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))
    source[:] = 9  # a pageable source is staged when the copy is enqueued
    ok(cudart.cudaMemcpyAsync(target, device, 16, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))
    np.testing.assert_array_equal(target, np.arange(4))  # a pageable destination: the copy returns when done


def test_memory_the_device_cannot_reach_is_an_illegal_address(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, cudart = standin
    context = engine(trt).create_execution_context()
    context.set_input_shape("x", (1, 4))
    pageable = ctypes.create_string_buffer(1024)
    aligned = (ctypes.addressof(pageable) + 255) // 256 * 256
    context.set_tensor_address("x", aligned)
    context.set_tensor_address("y", ok(cudart.cudaMalloc(16)))
    stream = ok(cudart.cudaStreamCreate())
    assert context.execute_async_v3(stream)  # a GPU only finds out when it runs
    illegal = cudart.cudaError_t.cudaErrorIllegalAddress
    assert cudart.cudaStreamSynchronize(stream) == (illegal,)
    assert cudart.cudaMalloc(16) == (illegal, None)  # and the context stays broken


def test_mapped_memory_is_reached_by_the_device_at_its_host_address(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, cudart = standin
    context = engine(trt).create_execution_context()
    context.set_input_shape("x", (1, 4))
    pointers = [ok(cudart.cudaHostAlloc(16, cudart.cudaHostAllocMapped)) for _ in range(2)]
    assert [ok(cudart.cudaHostGetDevicePointer(pointer, 0)) for pointer in pointers] == pointers
    inputs, outputs = (np.ctypeslib.as_array((ctypes.c_float * 4).from_address(p)) for p in pointers)
    inputs[:] = [1, 2, 3, 4]
    for name, pointer in zip("xy", pointers, strict=True):
        context.set_tensor_address(name, pointer)
    stream = ok(cudart.cudaStreamCreate())
    assert context.execute_async_v3(stream)
    assert not outputs.any()
    ok(cudart.cudaStreamSynchronize(stream))
    np.testing.assert_array_equal(outputs, [2, 4, 6, 8])
    assert cudart.cudaHostGetDevicePointer(ok(cudart.cudaMalloc(16)), 0) == (
        cudart.cudaError_t.cudaErrorInvalidValue,
        None,
    )


def test_frees_are_checked_counted_and_say_which_thread(standin: tuple[ModuleType, ModuleType]) -> None:
    _, cudart = standin
    device, host = ok(cudart.cudaMalloc(64)), ok(cudart.cudaMallocHost(64))
    assert cudart.standin.allocation_count == 2
    assert {allocation.kind for allocation in cudart.standin.live_allocations()} == {"device", "pinned"}
    invalid = (cudart.cudaError_t.cudaErrorInvalidValue,)
    assert cudart.cudaFree(host) == invalid  # the wrong function for pinned memory
    assert cudart.cudaFreeHost(device + 1) == invalid  # not a pointer it handed out (those are 256-aligned)
    worker = threading.Thread(target=lambda: ok(cudart.cudaFree(device)))
    worker.start()
    worker.join()
    assert cudart.cudaFree(device) == invalid  # twice
    ok(cudart.cudaFreeHost(host))
    assert cudart.cudaFree(0) == (cudart.cudaError_t.cudaSuccess,)  # freeing NULL does nothing, as in CUDA
    assert cudart.standin.live_allocations() == []
    assert [(free.kind, free.thread) for free in cudart.standin.frees] == [
        ("device", worker.ident),
        ("pinned", threading.get_ident()),
    ]


def test_streams_are_tracked_until_destroyed(standin: tuple[ModuleType, ModuleType]) -> None:
    _, cudart = standin
    stream = ok(cudart.cudaStreamCreate())
    assert isinstance(stream, cudart.cudaStream_t)
    assert cudart.standin.live_streams() == [int(stream)]
    ok(cudart.cudaStreamDestroy(stream))
    assert cudart.standin.live_streams() == []
    invalid = (cudart.cudaError_t.cudaErrorInvalidResourceHandle,)
    assert cudart.cudaStreamDestroy(stream) == invalid
    assert cudart.cudaStreamSynchronize(stream) == invalid


def test_without_a_gpu_cuda_and_tensorrt_fail_as_the_real_ones_do(monkeypatch: pytest.MonkeyPatch) -> None:
    trt, cudart = use_standin(monkeypatch, DEVICES=0)
    no_device = cudart.cudaError_t.cudaErrorNoDevice
    assert cudart.cudaGetDeviceCount() == (no_device, None)
    assert cudart.cudaGetDeviceProperties(0) == (no_device, None)
    assert cudart.cudaMalloc(16) == (no_device, None)
    assert cudart.cudaGetErrorString(no_device) == (
        cudart.cudaError_t.cudaSuccess,
        b"no CUDA-capable device is detected",
    )
    with pytest.raises(TypeError, match="factory function returned nullptr"):
        trt.Builder(trt.Logger(trt.Logger.ERROR))
    monkeypatch.setenv("EDGESIGHT_STANDIN_DEVICES", "1")
    assert ok(cudart.cudaGetDeviceCount()) == 1
    assert cudart.cudaGetDeviceProperties(1) == (cudart.cudaError_t.cudaErrorInvalidDevice, None)


def test_the_device_is_described_by_the_settings_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    _, cudart = use_standin(monkeypatch)
    properties = ok(cudart.cudaGetDeviceProperties(0))
    assert (properties.name, properties.multiProcessorCount, properties.integrated) == (b"Orin", 16, 1)
    assert (properties.major, properties.minor) == (8, 7)
    monkeypatch.setenv("EDGESIGHT_STANDIN_GPU", "NVIDIA GeForce RTX 4090")
    monkeypatch.setenv("EDGESIGHT_STANDIN_SMS", "128")
    monkeypatch.setenv("EDGESIGHT_STANDIN_INTEGRATED", "0")
    properties = ok(cudart.cudaGetDeviceProperties(0))
    assert (properties.name, properties.multiProcessorCount, properties.integrated) == (
        b"NVIDIA GeForce RTX 4090",
        128,
        0,
    )


def test_builds_are_counted_can_fail_and_report_progress(monkeypatch: pytest.MonkeyPatch) -> None:
    trt, _ = use_standin(monkeypatch, BUILD_SECONDS=0.05)

    class Monitor(trt.IProgressMonitor):  # type: ignore[name-defined,misc]
        def __init__(self, cancel: bool) -> None:
            trt.IProgressMonitor.__init__(self)
            self.cancel = cancel
            self.calls: list[tuple[str, str]] = []

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.calls.append(("start", phase_name))

        def step_complete(self, phase_name: str, step: int) -> bool:
            self.calls.append(("step", phase_name))
            return not self.cancel

        def phase_finish(self, phase_name: str) -> None:
            self.calls.append(("finish", phase_name))

    for cancel in (False, True):
        builder, network = parse(trt, tiny_model(batch=1), recorder(trt))
        config = builder.create_builder_config()
        config.progress_monitor = monitor = Monitor(cancel)
        plan = builder.build_serialized_network(network, config)
        assert (plan is None) == cancel  # a monitor that answers False cancels the build
        assert monitor.calls[:3] == [
            ("start", "Building engine"),
            ("start", "Tactic optimization"),
            ("step", "Tactic optimization"),
        ]
        assert (("finish", "Building engine") in monitor.calls) != cancel
    monkeypatch.setenv("EDGESIGHT_STANDIN_BUILD_FAIL", "1")
    logger = recorder(trt)
    assert build(trt, tiny_model(), logger) is None
    assert "Error Code 2" in logger.errors()
    assert trt.standin.builds == 3


def test_a_timing_cache_round_trips(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, _ = standin
    logger = recorder(trt)
    builder, network = parse(trt, tiny_model(batch=1), logger)
    config = builder.create_builder_config()
    assert config.set_timing_cache(config.create_timing_cache(b""), False)
    assert builder.build_serialized_network(network, config) is not None
    saved = bytes(config.get_timing_cache().serialize())
    again = builder.create_builder_config()
    loaded = again.create_timing_cache(saved)
    assert bytes(loaded.serialize()) == saved
    assert again.set_timing_cache(loaded, False)
    assert again.create_timing_cache(b"garbage") is None
    assert logger.errors()


def test_a_data_dependent_output_shape_stays_unknown(standin: tuple[ModuleType, ModuleType]) -> None:
    trt, cudart = standin
    context = engine(trt, tiny_model(op="NonZero")).create_execution_context()
    context.set_input_shape("x", (2, 4))
    assert tuple(context.get_tensor_shape("y")) == (2, -1)
    for name in "xy":
        context.set_tensor_address(name, ok(cudart.cudaMalloc(256)))
    assert not context.execute_async_v3(ok(cudart.cudaStreamCreate()))


def test_the_old_cudart_module_is_the_runtime_module(standin: tuple[ModuleType, ModuleType]) -> None:
    _, runtime = standin
    with pytest.warns(FutureWarning, match="cuda.bindings.runtime"):
        from cuda import cudart
    assert cudart.cudaMalloc is runtime.cudaMalloc
    assert cudart.standin is runtime.standin


def test_a_subprocess_imports_the_stand_ins_with_its_settings() -> None:
    code = "import tensorrt; from cuda.bindings import runtime; print(tensorrt.__version__, tensorrt.__file__)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=standin_environment(TRT_VERSION="8.6.1"),
        capture_output=True,
        text=True,
        check=True,
    )
    version, path = result.stdout.split()
    assert version == "8.6.1"
    assert Path(path).is_relative_to(STANDIN_DIR)


def test_yolox_nano_runs_as_onnx_runtime_does_within_fp16(
    standin: tuple[ModuleType, ModuleType], yolox_dynamic: bytes
) -> None:
    trt, cudart = standin
    built = engine(trt, yolox_dynamic, shapes=((1, 3, 416, 416), (4, 3, 416, 416), (4, 3, 416, 416)), fp16=True)
    context = built.create_execution_context()
    assert context.set_input_shape("images", (3, 3, 416, 416))
    assert tuple(context.get_tensor_shape("output")) == (3, 3549, 85)
    stream = ok(cudart.cudaStreamCreate())
    images = np.random.default_rng(7).random((3, 3, 416, 416), dtype=np.float32) * 255
    host_in, host_out = pinned_array(cudart, images.shape), pinned_array(cudart, (3, 3549, 85))
    device_in, device_out = ok(cudart.cudaMalloc(host_in.nbytes)), ok(cudart.cudaMalloc(host_out.nbytes))
    host_in[:] = images
    kinds = cudart.cudaMemcpyKind
    ok(cudart.cudaMemcpyAsync(device_in, host_in.ctypes.data, host_in.nbytes, kinds.cudaMemcpyHostToDevice, stream))
    context.set_tensor_address("images", device_in)
    context.set_tensor_address("output", device_out)
    assert context.execute_async_v3(stream)
    ok(cudart.cudaMemcpyAsync(host_out.ctypes.data, device_out, host_out.nbytes, kinds.cudaMemcpyDeviceToHost, stream))
    ok(cudart.cudaStreamSynchronize(stream))
    expected = onnxruntime.InferenceSession(yolox_dynamic, providers=["CPUExecutionProvider"]).run(
        None, {"images": images}
    )[0]
    np.testing.assert_allclose(host_out, expected, rtol=FP16_RTOL, atol=1e-6)
    assert not np.array_equal(host_out, expected)  # rounded through float16, as an FP16 engine's outputs are
    for pointer in (device_in, device_out):
        ok(cudart.cudaFree(pointer))
    for array in (host_in, host_out):
        ok(cudart.cudaFreeHost(array.ctypes.data))
    ok(cudart.cudaStreamDestroy(stream))
    assert cudart.standin.live_allocations() == cudart.standin.live_streams() == []

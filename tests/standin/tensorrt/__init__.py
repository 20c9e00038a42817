"""STAND-IN for NVIDIA TensorRT's Python bindings (``import tensorrt``), for tests without a GPU. NOT TensorRT.

It exists so that EdgeSight's TensorRT backend (common/models/tensorrt.py) can run its whole data path in CI:
parse an ONNX file, build and serialize an "engine", cache and deserialize it, bind device memory and run it
on a CUDA stream. The "engine" is the ONNX model run by ONNX Runtime on the CPU, reading its inputs from and
writing its outputs to the memory of the cudart stand-in (``tests/standin/cuda``), when the stream runs.

Only the calls that backend makes are offered, with TensorRT 10's names, signatures and return conventions
(and TensorRT 8.6's where the version says so). Where TensorRT returns false or null, so does this, after an
ERROR to the logger; where its bindings raise, this raises. The rules it enforces are TensorRT's own:
- a network with a dynamic input needs an optimisation profile whose fixed dims match the network's;
  ``set_shape`` raises if min <= opt <= max does not hold;
- before TensorRT 10, ``create_network(0)`` makes an implicit-batch network that the ONNX parser refuses;
- a plan refuses to load on another TensorRT version, on another compute capability, or torn (a digest);
- ``execute_async_v3`` needs every dynamic input's shape (inside the profile) and every tensor's address
  (256-byte aligned); memory the device cannot reach is an illegal address when the stream runs;
- with ``BuilderFlag.FP16`` the outputs are rounded through float16, so comparisons need FP16 tolerance.

Settings, read at each call: ``EDGESIGHT_STANDIN_TRT_VERSION`` (``__version__``, default "10.3.0"),
``EDGESIGHT_STANDIN_BUILD_FAIL`` ("1": builds fail), ``EDGESIGHT_STANDIN_BUILD_SECONDS`` (a build takes this
long, reporting to the progress monitor); GPU settings come from the cudart stand-in. Tests read ``standin``.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import struct
import sys
import time
from enum import IntEnum
from typing import Any

import numpy as np
from cuda.bindings import runtime as _cudart

PLAN_MAGIC = b"ESTRTPLN"  # not TensorRT's format: a header, the ONNX model, a digest of both
CACHE_MAGIC = b"ESTRTTC1"
_DIGEST = 32


class _Standin:
    """What tests can see: builds and executions so far."""

    def __init__(self) -> None:
        self.builds = 0
        self.executions = 0


standin = _Standin()


def _version() -> str:
    return os.environ.get("EDGESIGHT_STANDIN_TRT_VERSION", "10.3.0")


def _major() -> int:
    return int(_version().split(".")[0])


def __getattr__(name: str) -> Any:  # the version, and what depends on it, are read when asked for
    if name == "__version__":
        return _version()
    if name == "IProgressMonitor" and _major() >= 10:
        return _ProgressMonitor
    raise AttributeError(f"module 'tensorrt' has no attribute '{name}'")


class _Severity(IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class ILogger:
    Severity = _Severity
    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = _Severity

    def log(self, severity: _Severity, msg: str) -> None:
        raise NotImplementedError("ILogger.log is pure virtual: subclass ILogger and define log(severity, msg)")


class Logger(ILogger):
    """TensorRT's default logger: prints messages at least as severe as ``min_severity`` to stdout."""

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        self.min_severity = min_severity

    def log(self, severity: _Severity, msg: str) -> None:
        if severity <= self.min_severity:
            stamp = time.strftime("%m/%d/%Y-%H:%M:%S")
            print(f"[{stamp}] [TRT] [{'FEWIV'[int(severity)]}] {msg}", flush=True)


def _log(logger: ILogger, severity: _Severity, msg: str) -> None:
    try:
        logger.log(severity, msg)
    except Exception as exc:  # TensorRT's bindings swallow a logger's exception the same way
        print(f"[ERROR] Exception caught in log(): {exc}", file=sys.stderr)


class DataType(IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


float32, float16, int8, int32, bool, uint8, fp8, bfloat16, int64, int4 = DataType
_NUMPY = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32}
_NUMPY |= {DataType.INT64: np.int64, DataType.BOOL: np.bool_, DataType.UINT8: np.uint8}
_FROM_ONNX = {1: DataType.FLOAT, 2: DataType.UINT8, 3: DataType.INT8, 6: DataType.INT32, 7: DataType.INT64}
_FROM_ONNX |= {9: DataType.BOOL, 10: DataType.HALF, 16: DataType.BF16}


def nptype(trt_type: DataType) -> type:
    if trt_type in _NUMPY:
        return _NUMPY[trt_type]
    raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")


def volume(iterable: Any) -> int:
    result = 1
    for element in iterable:
        result *= element
    return result


class Dims(tuple):
    """A shape: iterable, indexable, equal to the tuple of its dims; -1 marks a dynamic dim."""


class NetworkDefinitionCreationFlag(IntEnum):
    EXPLICIT_BATCH = 0  # deprecated in TensorRT 10, where every network is explicit-batch
    STRONGLY_TYPED = 1


class BuilderFlag(IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 6


class MemoryPoolType(IntEnum):
    WORKSPACE = 0
    TACTIC_SHARED_MEMORY = 5


class TensorIOMode(IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class ErrorCode(IntEnum):  # the ONNX parser's
    SUCCESS = 0
    INTERNAL_ERROR = 1
    MODEL_DESERIALIZE_FAILED = 3
    INVALID_VALUE = 4
    INVALID_GRAPH = 5
    UNSUPPORTED_NODE_DATATYPE = 11


class IHostMemory(bytes):
    """Memory TensorRT hands back (a plan, a timing cache): ``bytes(x)``, ``len(x)``, the buffer protocol."""

    @property
    def nbytes(self) -> int:
        return len(self)


def _require_device(logger: ILogger) -> None:
    if _cudart._device_count() == 0:  # TensorRT's factories return null, which pybind11 turns into this
        _log(logger, ILogger.ERROR, "CUDA initialization failure with error: 100. Please check your CUDA installation")
        raise TypeError("pybind11::init(): factory function returned nullptr")


_ERROR_KINDS = {1: "Serialization", 2: "Internal Error", 3: "API Usage Error", 4: "API Usage Error"}
_ERROR_KINDS[6] = "API Usage Error"


def _error(logger: ILogger, code: int, where: str, detail: str, kind: str | None = None) -> None:
    """An ERROR worded as TensorRT words its own: "[where] Error Code N: Kind (detail)"."""
    _log(logger, ILogger.ERROR, f"{code}: {where} Error Code {code}: {kind or _ERROR_KINDS[code]} ({detail})")


class ITensor:
    def __init__(self, name: str, shape: tuple[int, ...], dtype: DataType) -> None:
        self.name, self.shape, self.dtype = name, Dims(shape), dtype


class INetworkDefinition:
    def __init__(self, explicit_batch: bool) -> None:
        self.has_implicit_batch_dimension = not explicit_batch
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._declared: dict[str, list[int | str]] = {}  # ONNX dims: a size, or a dim_param name ("" unknown)
        self._onnx = b""

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))

    def get_input(self, index: int) -> ITensor | None:
        return self._inputs[index] if 0 <= index < len(self._inputs) else None

    def get_output(self, index: int) -> ITensor | None:
        return self._outputs[index] if 0 <= index < len(self._outputs) else None


class ParserError:
    def __init__(self, code: ErrorCode, desc: str, func: str = "importModel") -> None:
        self._code, self._desc, self._func = code, desc, func

    def code(self) -> ErrorCode:
        return self._code

    def desc(self) -> str:
        return self._desc

    def __str__(self) -> str:
        where = "In node -1" if _major() < 10 else "In node -1 with name:  and operator: "
        return f"{where} ({self._func}): {self._code.name}: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger) -> None:
        self._network, self._logger = network, logger
        self._errors: list[ParserError] = []

    num_errors = property(lambda self: len(self._errors))

    def get_error(self, index: int) -> ParserError | None:
        return self._errors[index] if 0 <= index < len(self._errors) else None

    def _fail(self, code: ErrorCode, desc: str) -> bool:
        self._errors.append(ParserError(code, desc))
        _log(self._logger, ILogger.ERROR, f"ModelImporter.cpp: {self._errors[-1]}")
        return False

    def parse(self, model: Any, path: str | None = None) -> bool:
        import onnx  # only when parsing, like the ONNX parser library

        self._errors.clear()
        network = self._network
        if network.has_implicit_batch_dimension:
            return self._fail(
                ErrorCode.INVALID_VALUE,
                'Assertion failed: !_importer_ctx.network()->hasImplicitBatchDimension() && "This version of the ONNX '
                "parser only supports TensorRT INetworkDefinitions with an explicit batch dimension. Please ensure "
                'the network was created using the EXPLICIT_BATCH NetworkDefinitionCreationFlag."',
            )
        if network._inputs:
            return self._fail(ErrorCode.INVALID_VALUE, "Parse was called with a non-empty network definition")
        data = bytes(memoryview(model))
        try:
            proto = onnx.load_from_string(data)
            onnx.checker.check_model(proto)
        except Exception as exc:  # protobuf's DecodeError or the checker's ValidationError
            return self._fail(ErrorCode.MODEL_DESERIALIZE_FAILED, f"Failed to parse the ONNX model. ({exc})")
        if not proto.graph.output:
            return self._fail(ErrorCode.INVALID_GRAPH, "Network must have at least one output")
        proto = onnx.shape_inference.infer_shapes(proto)
        constants = {initializer.name for initializer in proto.graph.initializer}
        tensors: list[tuple[list[ITensor], Any]] = [(network._inputs, proto.graph.input)]
        tensors.append((network._outputs, proto.graph.output))
        for group, values in tensors:
            for value in values:
                if value.name in constants:
                    continue
                dims = value.type.tensor_type.shape.dim
                declared = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in dims]
                dtype = _FROM_ONNX.get(value.type.tensor_type.elem_type)
                if dtype is None:
                    return self._fail(ErrorCode.UNSUPPORTED_NODE_DATATYPE, f"{value.name}: unsupported data type")
                network._declared[value.name] = declared
                group.append(ITensor(value.name, tuple(d if isinstance(d, int) else -1 for d in declared), dtype))
        network._onnx = data
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        shapes = tuple(tuple(int(d) for d in dims) for dims in (min, opt, max))
        for which, (low, high) in (("opt", shapes[:2]), ("max", shapes[1:])):
            if len(low) != len(high) or any(not 0 <= a <= b for a, b in zip(low, high, strict=True)):
                raise RuntimeError(f"Shape provided for {which} is inconsistent with other shapes.")
        if any(d < 0 for d in shapes[0]):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        self._shapes[input] = shapes

    def __bool__(self) -> bool:
        return True  # set_shape sets min, opt and max together and checks them: a profile is always valid


class ITimingCache:
    def __init__(self, gpu: str, entries: set[str]) -> None:
        self._gpu, self._entries = gpu, entries

    def serialize(self) -> IHostMemory:
        header = json.dumps({"gpu": self._gpu, "entries": sorted(self._entries)}).encode()
        return IHostMemory(CACHE_MAGIC + header)


class _ProgressMonitor:  # tensorrt.IProgressMonitor, from TensorRT 10
    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        raise NotImplementedError

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise NotImplementedError

    def phase_finish(self, phase_name: str) -> None:
        raise NotImplementedError


def _gpu() -> tuple[str, str]:
    _, properties = _cudart.cudaGetDeviceProperties(0)
    return properties.name.decode(), f"{properties.major}.{properties.minor}"


class IBuilderConfig:
    def __init__(self, logger: ILogger) -> None:
        self._logger = logger
        self._flags: set[BuilderFlag] = set()
        self._pools: dict[MemoryPoolType, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self._monitor: Any = None

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[pool] = int(pool_size)

    def set_flag(self, flag: BuilderFlag) -> None:
        self._flags.add(flag)

    def get_flag(self, flag: BuilderFlag) -> bool:
        return flag in self._flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    num_optimization_profiles = property(lambda self: len(self._profiles))

    def create_timing_cache(self, serialized_timing_cache: Any) -> ITimingCache | None:
        data = bytes(memoryview(serialized_timing_cache))
        if not data:
            return ITimingCache(_gpu()[0], set())
        try:
            assert data.startswith(CACHE_MAGIC)
            content = json.loads(data[len(CACHE_MAGIC) :])
            return ITimingCache(content["gpu"], set(content["entries"]))
        except (AssertionError, ValueError, KeyError):
            _log(self._logger, ILogger.ERROR, "Error Code 1: Serialization (timing cache is corrupt)")
            return None

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        if cache._gpu != _gpu()[0] and not ignore_mismatch:
            _log(self._logger, ILogger.ERROR, "Timing cache was created on another device")
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache

    @property
    def progress_monitor(self) -> Any:
        if _major() < 10:
            raise AttributeError("'tensorrt.tensorrt.IBuilderConfig' object has no attribute 'progress_monitor'")
        return self._monitor

    @progress_monitor.setter
    def progress_monitor(self, monitor: Any) -> None:
        if _major() < 10:
            raise AttributeError("'tensorrt.tensorrt.IBuilderConfig' object has no attribute 'progress_monitor'")
        self._monitor = monitor


class Builder:
    def __init__(self, logger: ILogger) -> None:
        _require_device(logger)
        self.logger = logger

    platform_has_fast_fp16 = property(lambda self: True)  # every Jetson since the TX1, and every recent GPU

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        explicit = _major() >= 10 or int(flags) & (1 << NetworkDefinitionCreationFlag.EXPLICIT_BATCH) != 0
        return INetworkDefinition(explicit_batch=explicit)

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig(self.logger)

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def _refuse(self, detail: str) -> None:
        _error(self.logger, 4, "[network.cpp::validate::3100]", detail)
        _error(self.logger, 2, "[builder.cpp::buildSerializedNetwork::751]", "Assertion engine != nullptr failed. ")

    def _profiles(self, network: INetworkDefinition, config: IBuilderConfig) -> list[dict[str, Any]] | None:
        """Each profile's (min, opt, max) per input, checked against the network as TensorRT's build does."""
        dynamic = [tensor for tensor in network._inputs if -1 in tensor.shape]
        if dynamic and not config._profiles:
            return self._refuse("Network has dynamic or shape inputs, but no optimization profile has been defined.")
        inputs = {tensor.name: tuple(tensor.shape) for tensor in network._inputs}
        profiles = []
        for index, profile in enumerate(config._profiles or [IOptimizationProfile()]):
            for name in profile._shapes:
                if name not in inputs:
                    return self._refuse(f"{name}: optimization profile {index} names a tensor that is not an input.")
            shapes = {}
            for name, shape in inputs.items():
                if name not in profile._shapes and -1 in shape:
                    return self._refuse(f"{name}: dynamic input is missing dimensions in profile {index}.")
                low, best, high = profile._shapes.get(name, (shape, shape, shape))
                if len(low) != len(shape):
                    return self._refuse(f"{name}: profile {index} gives {len(low)} dims, the network {len(shape)}.")
                for axis, fixed in enumerate(shape):
                    if fixed != -1 and not low[axis] == best[axis] == high[axis] == fixed:
                        return self._refuse(
                            f"{name}: for dimension number {axis} in profile {index} does not match network "
                            f"definition (got min={list(low)}, opt={list(best)}, max={list(high)}), expected {shape}."
                        )
                shapes[name] = [list(low), list(best), list(high)]
            profiles.append(shapes)
        return profiles

    def _monitored_wait(self, config: IBuilderConfig) -> bool:
        """Takes $EDGESIGHT_STANDIN_BUILD_SECONDS, telling the progress monitor; False when it cancels."""
        seconds, monitor = float(os.environ.get("EDGESIGHT_STANDIN_BUILD_SECONDS") or 0), config._monitor
        steps = 10

        def call(method: str, *args: Any) -> Any:
            try:
                return getattr(monitor, method)(*args)
            except Exception as exc:  # TensorRT's bindings print a monitor's exception and go on
                print(f"[ERROR] Exception caught in {method}(): {exc}", file=sys.stderr)
                return True

        if monitor is not None:
            call("phase_start", "Building engine", None, 1)
            call("phase_start", "Tactic optimization", "Building engine", steps)
        for step in range(steps):
            time.sleep(seconds / steps)
            if monitor is not None and call("step_complete", "Tactic optimization", step) is False:
                return False
        if monitor is not None:
            call("phase_finish", "Tactic optimization")
            call("step_complete", "Building engine", 0)
            call("phase_finish", "Building engine")
        return True

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        standin.builds += 1
        if not network._outputs:
            return self._refuse("Network must have at least one output")
        profiles = self._profiles(network, config)
        if profiles is None:
            return None
        if os.environ.get("EDGESIGHT_STANDIN_BUILD_FAIL") == "1":
            detail = "Could not find any implementation for node /Conv (stand-in: EDGESIGHT_STANDIN_BUILD_FAIL)"
            _error(self.logger, 2, "[optimizer.cpp::computeCosts::4040]", detail)
            return None
        if not self._monitored_wait(config):
            _error(self.logger, 2, "[builder.cpp::buildSerializedNetwork::751]", "Build was cancelled.")
            return None
        gpu, capability = _gpu()
        fp16 = BuilderFlag.FP16 in config._flags
        if config._timing_cache is not None:
            config._timing_cache._entries.add(f"{hashlib.sha256(network._onnx).hexdigest()[:16]}|fp16={fp16}")
        header = {"trt": _version(), "gpu": gpu, "cc": capability, "fp16": fp16, "profiles": profiles}
        header["tensors"] = [
            [tensor.name, int(mode), list(tensor.shape), int(tensor.dtype), network._declared[tensor.name]]
            for mode, group in ((TensorIOMode.INPUT, network._inputs), (TensorIOMode.OUTPUT, network._outputs))
            for tensor in group
        ]
        encoded = json.dumps(header).encode()
        body = PLAN_MAGIC + struct.pack("<I", len(encoded)) + encoded + network._onnx
        return IHostMemory(body + hashlib.sha256(body).digest())


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        _require_device(logger)
        self.logger = logger

    def _refuse(self, code: int, detail: str) -> None:
        _error(self.logger, code, "IRuntime::deserializeCudaEngine", detail)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        plan = bytes(memoryview(serialized_engine))
        if not plan.startswith(PLAN_MAGIC) or len(plan) < len(PLAN_MAGIC) + 4 + _DIGEST:
            return self._refuse(1, "Serialization assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match")
        try:
            (size,) = struct.unpack_from("<I", plan, len(PLAN_MAGIC))
            header = json.loads(plan[len(PLAN_MAGIC) + 4 : len(PLAN_MAGIC) + 4 + size])
            built_with = header["trt"]
        except (ValueError, KeyError, TypeError, struct.error):
            header, built_with = {}, None
        if built_with is not None and built_with != _version():
            return self._refuse(
                6,
                "The engine plan file is not compatible with this version of TensorRT, expecting library version "
                f"{_version()} got {built_with}, please rebuild.",
            )
        if not header or hashlib.sha256(plan[:-_DIGEST]).digest() != plan[-_DIGEST:]:
            return self._refuse(1, "Serialization assertion plan digest matches failed. The plan is torn or corrupt")
        gpu, capability = _gpu()
        if header["cc"] != capability:
            return self._refuse(
                6,
                f"The engine plan file is generated on an incompatible device, expecting compute {capability} got "
                f"compute {header['cc']}, please rebuild.",
            )
        if header["gpu"] != gpu:
            _log(
                self.logger,
                ILogger.WARNING,
                "Using an engine plan file across different models of devices is not recommended and is likely to "
                "affect performance or even cause errors.",
            )
        return ICudaEngine(header, plan[len(PLAN_MAGIC) + 4 + size : -_DIGEST], plan, self.logger)


class ICudaEngine:
    """The ONNX model in an ONNX Runtime session, with the plan's tensors and optimisation profiles."""

    def __init__(self, header: dict[str, Any], onnx_model: bytes, plan: bytes, logger: ILogger) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        self._session = onnxruntime.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self._plan, self._logger, self._fp16 = plan, logger, header["fp16"]
        self._profiles: list[dict[str, list[list[int]]]] = header["profiles"]
        self._tensors = {
            name: (TensorIOMode(mode), tuple(shape), DataType(dtype), declared)
            for name, mode, shape, dtype, declared in header["tensors"]
        }
        self._names = list(self._tensors)
        self._resolved: dict[tuple[Any, ...], dict[str, tuple[int, ...]]] = {}

    num_io_tensors = property(lambda self: len(self._names))
    num_optimization_profiles = property(lambda self: len(self._profiles))

    def _named(self, name: str) -> tuple[TensorIOMode, tuple[int, ...], DataType, list[int | str]] | None:
        if name not in self._tensors:
            _log(self._logger, ILogger.ERROR, f"ICudaEngine: Error Code 3: API Usage Error (no tensor named {name})")
        return self._tensors.get(name)

    def get_tensor_name(self, index: int) -> str | None:
        return self._names[index] if 0 <= index < len(self._names) else None

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._tensors[name][0] if name in self._tensors else TensorIOMode.NONE

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self._named(name)
        return Dims(tensor[1] if tensor else ())

    def get_tensor_dtype(self, name: str) -> DataType:
        tensor = self._named(name)
        return tensor[2] if tensor else DataType.FLOAT

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        if not 0 <= profile_index < len(self._profiles) or name not in self._profiles[profile_index]:
            _log(self._logger, ILogger.ERROR, f"ICudaEngine::getProfileShape: no {name} in profile {profile_index}")
            return []
        return [Dims(shape) for shape in self._profiles[profile_index][name]]

    def create_execution_context(self) -> IExecutionContext:
        return IExecutionContext(self)

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._plan)

    def _inputs(self) -> list[str]:
        return [name for name in self._names if self._tensors[name][0] == TensorIOMode.INPUT]

    def _outputs(self) -> list[str]:
        return [name for name in self._names if self._tensors[name][0] == TensorIOMode.OUTPUT]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self._outputs()
        return dict(zip(outputs, self._session.run(outputs, feeds), strict=True))

    def _output_shapes(self, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Output shapes for these input shapes: the ONNX file's named dims, else two probe runs; -1 where the
        probes disagree, which only data can settle (TensorRT's data-dependent shapes)."""
        key = tuple(sorted(inputs.items()))
        if key not in self._resolved:
            sizes = {
                dim: size
                for name, shape in inputs.items()
                for dim, size in zip(self._tensors[name][3], shape, strict=True)
                if isinstance(dim, str) and dim
            }
            shapes = {
                name: tuple(d if isinstance(d, int) else sizes.get(d, -1) if d else -1 for d in self._tensors[name][3])
                for name in self._outputs()
            }
            if any(-1 in shape for shape in shapes.values()):
                types = {name: nptype(self._tensors[name][2]) for name in inputs}
                probes = [self._run({n: np.full(s, v, types[n]) for n, s in inputs.items()}) for v in (0, 1)]
                for name, shape in shapes.items():
                    first, second = probes[0][name].shape, probes[1][name].shape
                    if -1 in shape and len(first) == len(shape):
                        shapes[name] = tuple(a if a == b else -1 for a, b in zip(first, second, strict=True))
            self._resolved[key] = shapes
        return self._resolved[key]

    def _execute(self, shapes: dict[str, tuple[int, ...]], addresses: dict[str, int]) -> _cudart.cudaError_t | None:
        """The work an execution puts on its stream: reads device memory, runs, writes device memory."""
        feeds = {}
        for name in self._inputs():
            dtype = np.dtype(nptype(self._tensors[name][2]))
            size = volume(shapes[name]) * dtype.itemsize
            if not _cudart._device_readable(addresses[name], size):
                return _cudart.cudaError_t.cudaErrorIllegalAddress
            feeds[name] = np.frombuffer(ctypes.string_at(addresses[name], size), dtype).reshape(shapes[name])
        for name, value in self._run(feeds).items():
            value = np.ascontiguousarray(value, dtype=nptype(self._tensors[name][2]))
            if self._fp16 and value.dtype == np.float32:  # an FP16 engine computes in half precision
                value = value.astype(np.float16).astype(np.float32)
            assert value.shape == shapes[name], f"stand-in resolved {name} as {shapes[name]}, ran {value.shape}"
            if not _cudart._device_readable(addresses[name], value.nbytes):
                return _cudart.cudaError_t.cudaErrorIllegalAddress
            ctypes.memmove(addresses[name], value.ctypes.data, value.nbytes)
        standin.executions += 1
        return None


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        static = {name: engine._tensors[name][1] for name in engine._inputs()}
        self._shapes = {name: shape for name, shape in static.items() if -1 not in shape}
        self._addresses = dict.fromkeys(engine._names, 0)

    def _refuse(self, where: str, condition: str) -> bool:
        _error(self.engine._logger, 3, where, f"Parameter check failed, condition: {condition}")
        return False

    def set_input_shape(self, name: str, shape: Any) -> bool:
        dims = tuple(int(d) for d in shape)
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return self._refuse("IExecutionContext::setInputShape", f"{name} is not an input tensor.")
        network = self.engine._tensors[name][1]
        if len(dims) != len(network) or any(n not in (-1, d) for n, d in zip(network, dims, strict=True)):
            return self._refuse(
                "IExecutionContext::setInputShape",
                f"engineDims.d[i] == dims.d[i]. Static dimension mismatch while setting input shape for {name}. "
                f"Set dimensions are {list(dims)}. Expected dimensions are {list(network)}.",
            )
        low, _, high = self.engine._profiles[0][name]
        if not all(a <= d <= b for a, d, b in zip(low, dims, high, strict=True)):
            return self._refuse(
                "IExecutionContext::setInputShape",
                f"satisfyProfile. Set dimension {list(dims)} for tensor {name} does not satisfy any optimization "
                f"profiles. Valid range for profile 0: {low}..{high}.",
            )
        self._shapes[name] = dims
        return True

    def _all_shapes(self) -> dict[str, tuple[int, ...]] | None:
        if len(self._shapes) < len(self.engine._inputs()):
            return None
        return {**self._shapes, **self.engine._output_shapes(self._shapes)}

    def get_tensor_shape(self, name: str) -> Dims:
        tensor = self.engine._named(name)
        if tensor is None:
            return Dims(())
        if tensor[0] == TensorIOMode.INPUT:
            return Dims(self._shapes.get(name, tensor[1]))
        shapes = self._all_shapes()
        return Dims(shapes[name] if shapes else tensor[1])

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if name not in self._addresses:
            return self._refuse("IExecutionContext::setTensorAddress", f"{name} is not an input or output tensor.")
        if int(memory) % _cudart.ALIGNMENT:
            return self._refuse(
                "IExecutionContext::setTensorAddress",
                f"(reinterpret_cast<uintptr_t>(data) % 256) == 0. Address {int(memory):#x} of {name} is not aligned.",
            )
        self._addresses[name] = int(memory)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def execute_async_v3(self, stream_handle: Any) -> bool:
        where = "[executionContext.cpp::enqueueV3::2666]"
        shapes = self._all_shapes()
        if shapes is None:
            return self._refuse(where, "allInputDimensionsSpecified(routine). ")
        for name, address in self._addresses.items():
            if not address:
                mode = self.engine._tensors[name][0].name.lower()
                return self._refuse(
                    where,
                    f"mContext.profileObliviousBindings.at(profileObliviousIndex) || getPtrOrNull(mOutputAllocators, "
                    f"profileObliviousIndex). Address is not set for {mode} tensor {name}. Call setInputTensorAddress "
                    "or setTensorAddress before enqueue/execute.",
                )
        unknown = [name for name, shape in shapes.items() if -1 in shape]
        if unknown:
            return self._refuse(where, f"{unknown} have data-dependent shapes: the stand-in has no IOutputAllocator")
        addresses = dict(self._addresses)
        error = _cudart._enqueue(stream_handle, lambda: self.engine._execute(shapes, addresses))
        if error:
            detail = _cudart.cudaGetErrorString(error)[1].decode()
            _error(self.engine._logger, 1, where, detail, kind="Cuda Runtime")
            return False
        if int(stream_handle or 0) == 0:  # TensorRT synchronises the default stream itself
            _log(
                self.engine._logger,
                ILogger.WARNING,
                "Using default stream in enqueueV3() may lead to performance issues due to additional calls to "
                "cudaStreamSynchronize() by TensorRT to ensure correct synchronization. Please use non-default "
                "stream instead.",
            )
            _cudart.cudaStreamSynchronize(0)
        return True

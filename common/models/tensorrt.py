"""TensorRT backend (JetPack 6: TensorRT 10.3, or 8.6 on JetPack 6.0; imported only when a model chooses it).

NOT RUN ON A GPU YET: no GPU was lent while this was written. CI runs the whole data path on a
stand-in of ``tensorrt`` and ``cuda`` (``tests/standin``) that enforces the rules this code depends on
and runs the engine with ONNX Runtime; ``scripts/gpu-check.sh`` is the first run on real hardware.

- An FP16 engine is built from the ONNX file once (:mod:`common.models.tensorrt_build`: a profile for any
  open input dimension, a timing cache, progress in the log) and cached in ``$EDGESIGHT_ENGINE_CACHE``
  (:mod:`common.models.engine_cache`: one file per model, input size, batch, TensorRT version and GPU;
  built by one replica while the others wait; written whole; checked, and sealed with the site's device
  key where it has one, when read: a torn, planted or foreign engine is rebuilt, not run).
- A manifest may name a serialized ``.engine`` directly; it is loaded as is.
- Buffers are allocated once, at the largest batch (at most a quarter of the GPU's memory), and reused
  for every smaller one. On an integrated GPU (a Jetson's unified memory) they are mapped pinned memory,
  which the GPU reads in place: no copy. ``close`` waits for a run in flight and frees everything.
- Whatever cannot run here (no GPU visible, the parser or the builder refusing the model, an output
  whose size depends on the data) raises :class:`ModelError`, and ``open_backend`` runs the model on
  ONNX Runtime instead, saying so. What an operator must fix (TensorRT missing or older than 8.6, a
  cache folder this user cannot write) raises :class:`TensorRTSetupError`, which is never fallen back from.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ModelError
from common.models.backend import Backend, ModelFile, TensorSpec, conform
from common.models.engine_cache import (
    CACHED_SUFFIX,
    EngineCache,
    TensorRTSetupError,
    engine_cache_dir,
    engine_cache_key,
    engine_limit,
    who,
)
from common.models.tensorrt_build import build_plan, is_dynamic, version_of

__all__ = ["TensorRTBackend", "TensorRTSetupError", "gpu_identity", "tensorrt_problems"]

log = logging.getLogger(__name__)

OLDEST_SUPPORTED = (8, 6)  # JetPack 6.0; JetPack 6.1/6.2 ship 10.3
MEMORY_SHARE = 4  # a model's buffers may take at most this share of the GPU's memory (1/4)
NO_GPU_HINT = " (on a Jetson, a non-root user needs the video group, gid 44; in a container, the nvidia runtime)"


def _import() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTSetupError(
            "backend tensorrt needs TensorRT and cuda-python: on a Jetson, JetPack's own TensorRT "
            "(apt install python3-libnvinfer) seen by a venv made with --system-site-packages, e.g. in the "
            "checkout: python3 -m venv --system-site-packages .venv && .venv/bin/pip install -e '.[jetson]'; on a "
            "GPU server: pip install -e '.[tensorrt]'; in a container: the image built with EXTRAS=jetson "
            "(README: TensorRT on a Jetson); or choose backend: onnxruntime"
        ) from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise TensorRTSetupError(
                "backend tensorrt needs cuda-python 12.x: in the checkout, pip install -e '.[jetson]' (Jetson) or "
                "-e '.[tensorrt]' (GPU server)"
            ) from None
    if version_of(trt.__version__) < OLDEST_SUPPORTED:
        raise TensorRTSetupError(
            f"backend tensorrt needs TensorRT 8.6 or later (JetPack 6), found {trt.__version__}: JetPack 5 is "
            "not supported; choose backend: onnxruntime or upgrade to JetPack 6"
        )
    return trt, cudart


def _logger_for(trt: Any) -> Any:
    """TensorRT's messages as the service's own log lines (key=value or JSON), warnings and worse."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
    }

    class Logger(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = levels.get(severity)
            if level is not None:
                log.log(level, "TensorRT says", extra={"tensorrt": msg})

    return Logger()


def _check(result: Any, what: str = "") -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        name = getattr(error, "name", str(error))
        raise ModelError(f"{what}: CUDA error {name} ({int(error)})" if what else f"CUDA error {name} ({int(error)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def gpu_identity(properties: Any) -> str:
    """The GPU as an engine depends on it. Every Orin module names itself "Orin": its SMs and memory
    tell an Orin Nano from an AGX Orin."""
    name = properties.name.decode(errors="replace") if isinstance(properties.name, bytes) else str(properties.name)
    name = name.rstrip("\x00").strip()
    memory_gib = round(int(properties.totalGlobalMem) / 2**30)
    return f"{name} sm{properties.major}.{properties.minor} {properties.multiProcessorCount}SM {memory_gib}GiB"


class _Buffer:
    """One tensor's memory at its largest shape: a host array and the device address TensorRT reads."""

    def __init__(self, host: npt.NDArray[Any], device: int, nbytes: int) -> None:
        self.host, self.device, self.nbytes = host, device, nbytes


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, spec: ModelFile, *, max_batch: int = 1, fp16: bool = True) -> None:
        trt, cudart = _import()
        self._trt, self._cudart = trt, cudart
        self._logger = _logger_for(trt)
        self._host_memory: list[int] = []  # every pointer this backend allocated, freed by close()
        self._device_memory: list[int] = []
        self._buffers: dict[str, _Buffer] = {}
        self.stream: Any = None
        self._closed = False
        self._using = threading.Lock()  # a run and close never overlap: a stop frees no memory a run still uses
        try:
            self._open(spec, max_batch, fp16)
        except ModelError:
            self.close()  # whatever was allocated before the failure
            raise
        except Exception as exc:  # the bindings' own TypeError, ValueError, MemoryError...: a model it cannot run
            self.close()
            raise ModelError(f"{spec.path}: TensorRT cannot run it: {type(exc).__name__}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open(self, spec: ModelFile, max_batch: int, fp16: bool) -> None:
        trt, cudart = self._trt, self._cudart
        properties = _check(
            cudart.cudaGetDeviceProperties(0),
            f"no NVIDIA GPU is visible to {who()}{NO_GPU_HINT}",
        )
        gpu = gpu_identity(properties)
        self.mapped = bool(getattr(properties, "integrated", 0))  # unified memory: the GPU reads host memory
        self._memory_limit = int(properties.totalGlobalMem) // MEMORY_SHARE
        self.provider = f"TensorRT {trt.__version__} on {gpu}"
        runtime = trt.Runtime(self._logger)
        if spec.path.suffix == ".engine":
            self.engine = runtime.deserialize_cuda_engine(spec.read())
            if self.engine is None:
                raise TensorRTSetupError(
                    f"{spec.path}: TensorRT {trt.__version__} cannot load this engine (built by another TensorRT "
                    "version or for another GPU?); ship the .onnx instead and let EdgeSight build the engine here"
                )
        else:
            self.engine = self._cached_engine(spec, runtime, gpu, max_batch, fp16)
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(f"{spec.path}: the TensorRT backend runs one-input models; this one has {inputs}")
        self.input_name = inputs[0]
        self.input_names = inputs
        self.output_names = [n for n in names if n != self.input_name]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if len(shape) != 4:
            raise ModelError(f"{spec.path}: the TensorRT backend runs image models [batch, 3, height, width]: {shape}")
        if is_dynamic(shape):
            _, _, largest = (tuple(s) for s in self.engine.get_tensor_profile_shape(self.input_name, 0))
        else:
            largest = shape
        self.max_batch, _, self.input_height, self.input_width = (int(d) for d in largest)
        self.static_batch = int(shape[0]) > 0
        self.inputs, self.outputs = (
            [
                TensorSpec(
                    name,
                    tuple(int(d) if d >= 0 else None for d in self.engine.get_tensor_shape(name)),
                    np.dtype(trt.nptype(self.engine.get_tensor_dtype(name))).name,
                )
                for name in group
            ]
            for group in (self.input_names, self.output_names)
        )
        self._allocate(tuple(int(d) for d in largest), spec)

    def _cached_engine(self, spec: ModelFile, runtime: Any, gpu: str, max_batch: int, fp16: bool) -> Any:
        trt = self._trt
        model = spec.read()  # once: the key and the build are of the same bytes, whatever the file does meanwhile
        batch, input_size = self._onnx_input(model, spec.input_size)
        if batch > 0:  # a static batch: max_batch changes nothing, and must not make another engine
            max_batch = batch
        folder = engine_cache_dir()
        digest = hashlib.sha256(model).hexdigest()
        cache = EngineCache(
            folder, engine_cache_key(digest, input_size, trt.__version__, gpu, max_batch, fp16), spec.seal
        )
        limit = engine_limit(len(model))
        plan = cache.load(limit)  # a ready engine in a read-only folder (shipped with the image) is fine
        if plan is not None:
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is not None:
                log.info("TensorRT engine loaded from the cache", extra={"model": spec.name, "engine": str(cache.path)})
                return engine
        with cache.locked():
            plan = cache.load(limit)  # another replica may have built it while this one waited
            engine = runtime.deserialize_cuda_engine(plan) if plan is not None else None
            if plan is not None and engine is None:
                log.warning("cached TensorRT engine does not load; rebuilding it", extra={"engine": str(cache.path)})
                cache.drop()
            if engine is None:
                started = time.monotonic()
                log.warning(
                    "building a TensorRT engine: minutes on a Jetson, once per model, batch size and TensorRT version",
                    extra={"model": spec.name, "engine": str(cache.path), "max_batch": max_batch, "fp16": fp16},
                )
                timing = folder / f"timing-{_short(trt.__version__ + gpu)}.cache"  # shared by this GPU's builds
                plan = build_plan(trt, self._logger, spec, model, max_batch, fp16, timing)
                try:
                    cache.store(plan)
                except OSError as exc:  # the engine built still runs; only the next start builds again
                    log.warning(
                        "could not cache the TensorRT engine; it is built again at the next start",
                        extra={"model": spec.name, "engine": str(cache.path), "error": exc.strerror or str(exc)},
                    )
                seconds = round(time.monotonic() - started, 1)
                built = {"model": spec.name, "seconds": seconds, "engine": str(cache.path)}
                log.info("TensorRT engine built and cached", extra=built)
                engine = runtime.deserialize_cuda_engine(plan)
                if engine is None:
                    raise ModelError(f"{spec.path}: TensorRT could not load the engine it just built")
            return engine

    @staticmethod
    def _onnx_input(model: bytes, input_size: tuple[int, int] | None) -> tuple[int, tuple[int, int]]:
        """The model's static batch (0: dynamic) and the (width, height) it runs at."""
        import onnx

        dims = onnx.ModelProto.FromString(model).graph.input[0].type.tensor_type.shape.dim
        if len(dims) != 4:
            return 0, input_size or (0, 0)
        return dims[0].dim_value, input_size or (dims[3].dim_value, dims[2].dim_value)

    def _allocate(self, largest: tuple[int, ...], spec: ModelFile) -> None:
        """Every tensor's memory once, at the largest batch; smaller batches use the start of it."""
        trt, cudart = self._trt, self._cudart
        if not self.context.set_input_shape(self.input_name, largest):
            raise ModelError(f"{spec.path}: TensorRT refused the input shape {list(largest)}")
        sizes = {}
        for name in (self.input_name, *self.output_names):
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise ModelError(
                    f"{spec.path}: output {name!r} has a size that depends on the data ({list(shape)}), which the "
                    "TensorRT backend does not run"
                )
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            sizes[name] = (shape, dtype, max(1, math.prod(shape) * dtype.itemsize))  # Python ints: no overflow
        total = sum(nbytes for _, _, nbytes in sizes.values())
        if total > self._memory_limit:  # pinned memory cannot be swapped: on a Jetson it is the CPU's memory too
            raise ModelError(
                f"{spec.path}: its buffers at a batch of {largest[0]} would take {total / 2**30:.1f} GiB, more than "
                f"1/{MEMORY_SHARE} of the GPU's memory; lower max_batch or the input size"
            )
        for name, (shape, dtype, nbytes) in sizes.items():
            if self.mapped:
                host_pointer = _check(cudart.cudaHostAlloc(nbytes, cudart.cudaHostAllocMapped), "cudaHostAlloc")
                self._host_memory.append(host_pointer)
                device = int(_check(cudart.cudaHostGetDevicePointer(host_pointer, 0), "cudaHostGetDevicePointer"))
            else:
                host_pointer = _check(cudart.cudaMallocHost(nbytes), "cudaMallocHost")
                self._host_memory.append(host_pointer)
                device = int(_check(cudart.cudaMalloc(nbytes), "cudaMalloc"))
                self._device_memory.append(device)
            host = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(int(host_pointer)))
            self._buffers[name] = _Buffer(host[: math.prod(shape) * dtype.itemsize].view(dtype), device, nbytes)
            if not self.context.set_tensor_address(name, device):
                raise ModelError(f"{spec.path}: TensorRT refused the address of {name!r}")

    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        with self._using:
            if self._closed:
                raise ModelError("the TensorRT backend is closed")
            return self._run(batch)

    def run_named(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        """As ONNX Runtime's: the one input's feed cast and reshaped to it (a Panorama app's ``[3, H, W]``)."""
        if len(feeds) != 1:
            raise ModelError(f"the TensorRT backend runs one-input models; got inputs {sorted(feeds)}")
        return self.run(conform(np.asarray(next(iter(feeds.values()))), self.inputs[0]))  # type: ignore[arg-type]

    def _run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        cudart = self._cudart
        size = batch.shape[0]
        if size > self.max_batch:
            raise ModelError(f"a batch of {size} is more than this engine's {self.max_batch}")
        if not self.context.set_input_shape(self.input_name, batch.shape):
            raise ModelError(f"TensorRT refused the input shape {list(batch.shape)}")
        image = self._buffers[self.input_name]
        host = image.host[: batch.size].reshape(batch.shape)
        np.copyto(host, batch, casting="same_kind")
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if not self.mapped:
            _check(cudart.cudaMemcpyAsync(image.device, host.ctypes.data, host.nbytes, to_device, self.stream))
        if not self.context.execute_async_v3(self.stream):
            raise ModelError("TensorRT execution failed (see its log above)")
        results = []
        for name in self.output_names:
            output = self._buffers[name]
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            values = output.host[: math.prod(shape)].reshape(shape)
            if not self.mapped:
                _check(cudart.cudaMemcpyAsync(values.ctypes.data, output.device, values.nbytes, to_host, self.stream))
            results.append(values)
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [values.copy() for values in results]  # the buffers are the next run's

    def close(self) -> None:
        """Frees everything this backend allocated, whatever it got to; again is a no-op. Blocking (it
        waits for the GPU): services call it off their event loop."""
        with self._using:
            if self._closed:
                return
            self._closed = True
            self._free()

    def _free(self) -> None:
        cudart = self._cudart
        if self.stream is not None:
            cudart.cudaStreamSynchronize(self.stream)  # nothing may still use the memory freed below
        for pointer in self._device_memory:
            cudart.cudaFree(pointer)
        for pointer in self._host_memory:
            cudart.cudaFreeHost(pointer)
        self._device_memory.clear()
        self._host_memory.clear()
        self._buffers.clear()
        if self.stream is not None:
            cudart.cudaStreamDestroy(self.stream)
            self.stream = None
        self.__dict__.pop("context", None)  # TensorRT objects go before the engine that made them
        self.__dict__.pop("engine", None)


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def tensorrt_problems() -> list[str]:
    """What ``edgesight config check`` says of TensorRT on this machine, without building anything."""
    try:
        _, cudart = _import()
    except TensorRTSetupError as exc:
        return [str(exc)]
    problems = []
    try:
        _check(cudart.cudaGetDeviceProperties(0), f"no NVIDIA GPU is visible to {who()}{NO_GPU_HINT}")
    except ModelError as exc:
        problems.append(f"{exc}; models would run on ONNX Runtime instead")
    folder = engine_cache_dir()
    problem = EngineCache(folder, "check").unwritable()  # a check creates nothing, the folder neither
    if problem is not None and not any(folder.glob(f"*{CACHED_SUFFIX}")):  # read-only ready engines are fine
        problems.append(str(problem))
    return problems

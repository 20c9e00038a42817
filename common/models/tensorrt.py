"""TensorRT 10 backend (optional extra ``edgesight[tensorrt]``; imported only when a model chooses it).

NOT RUN ANYWHERE: no GPU was available while this was written. The pure parts — engine cache
keys and optimisation-profile shapes — are unit-tested; the CUDA parts follow TensorRT 10's
Python API (named I/O tensors, ``set_tensor_address``, ``execute_async_v3``) and cuda-python's
runtime bindings, and must be tried on a Jetson or a GPU box before anyone relies on them.

- An FP16 engine is built from the ONNX file once and cached in ``$EDGESIGHT_ENGINE_CACHE``
  (default ``~/.cache/edgesight/engines``) under a key made of the model's digest, the TensorRT
  version, the GPU's name and the batch size: a new model, TensorRT or GPU builds a new engine.
- A manifest may name a serialized ``.engine`` directly; it is loaded as is.
- Input and output host buffers are pinned (``cudaMallocHost``) and allocated once per batch size.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ModelError
from common.models.backend import Backend, ModelFile, TensorSpec

__all__ = ["TensorRTBackend", "engine_cache_key", "profile_shapes"]

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 1 << 30


def engine_cache_key(model_digest: str, tensorrt_version: str, gpu_name: str, max_batch: int, fp16: bool) -> str:
    """The file name an engine is cached under: anything that makes an engine unusable changes it."""
    identity = f"{model_digest}|trt={tensorrt_version}|gpu={gpu_name}|batch={max_batch}|fp16={fp16}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32] + ".engine"


def profile_shapes(
    input_shape: tuple[int | str, ...], max_batch: int, size: tuple[int, int] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) shapes of the optimisation profile for a parsed network's image input.

    A static batch stays as it is; a dynamic one (-1 or a name) spans 1..max_batch with the
    optimum at max_batch. A dynamic height/width takes ``size`` (width, height) from the manifest.
    """
    if len(input_shape) != 4:
        raise ModelError(f"expected an image input [batch, 3, height, width], got {list(input_shape)}")
    batch, channels, height, width = input_shape
    if not isinstance(channels, int) or channels <= 0:
        raise ModelError(f"the input's channel dimension must be fixed, got {list(input_shape)}")

    def fixed(value: int | str, fallback: int | None, what: str) -> int:
        if isinstance(value, int) and value > 0:
            return value
        if fallback is None:
            raise ModelError(f"the input's {what} is dynamic ({value}); set input_size in the manifest")
        return fallback

    h = fixed(height, size[1] if size else None, "height")
    w = fixed(width, size[0] if size else None, "width")
    if isinstance(batch, int) and batch > 0:
        shape = (batch, channels, h, w)
        return shape, shape, shape
    return (1, channels, h, w), (max_batch, channels, h, w), (max_batch, channels, h, w)


def _import() -> tuple[Any, Any]:
    try:
        import tensorrt as trt
    except ImportError:
        raise ModelError(
            "backend tensorrt needs TensorRT 10 and cuda-python: pip install 'edgesight[tensorrt]' on a machine "
            "with an NVIDIA GPU (JetPack 6 ships TensorRT for its Python); or choose backend: onnxruntime"
        ) from None
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.8
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError:
            raise ModelError("backend tensorrt needs cuda-python: pip install 'edgesight[tensorrt]'") from None
    if int(trt.__version__.split(".")[0]) < 10:
        raise ModelError(f"backend tensorrt needs TensorRT >= 10, found {trt.__version__}")
    return trt, cudart


def _check(result: Any) -> Any:
    """cuda-python returns (error, value...) tuples; raise on an error, return the value(s)."""
    error, *values = result if isinstance(result, tuple) else (result,)
    if int(error) != 0:
        raise ModelError(f"CUDA error {error}")
    return values[0] if len(values) == 1 else values


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, spec: ModelFile, *, max_batch: int = 1, fp16: bool = True) -> None:
        trt, cudart = _import()
        self._trt, self._cudart = trt, cudart
        self._logger = trt.Logger(trt.Logger.WARNING)
        properties = _check(cudart.cudaGetDeviceProperties(0))
        gpu = properties.name.decode() if isinstance(properties.name, bytes) else str(properties.name)
        self.provider = f"TensorRT {trt.__version__} on {gpu}"
        if spec.path.suffix == ".engine":
            serialized = spec.read()
        else:
            cache = Path(os.environ.get("EDGESIGHT_ENGINE_CACHE", Path.home() / ".cache/edgesight/engines"))
            path = cache / engine_cache_key(spec.digest, trt.__version__, gpu, max_batch, fp16)
            if path.is_file():
                serialized = path.read_bytes()
            else:
                log.warning("building a TensorRT engine (minutes on a Jetson)", extra={"model": spec.name})
                serialized = self._build(spec, max_batch, fp16)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.with_suffix(".partial").write_bytes(serialized)
                path.with_suffix(".partial").rename(path)
        self.engine = trt.Runtime(self._logger).deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise ModelError(f"{spec.path}: TensorRT could not deserialize the engine")
        self.context = self.engine.create_execution_context()
        self.stream = _check(cudart.cudaStreamCreate())
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(inputs) != 1:
            raise ModelError(f"{spec.path}: expected one input tensor, found {inputs}")
        self.input_name = inputs[0]
        self.input_names = inputs
        self.output_names = [n for n in names if n != self.input_name]
        shape = tuple(self.engine.get_tensor_shape(self.input_name))
        _, _, largest = profile_shapes(shape, max_batch, spec.input_size)
        self.max_batch, _, self.input_height, self.input_width = largest
        self.static_batch = isinstance(shape[0], int) and shape[0] > 0
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
        self._buffers: dict[int, dict[str, tuple[npt.NDArray[Any], int, int]]] = {}

    def _build(self, spec: ModelFile, max_batch: int, fp16: bool) -> bytes:
        trt = self._trt
        builder = trt.Builder(self._logger)
        network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
        parser = trt.OnnxParser(network, self._logger)
        if not parser.parse(spec.read()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise ModelError(f"{spec.path}: TensorRT cannot parse it: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
        if fp16 and builder.platform_has_fast_fp16:
            config.set_flag(trt.BuilderFlag.FP16)
        image = network.get_input(0)
        low, best, high = profile_shapes(tuple(image.shape), max_batch, spec.input_size)
        if low != high:
            profile = builder.create_optimization_profile()
            profile.set_shape(image.name, low, best, high)
            config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise ModelError(f"{spec.path}: TensorRT failed to build an engine (see its log above)")
        return bytes(serialized)

    def _allocate(self, batch: int) -> dict[str, tuple[npt.NDArray[Any], int, int]]:
        """Pinned host array, device pointer and byte size per tensor, for one batch size."""
        trt, cudart = self._trt, self._cudart
        self.context.set_input_shape(self.input_name, (batch, 3, self.input_height, self.input_width))
        buffers = {}
        for name in (self.input_name, *self.output_names):
            shape = tuple(self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            host_pointer = _check(cudart.cudaMallocHost(nbytes))
            host = np.ctypeslib.as_array((ctypes.c_byte * nbytes).from_address(host_pointer))
            device = _check(cudart.cudaMalloc(nbytes))
            buffers[name] = (host.view(dtype).reshape(shape), device, nbytes)
        return buffers

    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        cudart = self._cudart
        size = batch.shape[0]
        buffers = self._buffers.get(size)
        if buffers is None:
            buffers = self._buffers[size] = self._allocate(size)
        self.context.set_input_shape(self.input_name, batch.shape)
        host, device, nbytes = buffers[self.input_name]
        np.copyto(host, batch, casting="same_kind")
        to_device, to_host = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(cudart.cudaMemcpyAsync(device, host.ctypes.data, nbytes, to_device, self.stream))
        for name, (_, pointer, _) in buffers.items():
            self.context.set_tensor_address(name, pointer)
        if not self.context.execute_async_v3(self.stream):
            raise ModelError("TensorRT execution failed")
        for name in self.output_names:
            out_host, out_device, out_bytes = buffers[name]
            _check(cudart.cudaMemcpyAsync(out_host.ctypes.data, out_device, out_bytes, to_host, self.stream))
        _check(cudart.cudaStreamSynchronize(self.stream))
        return [buffers[name][0].copy() for name in self.output_names]

    def close(self) -> None:
        cudart = self._cudart
        for buffers in self._buffers.values():
            for host, device, _ in buffers.values():
                cudart.cudaFreeHost(host.ctypes.data)
                cudart.cudaFree(device)
        self._buffers.clear()
        cudart.cudaStreamDestroy(self.stream)

"""Inference backends behind one interface: ONNX Runtime everywhere, TensorRT on NVIDIA GPUs."""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from services.inference.manifest import ModelError, ModelSpec

__all__ = ["Backend", "OnnxRuntimeBackend", "open_backend"]

log = logging.getLogger(__name__)


class Backend(abc.ABC):
    """Runs one model on a batch ``[B, 3, H, W]`` float32 and returns its raw outputs."""

    name: str  # onnxruntime | tensorrt
    provider: str  # what really runs it: CPUExecutionProvider, CUDAExecutionProvider, TensorRT, …
    max_batch: int  # frames per run at most; a model with a static batch of 1 runs frame by frame
    static_batch: bool  # the model takes exactly max_batch frames (padded when fewer are ready)
    input_width: int
    input_height: int

    @abc.abstractmethod
    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]: ...

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        pass


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, spec: ModelSpec, providers: Sequence[str], threads: int = 0, max_batch: int = 1) -> None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        usable = [p for p in providers if p in available]
        missing = [p for p in providers if p not in available]
        if not usable:
            usable = ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(str(spec.model_path), options, providers=usable)
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelError(f"{spec.model_path}: ONNX Runtime cannot load it: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if providers and self.provider != providers[0]:
            # Frigate users' top complaint: a silent fall back to the CPU. Say it once, loudly.
            log.warning(
                "execution provider unavailable, running on another",
                extra={"model": spec.name, "wanted": providers[0], "provider": self.provider, "missing": missing},
            )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_names = [o.name for o in self.session.get_outputs()]
        batch, _, height, width = model_input.shape
        size = spec.manifest.input_size
        self.input_width = int(width) if isinstance(width, int) else int(size[0]) if size else 0
        self.input_height = int(height) if isinstance(height, int) else int(size[1]) if size else 0
        self.static_batch = isinstance(batch, int)
        self.max_batch = int(batch) if isinstance(batch, int) else max_batch

    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(o) for o in outputs]


def open_backend(
    spec: ModelSpec, backend: str, providers: Sequence[str], *, max_batch: int = 1, threads: int = 0
) -> Backend:
    """The backend a model config names; ``tensorrt`` is imported only here, only when chosen."""
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(spec, providers, threads, max_batch)
    if backend == "tensorrt":
        from services.inference.tensorrt_backend import TensorRTBackend

        return TensorRTBackend(spec, max_batch=max_batch)
    raise ModelError(f"unknown backend {backend!r} (onnxruntime, tensorrt)")

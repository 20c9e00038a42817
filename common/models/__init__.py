"""Model backends behind one interface: ONNX Runtime everywhere, TensorRT on NVIDIA GPUs.

Shared by the services that run models (inference, apps): a backend knows a model file and runs
raw tensors through it; what the tensors mean (letterbox, decoding) is the caller's business.
The model format lives here too, in its own modules: the manifest (:mod:`common.models.manifest`),
its label tables (:mod:`common.models.labels`), and a model found and opened under the site's
trust (:mod:`common.models.loading`).
"""

from __future__ import annotations

from collections.abc import Sequence

from common.errors import ModelError
from common.models.backend import Backend, ModelFile, TensorSpec, conform, refuse_external_data
from common.models.onnx_runtime import OnnxRuntimeBackend

__all__ = [
    "Backend",
    "ModelFile",
    "OnnxRuntimeBackend",
    "TensorSpec",
    "conform",
    "open_backend",
    "refuse_external_data",
]


def open_backend(
    spec: ModelFile, backend: str, providers: Sequence[str], *, max_batch: int = 1, threads: int = 0
) -> Backend:
    """The backend a model config names; ``tensorrt`` is imported only here, only when chosen."""
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(spec, providers, threads, max_batch)
    if backend == "tensorrt":
        from common.models.tensorrt import TensorRTBackend

        return TensorRTBackend(spec, max_batch=max_batch)
    raise ModelError(f"unknown backend {backend!r} (onnxruntime, tensorrt)")

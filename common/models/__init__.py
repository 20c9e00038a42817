"""Model backends behind one interface: ONNX Runtime everywhere, TensorRT on NVIDIA GPUs.

Shared by the services that run models (inference, apps): a backend knows a model file and runs
raw tensors through it; what the tensors mean (letterbox, decoding) is the caller's business.
The model format lives here too, in its own modules: the manifest (:mod:`common.models.manifest`),
its label tables (:mod:`common.models.labels`), and a model found and opened under the site's
trust (:mod:`common.models.loading`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from common.errors import ModelError
from common.metrics import MODEL_BACKEND_FALLBACKS
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

log = logging.getLogger(__name__)


def open_backend(
    spec: ModelFile, backend: str, providers: Sequence[str], *, max_batch: int = 1, threads: int = 0
) -> Backend:
    """The backend a model config names; ``tensorrt`` is imported only here, only when chosen.

    A model TensorRT cannot run here (no GPU visible, refused by its parser or builder) runs on ONNX
    Runtime instead — its CUDA provider where this ONNX Runtime has one, else the CPU — said in one
    warning and counted (``edgesight_model_backend_fallbacks_total``): a site keeps counting while the
    cause is fixed, and a restart does not spend minutes building again only to fail again. What only
    the operator can fix (TensorRT missing, too old, an unwritable engine cache) is raised.
    """
    if backend == "onnxruntime":
        return OnnxRuntimeBackend(spec, providers, threads, max_batch)
    if backend == "tensorrt":
        from common.models.tensorrt import TensorRTBackend, TensorRTSetupError

        try:
            return TensorRTBackend(spec, max_batch=max_batch)
        except TensorRTSetupError:
            raise
        except ModelError as exc:
            if spec.path.suffix == ".engine":
                raise  # a serialized engine has no ONNX graph to fall back to
            reason = str(exc)
        import onnxruntime

        gpu = [p for p in ("CUDAExecutionProvider",) if p in onnxruntime.get_available_providers()]
        fallback = OnnxRuntimeBackend(spec, [*gpu, "CPUExecutionProvider"], threads, max_batch)
        log.warning(
            "TensorRT cannot run this model here; running it on ONNX Runtime",
            extra={"model": spec.name, "reason": reason, "provider": fallback.provider},
        )
        MODEL_BACKEND_FALLBACKS.labels(spec.name, "tensorrt", fallback.provider).inc()
        return fallback
    raise ModelError(f"unknown backend {backend!r} (onnxruntime, tensorrt)")

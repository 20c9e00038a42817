"""ONNX Runtime: the backend everywhere, on whichever execution provider the model config asks for."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from common.errors import ModelError
from common.models.backend import Backend, ModelFile, TensorSpec, conform

__all__ = ["OnnxRuntimeBackend"]

log = logging.getLogger(__name__)

ONNX_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, spec: ModelFile, providers: Sequence[str], threads: int = 0, max_batch: int = 1) -> None:
        import onnxruntime

        available = onnxruntime.get_available_providers()
        usable = [p for p in providers if p in available]
        missing = [p for p in providers if p not in available]
        if not usable:
            usable = ["CPUExecutionProvider"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning: on an edge box the decoder, the tracker and the
        # bus share these cores, and spinning threads take their time (measured: benchmarks/pipeline.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            model = spec.read() if spec.content is not None else str(spec.path)
            self.session = onnxruntime.InferenceSession(model, options, providers=usable)
        except Exception as exc:  # ONNX Runtime's own exception types
            raise ModelError(f"{spec.path}: ONNX Runtime cannot load it: {exc}") from None
        self.provider = self.session.get_providers()[0]
        if providers and self.provider != providers[0]:
            # Frigate users' top complaint: a silent fall back to the CPU. Say it once, loudly.
            log.warning(
                "execution provider unavailable, running on another",
                extra={"model": spec.name, "wanted": providers[0], "provider": self.provider, "missing": missing},
            )
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.inputs, self.outputs = (
            [
                TensorSpec(
                    t.name, tuple(d if isinstance(d, int) else None for d in t.shape), ONNX_TYPES.get(t.type, "float32")
                )
                for t in tensors
            ]
            for tensors in (self.session.get_inputs(), self.session.get_outputs())
        )
        shape: list[object] = list(model_input.shape)
        batch = shape[0] if shape else None
        height, width = (shape[2], shape[3]) if len(shape) == 4 else (None, None)  # an image [B, C, H, W]
        size = spec.input_size
        self.input_width = int(width) if isinstance(width, int) else int(size[0]) if size else 0
        self.input_height = int(height) if isinstance(height, int) else int(size[1]) if size else 0
        self.static_batch = isinstance(batch, int)
        self.max_batch = int(batch) if isinstance(batch, int) else max_batch

    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]:
        outputs = self.session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(o) for o in outputs]

    def run_named(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        if len(feeds) == 1 and len(self.input_names) == 1:
            feeds = {self.input_name: next(iter(feeds.values()))}
        unknown = sorted(set(feeds) - set(self.input_names))
        if unknown:
            raise ModelError(f"{unknown} are not inputs of this model (it has {self.input_names})")
        specs = {spec.name: spec for spec in self.inputs}
        conformed = {name: conform(np.asarray(array), specs[name]) for name, array in feeds.items()}
        return [np.asarray(o) for o in self.session.run(self.output_names, conformed)]

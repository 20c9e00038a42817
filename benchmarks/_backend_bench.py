"""What ``benchmarks.gpu_check`` and ``benchmarks.inference_throughput`` both measure a model's backend with: a
copy of a model with a dynamic batch, and frames/s of ``Backend.run`` alone."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy.typing as npt

from common.models import Backend

Array = npt.NDArray[Any]


def dynamic_batch_copy(model: Path, target: Path) -> Path:
    """``model`` with its batch dimension made dynamic (YOLOX's reshapes infer it)."""
    import onnx

    graph = onnx.load(str(model))
    for tensor in [*graph.graph.input, *graph.graph.output]:
        tensor.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.save(graph, str(target))
    return target


def frames_per_second(backend: Backend, tensor: Array, seconds: float, warmup: int = 3) -> float:
    """Frames/s of ``backend.run`` alone, on the same batch again and again, after ``warmup`` runs (the
    first runs of a TensorRT engine or a CUDA session set things up)."""
    for _ in range(warmup):
        backend.run(tensor)
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        backend.run(tensor)
        runs += 1
    return runs * len(tensor) / (time.perf_counter() - started)

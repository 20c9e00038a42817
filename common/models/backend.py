"""What every model backend shares: the model file it runs, its tensors, and the ``Backend`` interface.

The base types of :mod:`common.models`, apart from the backends themselves so that a backend module
(:mod:`common.models.tensorrt`, imported only when chosen) builds on them without importing the
package that chooses it.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from common.errors import ModelError

__all__ = ["Backend", "ModelFile", "TensorSpec", "conform", "refuse_external_data"]


@dataclasses.dataclass(frozen=True)
class ModelFile:
    """What a backend needs to know of a model: its file, a name for logs, a digest for caches and,
    where the model's input is dynamic, the (width, height) to run it at."""

    path: Path
    name: str
    digest: str = ""
    input_size: tuple[int, int] | None = None
    content: bytes | None = dataclasses.field(default=None, repr=False)  # from a package: never written to disk
    # the key a backend seals what it derives from the model (a TensorRT engine) with: the site's device key's
    seal: bytes | None = dataclasses.field(default=None, repr=False, compare=False)

    def read(self) -> bytes:
        if self.content is not None:
            if self.path.suffix != ".engine":  # a serialized TensorRT engine has no ONNX tensors to check
                refuse_external_data(self.content, self.name)
            return self.content
        return self.path.read_bytes()

    @classmethod
    def at(
        cls, path: Path, name: str, input_size: tuple[int, int] | None = None, seal: bytes | None = None
    ) -> ModelFile:
        if not path.is_file():
            raise ModelError(f"model file {path} does not exist")
        return cls(path, name, hashlib.sha256(path.read_bytes()).hexdigest(), input_size, seal=seal)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model: ``shape`` holds None for a dimension the model leaves open."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str  # a numpy dtype name: float32, uint8, ...


def conform(array: npt.NDArray[Any], spec: TensorSpec) -> npt.NDArray[Any]:
    """``array`` as ``spec`` takes it, as SageMaker Neo's runtime did for Panorama apps: cast to the
    input's type, and reshaped when its rank differs but its element count fits (``[3, 640, 640]``
    for ``[1, 3, 640, 640]``). Anything else is a ModelError that says what the input takes."""
    fits = len(array.shape) == len(spec.shape) and all(
        want is None or want == got for want, got in zip(spec.shape, array.shape, strict=False)
    )
    known = int(np.prod([d for d in spec.shape if d is not None], dtype=np.int64))
    open_dims = sum(1 for d in spec.shape if d is None)
    if not fits and open_dims == 0 and array.size == known:
        array, fits = array.reshape([int(d) for d in spec.shape if d is not None]), True
    elif not fits and open_dims == 1 and known and array.size % known == 0:
        array, fits = array.reshape([-1 if d is None else int(d) for d in spec.shape]), True
    if fits:  # the shape first: a feed that cannot fit is refused before a copy of it is made
        return array if array.dtype == np.dtype(spec.dtype) else array.astype(spec.dtype)
    wanted = "x".join("?" if d is None else str(d) for d in spec.shape)
    raise ModelError(
        f"input {spec.name!r} takes [{wanted}] {spec.dtype}; got {list(array.shape)} ({array.size} values) "
        "that cannot be reshaped to it"
    )


class Backend(abc.ABC):
    """Runs one model on a batch ``[B, 3, H, W]`` float32 and returns its raw outputs."""

    name: str  # onnxruntime | tensorrt
    provider: str  # what really runs it: CPUExecutionProvider, CUDAExecutionProvider, TensorRT, …
    max_batch: int  # frames per run at most; a model with a static batch of 1 runs frame by frame
    static_batch: bool  # the model takes exactly max_batch frames (padded when fewer are ready)
    input_width: int
    input_height: int

    input_names: list[str]
    inputs: list[TensorSpec]  # every input and output, as the model declares them
    outputs: list[TensorSpec]

    @abc.abstractmethod
    def run(self, batch: npt.NDArray[np.float32]) -> list[npt.NDArray[np.generic]]: ...

    def run_named(self, feeds: Mapping[str, npt.NDArray[np.generic]]) -> list[npt.NDArray[np.generic]]:
        """Every output for inputs given by name (a one-input model takes its one feed whatever its key)."""
        if len(feeds) == 1 and len(self.input_names) == 1:
            return self.run(next(iter(feeds.values())))  # type: ignore[arg-type]
        raise ModelError(f"{type(self).__name__} runs one-input models; got inputs {sorted(feeds)}")

    def close(self) -> None:  # noqa: B027 - most backends have nothing to release
        pass


def refuse_external_data(content: bytes, name: str) -> None:
    """A model from a package must be whole: ONNX lets a tensor's data live in another file (``location``
    relative to the working directory, ``../`` included), which the signature does not cover — a signed
    model could read ``/run/secrets`` into its outputs. Every tensor of the graph, its subgraphs and
    functions is checked before a runtime sees the bytes."""
    import onnx

    try:
        model = onnx.ModelProto.FromString(bytes(content))  # parsed only: nothing external is loaded
    except Exception as exc:  # protobuf's DecodeError and its relatives
        raise ModelError(f"{name}: not an ONNX model: {type(exc).__name__}") from None
    graphs = [model.graph]
    nodes = [node for function in model.functions for node in function.node]  # functions hold nodes, no initializers
    tensors = []
    while graphs or nodes:
        if graphs:
            graph = graphs.pop()
            tensors += list(graph.initializer)
            tensors += [t for sparse in graph.sparse_initializer for t in (sparse.values, sparse.indices)]
            nodes += list(graph.node)
            continue
        for attribute in nodes.pop().attribute:
            tensors += [attribute.t, *attribute.tensors]
            tensors += [
                t
                for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors)
                for t in (sparse.values, sparse.indices)
            ]
            graphs += [attribute.g, *attribute.graphs]
    external = [
        t.name or "(unnamed)" for t in tensors if t.data_location == onnx.TensorProto.EXTERNAL or t.external_data
    ]
    if external:
        raise ModelError(
            f"{name}: tensor {external[0]!r} keeps its data in an external file; a packaged model must hold all "
            "its weights itself (re-export without external data)"
        )

"""AWS Panorama's first Application SDK (v0: the 2020 preview's "Lambda" apps), on EdgeSight's runtime.

A v0 app subclasses ``panoramasdk.base``, declares its ports in ``interface()``, loads models in
``init(parameters, inputs, outputs)`` with ``panoramasdk.model()``, handles one frame per camera in
``entry(inputs, outputs)`` and starts with ``App().run()``. ``panoramasdk`` re-exports this module's
classes and hands it the runtime that v1 apps use too, once, before the app's code runs::

    import _panorama_v0
    _panorama_v0.bind(_runtime)          # a zero-argument callable returning the runtime
    from _panorama_v0 import base, batch, batch_set, input_array, model, output_array

``run()`` reads ``interface()``, fills ``parameters`` (a value of the site file, else the default),
gets the first frames (so ``len(inputs.video_in)`` is the camera count in ``init``, as the samples
expect), calls ``init`` once (``False``: the app ends, saying so), then for ever: ``entry``, and
``outputs.video_out[i]`` (the input media where the app assigned none) to the output port, and the
next frames. ``entry`` returning ``False`` — what the samples do after printing an exception — is
reported and the app goes on. ``model`` runs on the runtime's model nodes: ``batch`` collects,
``flush`` runs, ``get_result`` hands over the outputs. What EdgeSight cannot give (an input's FourCC
or value range, a ``media`` parameter) raises ``NotImplementedError``.

Pure standard library and numpy (any from 1.21), and Python 3.7 on (v0 apps were written for 3.7):
it runs on the app's own interpreter and packages.
"""

# ruff: noqa: B905 (zip(strict=) is Python 3.10's; the zips here pair lists built to the same length)
from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

__all__ = ["base", "batch", "batch_set", "bind", "input_array", "model", "output_array"]

MEDIA_IN = "media[]"
INTEGERS = {"int": (-(2**31), 2**31), "uint32": (0, 2**32), "byte": (0, 256)}  # v0 type -> [low, high)


if TYPE_CHECKING:  # typing.Protocol is Python 3.8's
    from typing import Protocol

    class Runtime(Protocol):
        """The app process's link to EdgeSight, as ``panoramasdk`` implements it."""

        @property
        def cameras(self) -> Sequence[str]: ...
        @property
        def parameters(self) -> Mapping[str, object]: ...
        @property
        def video_in(self) -> str: ...
        @property
        def video_out(self) -> str: ...
        def get(self, port_name: str, timeout: float | None) -> Sequence[Any]: ...
        def put(self, port_name: str, streams: list[Any]) -> None: ...
        def call(self, name: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]: ...
        def model_info(self, name: str) -> Mapping[str, Any]: ...


_factory: Callable[[], Runtime] | None = None


def bind(runtime: Callable[[], Runtime]) -> None:
    """Called once by ``panoramasdk``: where ``run()`` and ``model.open()`` find the runtime."""
    global _factory
    _factory = runtime


def _runtime() -> Runtime:
    if _factory is None:
        raise RuntimeError("the v0 panoramasdk is not bound to a runtime: panoramasdk calls _panorama_v0.bind() first")
    return _factory()


def _say(message: str) -> None:
    print(f"panoramasdk: {message}", file=sys.stderr, flush=True)


# -- the application ---------------------------------------------------------------------------


class port(list):  # type: ignore[type-arg]
    """``inputs.video_in`` (media, one per camera) and ``outputs.video_out`` (what the app assigns)."""


class _Ports:
    """``inputs`` or ``outputs``: one attribute per port of ``interface()``."""

    def __repr__(self) -> str:
        return f"ports({', '.join(sorted(vars(self)))})"


class _Parameters:
    """``parameters.<name>``: the site file's value, else ``interface()``'s default, as the declared type."""

    def __init__(self, values: Mapping[str, object]) -> None:
        self.__dict__.update(values)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"no parameter {name!r} in interface(): it declares {sorted(self.__dict__)}")

    def __repr__(self) -> str:
        return f"parameters({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def _typed(kind: str, name: str, value: object) -> object:
    """A parameter's value as the type ``interface()`` declares: v0's float, int, uint32, byte, bool,
    string, model (a model node's name) and rect (x0, y0, x1, y1)."""
    number = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    if kind == "float" and number is not None:
        return float(number)
    if kind in INTEGERS and number is not None and number == int(number):
        low, high = INTEGERS[kind]
        if low <= int(number) < high:
            return int(number)
    if kind == "bool" and (isinstance(value, bool) or number in (0, 1)):
        return bool(value)
    if kind in ("string", "model") and isinstance(value, str):
        return value
    if kind == "rect" and isinstance(value, (list, tuple)) and len(value) == 4:
        return tuple(float(v) for v in value)
    if kind == "media":
        raise NotImplementedError(f"parameter {name!r}: a media parameter; EdgeSight feeds media only on the input")
    if kind not in ("float", "int", "uint32", "byte", "bool", "string", "model", "rect"):
        raise ValueError(
            f"parameter {name!r}: unknown type {kind!r} (v0 has float, int, uint32, byte, bool, string, model, rect)"
        )
    raise ValueError(f"parameter {name!r}: expected {kind}, got {value!r}")


class _Graph:
    """``interface()`` read: the parameters, the media input and the media output."""

    def __init__(self, declared: Mapping[str, Any], app: str) -> None:
        if not isinstance(declared, Mapping):
            raise TypeError(f"{app}.interface() returns a dict of parameters, inputs, outputs; got {declared!r}")
        self.parameters: list[tuple[str, str, object]] = []
        for entry in declared.get("parameters", ()):
            if len(entry) != 4:
                raise ValueError(f"{app}.interface(): a parameter is (type, name, description, default), got {entry}")
            self.parameters.append((str(entry[0]), str(entry[1]), entry[3]))
        inputs, outputs = list(declared.get("inputs", ())), list(declared.get("outputs", ()))
        if len(inputs) != 1 or inputs[0][0] != MEDIA_IN:
            raise NotImplementedError(f"{app}.interface(): EdgeSight runs one {MEDIA_IN!r} input, got {inputs}")
        self.video_in = str(inputs[0][1])
        if len(outputs) != 1 or outputs[0][0] != f"media[{self.video_in}]":
            raise NotImplementedError(
                f"{app}.interface(): EdgeSight runs one 'media[{self.video_in}]' output, got {outputs}"
            )
        self.video_out = str(outputs[0][1])

    def values(self, site: Mapping[str, object]) -> _Parameters:
        declared = {name for _, name, _ in self.parameters}
        unused = sorted(set(site) - declared)
        if unused:
            _say(f"site parameters {unused} are not in interface() and are not given to the app")
        return _Parameters(
            {name: _typed(kind, name, site.get(name, default)) for kind, name, default in self.parameters}
        )


class base:
    """An application: subclass it, define ``interface``, ``init`` and ``entry``, then call ``run()``."""

    def interface(self) -> Mapping[str, Any]:
        raise NotImplementedError(f"{type(self).__name__} defines no interface(): its parameters, inputs, outputs")

    def init(self, parameters: Any, inputs: Any, outputs: Any) -> bool | None:
        return True

    def entry(self, inputs: Any, outputs: Any) -> bool | None:
        raise NotImplementedError(f"{type(self).__name__} defines no entry(inputs, outputs)")

    def run(self) -> None:
        """Starts the application: ``init`` once, then ``entry`` for every set of frames, for ever."""
        app = type(self).__name__
        runtime = _runtime()
        graph = _Graph(self.interface(), app)
        parameters = graph.values(runtime.parameters)
        inputs, outputs = _Ports(), _Ports()
        streams = port(runtime.get(runtime.video_in, None))
        setattr(inputs, graph.video_in, streams)
        setattr(outputs, graph.video_out, port([None] * len(streams)))
        if _failed(self.init(parameters, inputs, outputs)):
            raise SystemExit(f"panoramasdk: {app}.init() returned False: the app ends (its output above says why)")
        failures = 0
        while True:
            setattr(outputs, graph.video_out, port([None] * len(streams)))
            if _failed(self.entry(inputs, outputs)):
                failures += 1
                if str(failures).rstrip("0") == "1":  # the 1st, 10th, 100th...: seen, never a flood
                    _say(f"{app}.entry() returned False; the app goes on (False returns so far: {failures})")
            runtime.put(runtime.video_out, _shown(streams, getattr(outputs, graph.video_out), graph.video_out))
            streams = port(runtime.get(runtime.video_in, None))
            setattr(inputs, graph.video_in, streams)


def _failed(result: object) -> bool:
    return result is not None and not result


def _shown(streams: Sequence[Any], assigned: Sequence[Any], name: str) -> list[Any]:
    """What goes out: each camera's assigned media, else its input media as it is."""
    shown = []
    for index, stream in enumerate(streams):
        chosen = assigned[index] if index < len(assigned) and assigned[index] is not None else stream
        if not hasattr(chosen, "image"):
            raise TypeError(f"outputs.{name}[{index}] takes a media of inputs, got {type(chosen).__name__}")
        shown.append(chosen)
    return shown


# -- models ------------------------------------------------------------------------------------


class _tensor:
    """An input or output of a model, as ``model.get_input(i)`` / ``model.get_output(i)`` describe it."""

    def __init__(self, owner: model, index: int, info: Mapping[str, Any]) -> None:
        self._owner = owner
        self._index = index
        self._name = str(info["name"])
        self._shape: list[int | None] = [None if d is None else int(d) for d in info["shape"]]
        self._dtype: np.dtype[Any] = np.dtype(str(info["dtype"]))
        self._seen: tuple[int, ...] | None = None  # one item's shape in the newest result

    def get_index(self) -> int:
        return self._index

    def get_name(self) -> str:
        return self._name

    def get_type(self) -> np.dtype[Any]:
        """The numpy dtype, for ``np.empty(info.get_dims(), dtype=info.get_type())``."""
        return self._dtype

    def get_dims(self) -> tuple[int, ...]:
        """One item's shape, its batch dimension 1: what ``batch()`` takes and ``batch.get()`` fills."""
        dims = [1 if i == 0 else d for i, d in enumerate(self._shape)]
        if None in dims:
            if self._seen is None:
                raise ValueError(
                    f"{self._name!r} of model {self._owner._node!r} has a dynamic shape {self._shape}: "
                    "its dims are known after the first flush()"
                )
            return self._seen
        return tuple(d for d in dims if d is not None)

    def get_size(self) -> int:
        """Bytes of one item (the original does not say its unit)."""
        return int(np.prod(self.get_dims(), dtype=np.int64)) * self._dtype.itemsize


class input_array(_tensor):
    def get_four_cc(self) -> str:
        raise NotImplementedError("input_array.get_four_cc(): EdgeSight's models carry no FourCC; frames are BGR")

    def get_range(self) -> tuple[int, int]:
        raise NotImplementedError("input_array.get_range(): EdgeSight's models carry no input value range")


class output_array(_tensor):
    pass


class batch:
    """One output of a result, over the items of the flush: ``get(i, array)`` copies item ``i``."""

    def __init__(self, result: batch_set, name: str, values: np.ndarray, items: int) -> None:
        self._result = result
        self._name = name
        self._values = values
        self._batched = values.ndim > 0 and values.shape[0] == items  # else the whole array is the one item
        self._items = items if self._batched else 1

    def get(self, index: int, destination: np.ndarray) -> None:
        if self._result._released:
            raise RuntimeError(f"output {self._name!r}: this result was given back by release_result()")
        if not 0 <= index < self._items:
            raise IndexError(f"output {self._name!r}: item {index} of a result holding {self._items}")
        if not isinstance(destination, np.ndarray):
            raise TypeError(f"output {self._name!r}: get() copies into a numpy array, got {type(destination).__name__}")
        item = self._values[index : index + 1] if self._batched else self._values
        if destination.shape != item.shape and item.shape[:1] == (1,) and destination.shape == item.shape[1:]:
            item = item[0]  # an array without the batch dimension
        if destination.shape != item.shape:
            raise ValueError(f"output {self._name!r}: expected an array of shape {item.shape}, got {destination.shape}")
        np.copyto(destination, item, casting="same_kind")


class batch_set:
    """A flush's outputs, one ``batch`` each: ``size()``, ``get(i)``; given back by ``release_result``."""

    def __init__(self, names: Sequence[str], values: Sequence[np.ndarray], items: int) -> None:
        self._released = False
        self._batches = [batch(self, name, value, items) for name, value in zip(names, values)]

    def size(self) -> int:
        return len(self._batches)

    def get(self, index: int) -> batch:
        if not 0 <= index < len(self._batches):
            raise IndexError(f"output {index} of a model with {len(self._batches)} outputs")
        return self._batches[index]


class model:
    """A model node: ``open(name, batch_size)``, then per frame ``batch``, ``flush``, ``get_result``,
    ``release_result``."""

    def __init__(self) -> None:
        self._node = ""
        self._runtime: Runtime | None = None
        self._batch_size = 0
        self._inputs: list[input_array] = []
        self._outputs: list[output_array] = []
        self._pending: list[list[np.ndarray]] = []
        self._results: deque[batch_set] = deque()

    def open(self, name: str, batch_size: int = 1) -> None:
        """Opens model node ``name`` (a ``model`` parameter's value); a flush runs up to ``batch_size`` items."""
        if int(batch_size) < 1:
            raise ValueError(f"model {name!r}: batch_size is at least 1, got {batch_size}")
        runtime = _runtime()
        info = runtime.model_info(name)
        self._node, self._runtime, self._batch_size = name, runtime, int(batch_size)
        self._inputs = [input_array(self, i, spec) for i, spec in enumerate(info["inputs"])]
        self._outputs = [output_array(self, i, spec) for i, spec in enumerate(info["outputs"])]
        self._pending = [[] for _ in self._inputs]
        self._results.clear()

    def _opened(self) -> Runtime:
        if self._runtime is None:
            raise RuntimeError(f"model {self._node!r} is not open: call open(name, batch_size) first")
        return self._runtime

    def get_batch_size(self) -> int:
        return self._batch_size

    def get_input_count(self) -> int:
        return len(self._inputs)

    def get_output_count(self) -> int:
        return len(self._outputs)

    def get_input_names(self) -> tuple[str, ...]:
        return tuple(t.get_name() for t in self._inputs)

    def get_output_names(self) -> tuple[str, ...]:
        return tuple(t.get_name() for t in self._outputs)

    def get_input(self, index: int) -> input_array:
        return self._inputs[self._index(index, self._inputs, "input")]

    def get_output(self, index: int) -> output_array:
        return self._outputs[self._index(index, self._outputs, "output")]

    def _index(self, index: int, tensors: Sequence[_tensor], what: str) -> int:
        self._opened()
        if not 0 <= index < len(tensors):
            raise IndexError(f"model {self._node!r}: {what} {index} of {len(tensors)}")
        return index

    def batch(self, input_index: int, data: np.ndarray) -> None:
        """Adds ``data`` (one item, or several along the first axis) to an input of the next flush. An
        array of another shape whose element count is a whole number of items is reshaped, as Neo did."""
        tensor = self.get_input(input_index)
        array = np.asarray(data)
        if not np.can_cast(array.dtype, tensor.get_type(), "same_kind"):
            raise TypeError(f"input {tensor.get_name()!r}: expected {tensor.get_type()}, got {array.dtype}")
        item = tensor._shape[1:]
        if array.ndim == len(item):
            array = array[np.newaxis]
        if array.ndim != len(tensor._shape) or any(d not in (None, a) for d, a in zip(item, array.shape[1:])):
            count = int(np.prod([d or 0 for d in item], dtype=np.int64))
            if not count or not array.size or array.size % count:
                raise ValueError(
                    f"input {tensor.get_name()!r}: expected shape {tensor._shape}, got {list(array.shape)}"
                )
            array = array.reshape(-1, *[d or 0 for d in item])
        self._pending[input_index].append(array.astype(tensor.get_type(), copy=False))

    def flush(self) -> None:
        """Runs the model on what was batched; ``get_result()`` then hands over its outputs."""
        runtime = self._opened()
        counts = [sum(len(a) for a in arrays) for arrays in self._pending]
        if not counts or len(set(counts)) != 1 or counts[0] == 0:
            batched = {t.get_name(): n for t, n in zip(self._inputs, counts)}
            raise ValueError(
                f"model {self._node!r}: flush() needs the same number of items on every input, got {batched}"
            )
        items = counts[0]
        if items > self._batch_size:
            raise ValueError(f"model {self._node!r}: opened with batch_size {self._batch_size}, got {items} items")
        feeds = {t.get_name(): np.concatenate(p) for t, p in zip(self._inputs, self._pending)}
        self._pending = [[] for _ in self._inputs]
        fixed = self._inputs[0]._shape[0] if self._inputs[0]._shape else None
        step = fixed if fixed and items % fixed == 0 else items  # a model built for batch 1 runs item by item
        runs = [runtime.call(self._node, {k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, items, step)]
        values = [np.concatenate(parts) if len(runs) > 1 else np.asarray(parts[0]) for parts in zip(*runs)]
        for tensor, value in zip(self._outputs, values):
            if value.ndim and value.shape[0] == items:
                tensor._seen = (1, *value.shape[1:])
        self._results.append(batch_set(self.get_output_names(), values, items))

    def get_result(self) -> batch_set:
        """The oldest flush's outputs not yet taken."""
        self._opened()
        if not self._results:
            raise RuntimeError(f"model {self._node!r}: get_result() without a flush() before it")
        return self._results.popleft()

    def release_result(self, result: batch_set) -> None:
        """Gives a result back: its arrays go, and a later ``get`` on it is an error."""
        if not isinstance(result, batch_set):
            raise TypeError(f"release_result() takes what get_result() returned, got {type(result).__name__}")
        result._released = True
        for output in result._batches:
            output._values = np.empty(0)

    def finish(self) -> None:
        """Done with the model: what was batched and not taken goes; ``open`` may be called again."""
        self._runtime = None
        self._pending = [[] for _ in self._inputs]
        self._results.clear()

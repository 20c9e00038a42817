"""``panoramasdk`` as AWS Panorama applications import it, served by EdgeSight's apps service.

The app runs in its own sandbox (see services/apps/sandbox.py) with this folder on ``PYTHONPATH``.
It sees no bus, no shared memory, no site file and no model file: everything goes through its
channel to the apps service (``_edgesight_channel.py``), which does what the Panorama runtime did:

* ``node`` (subclassed without calling ``super().__init__()``, or made by ``panoramasdk.node()``)
  gets ``inputs`` and ``outputs`` in ``__new__``;
* ``inputs.video_in.get(timeout=None)`` returns one ``media`` per camera of the app, in graph order,
  once every camera has sent a first frame; each holds the app's own writable BGR copy of the
  camera's newest frame, its privacy masks applied. A camera with no new frame since the last get
  gives its last frame again with ``is_cached`` (and ``is_stale`` when it stopped sending);
* ``inputs.<port>.get()`` returns a parameter's typed value;
* ``outputs.video_out.put(streams)`` hands each media's image, labels and rectangles to the apps
  service, which draws them (what the HDMI port was) for the console;
* ``call(inputs, node_name)`` or ``call(node_name, inputs)`` runs a model node in the apps service
  (which verified its package) and returns its raw outputs as a tuple of numpy arrays; a feed is cast
  to the model's input type and reshaped when its element count fits, as Neo's runtime did.

Only the standard library and numpy are imported: the app may bring its own numpy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from _edgesight_channel import SOCKET_IN_SANDBOX, Channel

__all__ = ["media", "node", "port"]

CHANNEL_VARIABLE = "EDGESIGHT_APP_CHANNEL"  # only for tests that run the SDK outside a sandbox


class media:
    """One camera's frame: ``image`` is the app's own writable BGR copy."""

    def __init__(
        self,
        image: np.ndarray,
        stream_id: str,
        stream_uri: str,
        capture_ns: int,
        cached: bool,
        stale: bool = False,
    ) -> None:
        self.image = image
        self.stream_id = stream_id
        self.stream_uri = stream_uri
        self.time_stamp = (capture_ns // 1_000_000_000, capture_ns // 1000 % 1_000_000)
        self.is_cached = cached
        self.is_stale = stale  # the camera stopped sending: this is its last frame
        self._labels: list[tuple[str, float, float]] = []
        self._rects: list[tuple[float, float, float, float]] = []

    def add_label(self, text: str, x1: float, y1: float) -> None:
        """Text at (x1, y1), fractions of the frame: drawn on the output, not on ``image``."""
        self._labels.append((str(text)[:256], _fraction(x1), _fraction(y1)))

    def add_rect(self, x1: float, y1: float, x2: float, y2: float) -> None:
        """A rectangle in fractions of the frame: drawn on the output, not on ``image``."""
        self._rects.append((_fraction(x1), _fraction(y1), _fraction(x2), _fraction(y2)))


def _fraction(value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"coordinates are fractions of the frame (0-1), got {value}")
    return value


class port:
    """An input or output port of the code node."""

    def __init__(self, runtime: _Runtime, name: str) -> None:
        self._runtime = runtime
        self._name = name

    def get(self, timeout: float | None = None) -> Any:
        return self._runtime.get(self._name, timeout)

    def put(self, streams: Sequence[media]) -> None:
        self._runtime.put(self._name, streams)


class _Ports:
    def __init__(self, runtime: _Runtime, names: Sequence[str]) -> None:
        for name in names:
            setattr(self, name, port(runtime, name))


class node:
    """Base (or instance) of an application's code node; ``inputs`` and ``outputs`` are set in
    ``__new__``, so a subclass need not call ``super().__init__()``."""

    inputs: _Ports
    outputs: _Ports

    def __new__(cls, *args: Any, **kwargs: Any) -> node:
        instance = super().__new__(cls)
        runtime = _runtime()
        instance.inputs = runtime.inputs
        instance.outputs = runtime.outputs
        return instance

    def call(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Runs a model node: ``call(inputs, node_name, time_out=None)`` as the samples write it, or
        ``call(node_name, inputs, time_out=None)`` as the reference does."""
        name = kwargs.pop("name", kwargs.pop("node_name", None))
        feeds = kwargs.pop("input", kwargs.pop("inputs", None))
        kwargs.pop("time_out", None)
        for value in args[:2]:
            if isinstance(value, str) and name is None:
                name = value
            elif isinstance(value, Mapping) and feeds is None:
                feeds = value
        if name is None or feeds is None:
            raise TypeError("call(inputs: dict, node_name: str, time_out=None) or call(node_name, inputs, time_out)")
        return _runtime().call(name, feeds)


class ModelError(RuntimeError):
    """A model node the apps service could not load or run (its message says why)."""


class _Runtime:
    """The app process's link to the apps service."""

    def __init__(self) -> None:
        self._channel = Channel(os.environ.get(CHANNEL_VARIABLE, SOCKET_IN_SANDBOX))
        hello, _ = self._ask({"op": "hello"})
        self.app_name: str = hello["app"]
        self.cameras: list[str] = list(hello["cameras"])
        self.video_in: str = hello["video_in"]
        self.video_out: str = hello["video_out"]
        self.parameters: dict[str, Any] = dict(hello["parameters"])
        self.models: list[str] = list(hello["models"])
        self.inputs = _Ports(self, [self.video_in, *self.parameters])
        self.outputs = _Ports(self, [self.video_out])

    def _ask(self, header: dict[str, Any], buffers: Sequence[Any] = ()) -> tuple[dict[str, Any], list[bytearray]]:
        answer, received = self._channel.request(header, list(buffers))
        error = answer.get("error")
        if error == "timeout":
            raise TimeoutError(answer.get("message", "timed out"))
        if error == "model":
            raise ModelError(answer.get("message", "the model failed"))
        if error:
            raise RuntimeError(f"panoramasdk: {answer.get('message', error)}")
        return answer, received

    # -- frames ------------------------------------------------------------------------------
    def get(self, port_name: str, timeout: float | None) -> Any:
        if port_name != self.video_in:
            return self.parameters[port_name]
        answer, pixels = self._ask({"op": "get", "timeout": timeout})
        streams = []
        for stream, buffer in zip(answer["streams"], pixels):  # noqa: B905 - the app's Python may be older than 3.10
            image = np.frombuffer(buffer, np.uint8).reshape(stream["shape"])  # over a bytearray: writable
            streams.append(
                media(
                    image,
                    stream["camera"],
                    stream["uri"],
                    int(stream["capture_ns"]),
                    cached=bool(stream["cached"]),
                    stale=bool(stream.get("stale", False)),
                )
            )
        return streams

    def put(self, port_name: str, streams: Sequence[media]) -> None:
        described, buffers = [], []
        for stream in streams:
            if stream.is_cached and not stream._labels and not stream._rects:
                continue  # nothing new to show: the output keeps the frame it was last given
            image = np.ascontiguousarray(stream.image, dtype=np.uint8)
            described.append(
                {
                    "camera": stream.stream_id,
                    "shape": list(image.shape),
                    "labels": stream._labels[:256],
                    "rects": stream._rects[:1024],
                }
            )
            buffers.append(image)
        if described:
            self._ask({"op": "put", "port": port_name, "streams": described}, buffers)

    # -- models ------------------------------------------------------------------------------
    def call(self, name: str, feeds: Mapping[str, Any]) -> tuple[np.ndarray, ...]:
        arrays = {str(key): np.ascontiguousarray(value) for key, value in feeds.items()}
        inputs = [{"name": key, "dtype": str(a.dtype), "shape": list(a.shape)} for key, a in arrays.items()]
        answer, buffers = self._ask({"op": "call", "model": name, "inputs": inputs}, list(arrays.values()))
        return tuple(
            np.frombuffer(buffer, np.dtype(out["dtype"])).reshape(out["shape"])
            for out, buffer in zip(answer["outputs"], buffers)  # noqa: B905
        )

    def model_info(self, name: str) -> dict[str, Any]:
        answer, _ = self._ask({"op": "model_info", "model": name})
        return answer


_lock = threading.Lock()
_instance: _Runtime | None = None


def _runtime() -> _Runtime:
    global _instance
    with _lock:
        if _instance is None:
            _instance = _Runtime()
        return _instance


# The v0 API (``panoramasdk.base`` with interface/init/entry, ``panoramasdk.model()``), on this runtime.
import _panorama_v0  # noqa: E402 - after _runtime, which it is bound to

_panorama_v0.bind(_runtime)
from _panorama_v0 import base, batch, batch_set, input_array, model, output_array  # noqa: E402

__all__ += ["base", "batch", "batch_set", "input_array", "model", "output_array"]

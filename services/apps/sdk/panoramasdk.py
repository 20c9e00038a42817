"""``panoramasdk`` as AWS Panorama applications import it, served by EdgeSight's apps service.

An application process is started by ``services.apps.host`` with this folder on ``PYTHONPATH`` and
its app's name and site file in the environment. The module then does what the Panorama runtime did:

* ``node`` (subclassed without calling ``super().__init__()``, or made by ``panoramasdk.node()``)
  gets ``inputs`` and ``outputs`` in ``__new__``;
* ``inputs.video_in.get(timeout=None)`` returns one ``media`` per camera of the app, each holding
  the app's own BGR copy of the newest frame from shared memory, the camera's privacy masks applied
  (``is_cached`` when the camera had no new frame since the last get); frames the app was too slow
  for are skipped and counted;
* ``inputs.<port>.get()`` returns a parameter's typed value;
* ``outputs.video_out.put(streams)`` draws each media's labels and rectangles on its image and
  hands the JPEG to the apps service (what the HDMI port was);
* ``call(inputs, node_name)`` or ``call(node_name, inputs)`` runs a model node on EdgeSight's
  backends and returns its raw outputs as a tuple of numpy arrays. A model loads at its node's first
  call, checked against ``site.trusted_keys`` as the site file says then (followed while the app
  runs: a key taken out is reported for the models it signed, which run on until the app restarts);
  an installed package refused at load gives way to the newest installed version that verifies.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import zmq

from common.audit import AuditTrail
from common.bus import security
from common.bus.endpoint import Endpoint
from common.config import AppConfig, SiteConfig, load_config
from common.errors import EdgeSightError, ShmError, StaleFrameError
from common.models import Backend, open_backend
from common.privacy import apply_privacy_masks
from common.shm import FrameReaders
from common.trust import TrustWatch, load_installed, open_model
from common.urls import redact_url
from contracts import ContractError, FrameRef, decode, parse_topic, topic

__all__ = ["media", "node", "port"]

APP_VARIABLE = "EDGESIGHT_APP"
SITE_VARIABLE = "EDGESIGHT_SITE"
CHANNEL_VARIABLE = "EDGESIGHT_APPS_CHANNEL"
STATS_INTERVAL_S = 1.0
TRUST_POLL_S = 1.0  # how often a call looks at the site file and key files (a few stat calls)
LABEL_COLOR = (255, 255, 255)
RECT_COLOR = (0, 200, 0)


class media:
    """One camera's frame: ``image`` is the app's own writable BGR copy."""

    def __init__(self, image: npt.NDArray[np.uint8], stream_id: str, stream_uri: str, capture_ns: int, cached: bool):
        self.image = image
        self.stream_id = stream_id
        self.stream_uri = stream_uri
        self.time_stamp = (capture_ns // 1_000_000_000, capture_ns // 1000 % 1_000_000)
        self.is_cached = cached
        self._labels: list[tuple[str, float, float]] = []
        self._rects: list[tuple[float, float, float, float]] = []

    def add_label(self, text: str, x1: float, y1: float) -> None:
        """Text at (x1, y1), fractions of the frame: drawn on the output, not on ``image``."""
        self._labels.append((str(text), _fraction(x1), _fraction(y1)))

    def add_rect(self, x1: float, y1: float, x2: float, y2: float) -> None:
        """A rectangle in fractions of the frame: drawn on the output, not on ``image``."""
        self._rects.append((_fraction(x1), _fraction(y1), _fraction(x2), _fraction(y2)))

    def _rendered(self) -> npt.NDArray[np.uint8]:
        picture = np.ascontiguousarray(self.image)
        if picture is self.image:
            picture = picture.copy()
        height, width = picture.shape[:2]
        thickness = max(1, round(min(width, height) / 240))
        for x1, y1, x2, y2 in self._rects:
            corner_a = (round(x1 * width), round(y1 * height))
            corner_b = (round(x2 * width), round(y2 * height))
            cv2.rectangle(picture, corner_a, corner_b, RECT_COLOR, thickness)
        for text, x, y in self._labels:  # white on a dark outline: readable on any background
            origin = (round(x * width), max(12, round(y * height)))
            scale = 0.5 * thickness
            cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
            cv2.putText(picture, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, LABEL_COLOR, thickness, cv2.LINE_AA)
        return picture


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

    def call(self, *args: Any, **kwargs: Any) -> tuple[npt.NDArray[Any], ...]:
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


class _Runtime:
    """The app process's link to EdgeSight: newest FrameRefs from the bus, pixels from shared memory,
    models, and a channel to the apps service for output frames and liveness."""

    def __init__(self) -> None:
        self.app_name = os.environ[APP_VARIABLE]
        self.config: SiteConfig = load_config(os.environ[SITE_VARIABLE])
        self.app: AppConfig = self.config.apps[self.app_name]
        self.cameras = list(self.app.cameras)
        self.inputs = _Ports(self, [self.app.video_in, *self.app.parameters])
        self.outputs = _Ports(self, [self.app.video_out])
        self._condition = threading.Condition()
        self._newest: dict[str, FrameRef] = {}
        self._taken: dict[str, int] = {}  # camera -> seq of the frame last handed to the app
        self._last: dict[str, media] = {}
        self._readers = FrameReaders(self.config.site.shm_dir)
        self._models: dict[str, Backend] = {}
        self._signers: dict[str, str | None] = {}  # model node -> its package's signer (None: a plain file)
        self._trust: TrustWatch | None = None
        self._trust_polled = 0.0
        self._audit = AuditTrail(self.config.site.state_dir, self.config.site.name, f"apps:{self.app_name}")
        self.frames = 0
        self.skipped = 0
        self.last_get = time.monotonic()
        self.waiting = False  # inside get(): blocked on the cameras, not on the app
        self._context: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._channel = self._context.socket(zmq.PUSH)
        self._channel.setsockopt(zmq.SNDHWM, 16)
        self._channel.setsockopt(zmq.LINGER, 0)
        self._channel.connect(os.environ[CHANNEL_VARIABLE])
        self._channel_lock = threading.Lock()
        threading.Thread(target=self._receive_frames, name="edgesight-frames", daemon=True).start()
        threading.Thread(target=self._report, name="edgesight-stats", daemon=True).start()

    # -- frames in ---------------------------------------------------------------------------
    def _receive_frames(self) -> None:
        security.configure_curve(self.config.bus.curve, "apps")  # the app process speaks as the apps service
        sockets = [Endpoint.parse(spec).open(self._context, rcvhwm=100) for spec in self.config.bus.subscribe]
        poller = zmq.Poller()
        for sock in sockets:
            for camera in self.cameras:
                sock.setsockopt(zmq.SUBSCRIBE, topic("frames", camera))
            poller.register(sock, zmq.POLLIN)
        while True:
            for sock, _ in poller.poll():
                frames = sock.recv_multipart()
                try:
                    _, camera = parse_topic(frames[0])
                    ref = decode(frames[1], FrameRef)
                except (ValueError, IndexError, ContractError):
                    continue
                with self._condition:
                    previous = self._newest.get(camera)
                    if previous is not None and self._taken.get(camera) != previous.seq:
                        self.skipped += 1  # newest wins: the app was busy with an older frame
                    self._newest[camera] = ref
                    self._condition.notify_all()

    def _fresh(self) -> list[str]:
        return [c for c in self.cameras if c in self._newest and self._taken.get(c) != self._newest[c].seq]

    def get(self, port_name: str, timeout: float | None) -> Any:
        if port_name != self.app.video_in:
            parameter = self.app.parameters[port_name]
            return _typed(parameter.type, parameter.value)
        self.last_get = time.monotonic()
        self.waiting = True
        try:
            with self._condition:
                if not self._condition.wait_for(lambda: bool(self._fresh()), timeout):
                    raise TimeoutError(f"no new frame from {self.cameras} within {timeout} s")
                refs = {camera: self._newest[camera] for camera in self._fresh()}
                for camera, taken in refs.items():
                    self._taken[camera] = taken.seq
        finally:
            self.waiting = False
            self.last_get = time.monotonic()
        streams = []
        for camera in self.cameras:
            fresh = refs.get(camera)
            picture = self._copy(fresh) if fresh is not None else None
            if picture is not None and fresh is not None:
                self._last[camera] = media(picture, camera, self._uri(camera), fresh.capture_ns, cached=False)
                self.frames += 1
                streams.append(self._last[camera])
            elif camera in self._last:  # no new frame: the last one again, as Panorama does
                last = self._last[camera]
                cached_ns = last.time_stamp[0] * 1_000_000_000 + last.time_stamp[1] * 1000
                streams.append(media(last.image.copy(), camera, last.stream_uri, cached_ns, cached=True))
        return streams

    def _copy(self, ref: FrameRef) -> npt.NDArray[np.uint8] | None:
        """The app's own BGR copy, privacy masks applied: an app (and so its video_out) never holds the area."""
        try:
            pixels = self._readers.copy(ref, "bgr")
        except (StaleFrameError, ShmError):
            self.skipped += 1
            return None
        camera = self.config.cameras.get(ref.camera)
        return apply_privacy_masks(pixels, camera.privacy_masks if camera is not None else ())

    def _uri(self, camera: str) -> str:
        """The camera's URL as Panorama's ``stream_uri``: never its password or query tokens."""
        return redact_url(self.config.cameras[camera].url)

    # -- frames out --------------------------------------------------------------------------
    def put(self, port_name: str, streams: Sequence[media]) -> None:
        for stream in streams:
            if stream.is_cached and not stream._labels and not stream._rects:
                continue  # nothing new to show: the output keeps the frame it was last given
            ok, encoded = cv2.imencode(".jpg", stream._rendered(), [cv2.IMWRITE_JPEG_QUALITY, 80])
            if ok:
                message = [b"video", self.app_name.encode(), stream.stream_id.encode(), encoded.tobytes()]
                self._send(message)

    def _send(self, message: list[bytes]) -> None:
        with self._channel_lock:
            try:
                self._channel.send_multipart(message, flags=zmq.NOBLOCK)
            except zmq.Again:
                pass  # the service is busy or restarting: a later frame replaces this one

    def _report(self) -> None:
        while True:
            stats = {
                "frames": self.frames,
                "skipped": self.skipped,
                "busy_s": 0.0 if self.waiting else round(time.monotonic() - self.last_get, 3),
                "pid": os.getpid(),
            }
            self._send([b"stats", self.app_name.encode(), json.dumps(stats).encode()])
            time.sleep(STATS_INTERVAL_S)

    # -- models ------------------------------------------------------------------------------
    def call(self, name: str, feeds: Mapping[str, Any]) -> tuple[npt.NDArray[Any], ...]:
        trust = self._trusted()
        backend = self._models.get(name)
        if backend is None:
            model = self.app.models.get(name)
            if model is None:
                raise EdgeSightError(
                    f"model node {name!r} is not in apps.{self.app_name}.models ({sorted(self.app.models)})"
                )
            what = f"apps.{self.app_name}.models.{name}"
            site = self.config.site

            def load(reference: str) -> tuple[Backend, str | None]:
                file, signer = open_model(reference, site, trust.policy, allow_unsigned=model.allow_unsigned, what=what)
                return open_backend(file, model.backend, model.providers), signer

            (backend, signer), fallback = load_installed(model.path, site, load)
            if fallback is not None:
                _say(f"{what}: the current package is refused; running version {fallback.version}: {fallback.error}")
                self._record(
                    "model.fallback",
                    what,
                    version=fallback.version,
                    refused=fallback.refused.name,
                    error=fallback.error,
                )
            self._models[name], self._signers[name] = backend, signer
        arrays = {key: np.asarray(value) for key, value in feeds.items()}
        return tuple(backend.run_named(arrays))

    def _trusted(self) -> TrustWatch:
        """The site's keys as the site file says now; a model whose signer was taken out is reported."""
        now = time.monotonic()
        if self._trust is None:
            self._trust = TrustWatch(self.config)
            self._trust.refresh(force=True)  # the site file as it is now, not as it was when the app started
            self._trust_polled = now
        elif now - self._trust_polled >= TRUST_POLL_S:
            self._trust_polled = now
            if not self._trust.refresh():
                return self._trust
            policy = self._trust.policy
            for node, signer in self._signers.items():
                what = f"apps.{self.app_name}.models.{node}"
                if signer is None and policy.enforcing and not self.app.models[node].allow_unsigned:
                    error = f"{what}: a plain model file, and site.trusted_keys is now set"
                elif signer is not None and signer not in policy.trusted:
                    error = f"{what}: signed by key {signer}, which is no longer a trusted key"
                else:
                    continue
                _say(f"{error}; it runs until the app restarts, when it is refused")
                self._record("model.untrusted", what, error=error)
        return self._trust

    def _record(self, action: str, target: str, **detail: Any) -> None:
        try:
            self._audit.record(action, target, **detail)
        except OSError as exc:  # an audit trail that cannot be written is reported, never the app's end
            _say(f"cannot append to the audit trail {self._audit.path}: {exc}")


def _say(message: str) -> None:
    """To the app's output, which the apps service logs."""
    print(f"panoramasdk: {message}", file=sys.stderr, flush=True)


def _typed(kind: str, value: bool | int | float | str) -> Any:
    if kind == "float32":
        return float(np.float32(value))
    if kind == "int32":
        return int(value)
    if kind == "boolean":
        return bool(value)
    return str(value)


_lock = threading.Lock()
_instance: _Runtime | None = None


def _runtime() -> _Runtime:
    global _instance
    with _lock:
        if _instance is None:
            _instance = _Runtime()
        return _instance

"""One camera: a decode thread feeding its shared-memory ring, and the watchdog around it.

States (published as CameraStatus and in ``edgesight_camera_state``):

    connecting --first frame--> streaming --no frame for stall_timeout--> stalled --> backoff
         |                          |--source error / live stream ended---------------> backoff
         +--open fails----------------------------------------------------------------> backoff
    backoff --exponential delay with jitter, at most max_backoff--> connecting
    a file that ends without ``loop`` --> stopped

The thread never touches the event loop's objects: it hands FrameRefs and state changes over
with ``call_soon_threadsafe``. Nothing one camera does can block or fail another.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.config import CameraConfig
from common.shm import FrameRingWriter
from contracts import CameraState, CameraStatus, FrameRef, Message
from services.ingest import metrics
from services.ingest.decode import DecodeSession, SourceError, StallError, StreamInfo
from services.ingest.gates import ConsumerGate, FrameRateGate, MotionDetector
from services.ingest.source import Source

__all__ = ["CameraWorker", "output_size"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
FPS_WINDOW_S = 5.0
STATES: tuple[CameraState, ...] = ("connecting", "streaming", "stalled", "backoff", "stopped")


def output_size(width: int, height: int, max_width: int | None, slot_width: int, slot_height: int) -> tuple[int, int]:
    """The frame size written to shared memory: at most ``max_width`` wide and fitting the ring's
    slots, aspect ratio kept, even numbers (what scalers and encoders downstream prefer)."""
    scale = min(1.0, slot_width / width, slot_height / height)
    if max_width:
        scale = min(scale, max_width / width)
    if scale >= 1.0:
        return width, height
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


_PLANAR_LUMA = ("yuv", "yuvj", "nv12", "nv21", "gray")


# 4:2:0 planar YUV -> the ring's format, by OpenCV's SIMD conversion straight into the slot
_FROM_I420 = {"bgr24": cv2.COLOR_YUV2BGR_I420, "rgb24": cv2.COLOR_YUV2RGB_I420}


def write_pixels(frame: Any, out: npt.NDArray[np.uint8], pixel_format: str) -> None:
    """The decoded frame in ``pixel_format`` at ``out``'s size, written once into ``out`` (a ring slot).

    A full-size 4:2:0 frame (what H.264/H.265 decoders give) is packed into one I420 buffer (1.5 bytes a
    pixel) and converted by OpenCV into the slot: no private BGR frame and no second copy. Same BT.601
    video-range coefficients as FFmpeg's scaler; values differ from its rounding by at most 2
    (tests/unit/test_ingest.py). Anything else (a resize, other formats) goes through FFmpeg's scaler.
    """
    height, width = out.shape[:2]
    code = _FROM_I420.get(pixel_format)
    if code is not None and frame.format.name == "yuv420p" and (frame.width, frame.height) == (width, height):
        cv2.cvtColor(frame.to_ndarray(), code, dst=out)
        return
    np.copyto(out, frame.to_ndarray(format=pixel_format, width=width, height=height))


def small_luma(frame: Any, height: int, width: int) -> npt.NDArray[np.uint8]:
    """A ``height``-row grey image of the frame for motion detection.

    Decoders hand out YUV, whose first plane already is the luma: every n-th pixel of it costs
    microseconds, where a scaled conversion of a 1080p frame costs about half a millisecond.
    """
    if frame.format.name.startswith(_PLANAR_LUMA):
        plane = frame.planes[0]
        luma = np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
        step_y, step_x = max(1, plane.height // height), max(1, plane.width // width)
        return luma[::step_y, ::step_x]
    return frame.reformat(width=width, height=height, format="gray").to_ndarray()  # type: ignore[no-any-return]


class CameraWorker:
    def __init__(
        self,
        name: str,
        config: CameraConfig,
        source: Source,
        ring: FrameRingWriter,
        *,
        instance: str,
        deliver: Callable[[Message], None],
        consumer: ConsumerGate | None = None,
    ) -> None:
        self.name = name
        self.consumer = consumer  # backpressure: set for a file read faster than real time that inference serves
        self.config = config
        self.source = source
        self.ring = ring
        self.instance = instance
        self._deliver = deliver  # called on the event loop
        self.state: CameraState = "connecting"
        self.since_ns = time.time_ns()
        self.error = ""
        self.reconnects = 0
        self.info: StreamInfo | None = None
        self.paused = False
        self._abort = threading.Event()
        self._stopping = False
        self._last_frame = 0.0  # monotonic; written by the decode thread
        self._published: collections.deque[float] = collections.deque(maxlen=1024)
        self._logged_error = ""
        self._fallback_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        for state in STATES:
            metrics.CAMERA_STATE.labels(name, state).set(0)
        metrics.CAMERA_STATE.labels(name, self.state).set(1)
        metrics.CAMERA_UP.labels(name).set(0)
        metrics.RECONNECTS.labels(name)  # at 0 from the start: a rate() or an alert finds the series

    # -- the watchdog (event loop) ---------------------------------------------------------------
    async def run(self) -> None:
        """Connect, stream, and reconnect with backoff until stopped; never raises (but cancels)."""
        self._loop = asyncio.get_running_loop()
        attempt = 0
        while not self._stopping:
            if attempt or self.reconnects:
                self.reconnects += 1
                metrics.RECONNECTS.labels(self.name).inc()
            self._set_state("connecting")
            try:
                finished = await self._session()
            except StallError as exc:
                if self.state == "streaming":
                    self._stalled()
                elif self.state != "stalled":  # the watchdog has said why already
                    self._failed(str(exc))
            except SourceError as exc:
                if self.state != "stalled":  # the watchdog has said why already
                    self._failed(str(exc))
            except Exception as exc:  # a bug must not take the other cameras down
                log.exception("camera session crashed", extra={"camera": self.name})
                self._failed(f"internal error: {type(exc).__name__}: {self.source.redact(str(exc))}")
            else:
                if self._stopping:
                    break
                if finished:
                    self._set_state("stopped")
                    log.info("file ended", extra={"camera": self.name, "source": str(self.source)})
                    return
                if self.state == "streaming":  # a live stream ended on its own
                    self._failed("the stream ended")
                elif self.state == "connecting":
                    self._failed("the source ended before its first frame")
            if self._last_frame and time.monotonic() - self._last_frame < 5:
                attempt = 0  # it was streaming a moment ago: retry fast
            delay = min(self.config.max_backoff_s, FIRST_BACKOFF_S * 2**attempt) * random.uniform(0.8, 1.2)
            attempt += 1
            if self.state != "backoff":
                self._set_state("backoff")
            await asyncio.sleep(delay)
        self._set_state("stopped")

    async def _session(self) -> bool:
        """One connection on its own thread, watched for stalls. True when a file ended."""
        # A fresh event per session: a thread abandoned in a stuck read keeps its own, set one.
        abort = self._abort = threading.Event()
        if self._stopping:
            abort.set()
        loop = asyncio.get_running_loop()
        done: asyncio.Future[bool] = loop.create_future()

        def settle(result: bool | None, error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(bool(result))

        def work() -> None:
            result, error = None, None
            try:
                result = self._stream(abort)
            except BaseException as exc:
                error = exc
            if not loop.is_closed():
                loop.call_soon_threadsafe(settle, result, error)

        # A daemon thread rather than an executor: a read stuck inside FFmpeg must not hold up exit.
        self._thread = threading.Thread(target=work, name=f"camera-{self.name}", daemon=True)
        self._last_frame = 0.0
        opened = time.monotonic()
        self._thread.start()
        try:
            while not done.done():
                await asyncio.wait([done], timeout=0.25)
                started = self._last_frame or opened
                if self.state == "streaming" and time.monotonic() - started > self.config.stall_timeout_s:
                    self._stalled()
                    abort.set()
                    # The read timeout (stall_timeout) ends a blocked read; do not wait longer than that.
                    await asyncio.wait([done], timeout=self.config.stall_timeout_s + 1)
                    if not done.done():
                        raise SourceError(f"stalled: {self.error}; the reader thread is abandoned")
        except asyncio.CancelledError:
            abort.set()
            raise
        return await done

    def _stalled(self) -> None:
        self.error = f"no frame for {self.config.stall_timeout_s:g} s"
        self._set_state("stalled")
        log.warning("camera stalled", extra={"camera": self.name, "error": self.error})

    def _failed(self, error: str) -> None:
        self.error = error
        metrics.CAMERA_UP.labels(self.name).set(0)
        if error != self._logged_error:  # one line per new error, not one per retry
            log.warning("camera unavailable", extra={"camera": self.name, "error": error})
            self._logged_error = error

    def _set_state(self, state: CameraState) -> None:
        if state == self.state and state != "connecting":
            return
        metrics.CAMERA_STATE.labels(self.name, self.state).set(0)
        metrics.CAMERA_STATE.labels(self.name, state).set(1)
        metrics.CAMERA_UP.labels(self.name).set(1 if state == "streaming" else 0)
        if state != self.state:
            self.since_ns = time.time_ns()
        self.state = state
        if state == "streaming":
            self.error = ""
            self._logged_error = ""
        self._deliver(self.status())

    def status(self) -> CameraStatus:
        info = self.info
        return CameraStatus(
            camera=self.name,
            state=self.state,
            instance=self.instance,
            ts_ns=time.time_ns(),
            since_ns=self.since_ns,
            fps=self.fps(),
            reconnects=self.reconnects,
            error=self.error,
            codec=info.codec if info else "",
            decoder=info.decoder if info else "",
            width=info.width if info else 0,
            height=info.height if info else 0,
        )

    def fps(self) -> float:
        now = time.monotonic()
        while self._published and now - self._published[0] > FPS_WINDOW_S:
            self._published.popleft()
        if len(self._published) < 2 or now - self._published[-1] > 2.0:
            return 0.0
        return (len(self._published) - 1) / (self._published[-1] - self._published[0])

    def stop(self) -> None:
        self._stopping = True
        self._abort.set()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    # -- the decode thread -----------------------------------------------------------------------
    def _stream(self, abort: threading.Event) -> bool:
        config = self.config
        with DecodeSession(
            self.source,
            timeout_s=config.stall_timeout_s,
            decoder=config.decoder,
            loop=config.loop,
            realtime=config.realtime,
            abort=abort,
            camera=self.name,
        ) as session:
            self.info = info = session.open()
            if info.fallback and not self._fallback_logged:
                self._fallback_logged = True
                log.warning(
                    "hardware decoder unavailable, decoding in software",
                    extra={"camera": self.name, "decoder": info.decoder, "error": info.fallback},
                )
            slot_width, slot_height = config.max_frame_width, config.max_frame_height
            width, height = output_size(info.width, info.height, config.max_width, slot_width, slot_height)
            motion_height = min(config.motion.frame_height, height)
            motion_width = max(2, round(motion_height * width / height))
            detector = MotionDetector(config.motion.threshold, config.motion.min_area)
            gate = FrameRateGate(config.fps)
            # Files read faster than real time are rate-limited on their own timestamps.
            use_stream_time = not self.source.is_live and not config.realtime
            stream_time = float("-inf")
            decode_seconds = metrics.DECODE_SECONDS.labels(self.name)
            convert_seconds = metrics.CONVERT_SECONDS.labels(self.name)
            # label lookups once per session, not per frame (most frames of a fast camera are rate-limited)
            dropped_rate_limit = metrics.FRAMES_DROPPED.labels(self.name, "rate_limit")
            dropped_paused = metrics.FRAMES_DROPPED.labels(self.name, "paused")
            consumer = self.consumer  # set only for a file read faster than real time
            if consumer is not None:
                consumer.clear()
                consumer_wait = metrics.CONSUMER_WAIT.labels(self.name)
                consumer_timeouts = metrics.CONSUMER_TIMEOUTS.labels(self.name)
            first = True
            for frame, spent in session.frames():
                decode_seconds.observe(spent)
                now = time.monotonic()
                self._last_frame = now
                if first:
                    first = False
                    self._call(self._streaming, width, height)
                if frame.width != info.width or frame.height != info.height:  # the camera changed resolution
                    width, height = output_size(frame.width, frame.height, config.max_width, slot_width, slot_height)
                    motion_width = max(2, round(motion_height * width / height))
                    detector.reset()
                if use_stream_time and (frame.time is None or frame.time <= stream_time):
                    use_stream_time = False  # timestamps missing or not increasing: pace by the clock
                    gate.reset()
                stream_time = frame.time if use_stream_time else now
                if not gate.admit(stream_time):
                    dropped_rate_limit.inc()
                    continue
                if self.paused:
                    dropped_paused.inc()
                    continue
                if consumer is not None:  # decoded ahead; written once inference has room for it
                    waiting = time.perf_counter()
                    consumer_timeouts.inc(consumer.wait(abort))
                    consumer_wait.inc(time.perf_counter() - waiting)
                    self._last_frame = time.monotonic()  # waiting for inference is not a stalled camera
                if abort.is_set():
                    break
                started = time.perf_counter()
                motion, box = 1.0, None
                if config.motion.enabled:
                    motion, box = detector.update(small_luma(frame, motion_height, motion_width))
                with self.ring.fill(
                    width, height, config.pixel_format, motion=min(1.0, motion), motion_box=box
                ) as slot:
                    write_pixels(frame, slot.array, config.pixel_format)
                convert_seconds.observe(time.perf_counter() - started)
                assert slot.ref is not None
                if consumer is not None:
                    consumer.sent(slot.ref.seq)
                self._call(self._publish, slot.ref)
            return not self.source.is_live and not abort.is_set()

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(function, *args)

    def _streaming(self, width: int, height: int) -> None:
        info = self.info
        if info is not None:
            log.info(
                "camera streaming",
                extra={
                    "camera": self.name,
                    "source": str(self.source),
                    "codec": info.codec,
                    "decoder": info.decoder,
                    "size": f"{info.width}x{info.height}",
                    "output": f"{width}x{height}",
                },
            )
        self._set_state("streaming")

    def _publish(self, ref: FrameRef) -> None:
        self._published.append(time.monotonic())
        metrics.FRAMES_PUBLISHED.labels(self.name).inc()
        self._deliver(ref)

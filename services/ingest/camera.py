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
import dataclasses
import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any

from common.config import CameraConfig
from common.shm import FrameRingWriter
from contracts import CameraState, CameraStatus, FrameRef, Message
from services.ingest import metrics
from services.ingest.decode import DecodeSession, SourceError, StallError, StreamInfo
from services.ingest.gates import ConsumerGate, SourceRateGate
from services.ingest.motion import MotionDetector, luma_width, small_luma
from services.ingest.pixels import PixelWriter, output_size
from services.ingest.source import Source

__all__ = ["CameraWorker"]

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5
FPS_WINDOW_S = 5.0
STATES: tuple[CameraState, ...] = ("connecting", "streaming", "stalled", "backoff", "stopped")


@dataclasses.dataclass(frozen=True)
class _Sizes:
    """A source size's frames as written to the ring, and the grey image their motion is scored on."""

    width: int
    height: int
    motion_width: int
    motion_height: int

    @classmethod
    def of(cls, config: CameraConfig, width: int, height: int, rows: int | None = None) -> _Sizes:
        """For a ``width`` x ``height`` source; ``rows``: the motion image's, kept from the first size when
        the camera changes resolution."""
        out_width, out_height = output_size(
            width, height, config.max_width, config.max_frame_width, config.max_frame_height
        )
        rows = min(config.motion.frame_height, out_height) if rows is None else rows
        return cls(out_width, out_height, luma_width(rows, out_width, out_height), rows)


class _Meters:
    """A camera's per-frame metric series, looked up once per session rather than per frame (most frames
    of a fast camera are rate-limited); the backpressure ones only for a camera that has it."""

    def __init__(self, camera: str, *, paced: bool) -> None:
        self.decode_seconds = metrics.DECODE_SECONDS.labels(camera)
        self.convert_seconds = metrics.CONVERT_SECONDS.labels(camera)
        self.dropped_rate_limit = metrics.FRAMES_DROPPED.labels(camera, "rate_limit")
        self.dropped_paused = metrics.FRAMES_DROPPED.labels(camera, "paused")
        self.consumer_wait = metrics.CONSUMER_WAIT.labels(camera) if paced else None
        self.consumer_timeouts = metrics.CONSUMER_TIMEOUTS.labels(camera) if paced else None


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
        # calls from the decode thread waiting for the event loop, in order, and whether it has been woken for them
        self._handover: collections.deque[tuple[Callable[..., None], tuple[Any, ...]]] = collections.deque()
        self._handover_scheduled = False
        self._thread: threading.Thread | None = None
        self._frames_published = metrics.FRAMES_PUBLISHED.labels(name)
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
        """One connection, decoded until it ends or ``abort``; True when a file ended."""
        config = self.config
        with (
            DecodeSession(
                self.source,
                timeout_s=config.stall_timeout_s,
                decoder=config.decoder,
                loop=config.loop,
                realtime=config.realtime,
                abort=abort,
                camera=self.name,
            ) as session,
            PixelWriter(config.pixel_format) as pixels,
        ):
            info = self._open(session)
            source_size = (info.width, info.height)
            sizes = _Sizes.of(config, info.width, info.height)
            motion = MotionDetector(config.motion.threshold, config.motion.min_area)
            # Files read faster than real time are rate-limited on their own timestamps.
            rate = SourceRateGate(config.fps, stream_time=not self.source.is_live and not config.realtime)
            meters = _Meters(self.name, paced=self.consumer is not None)
            if self.consumer is not None:
                self.consumer.clear()
            first = True
            for frame, spent in session.frames():
                meters.decode_seconds.observe(spent)
                now = time.monotonic()
                self._last_frame = now
                if first:
                    first = False
                    self._call(self._streaming, sizes.width, sizes.height)
                if (frame.width, frame.height) != source_size:  # the camera changed resolution
                    source_size = (frame.width, frame.height)
                    sizes = _Sizes.of(config, frame.width, frame.height, sizes.motion_height)
                    motion.reset()
                if not self._admit(frame.time, now, rate, meters):
                    continue
                if self.consumer is not None:  # decoded ahead; written once inference has room for it
                    self._wait_for_room(self.consumer, abort, meters)
                if abort.is_set():
                    break
                self._write(frame, sizes, motion, pixels, meters)
            return not self.source.is_live and not abort.is_set()

    def _open(self, session: DecodeSession) -> StreamInfo:
        self.info = info = session.open()
        if info.fallback and not self._fallback_logged:
            self._fallback_logged = True
            log.warning(
                "hardware decoder unavailable, decoding in software",
                extra={"camera": self.name, "decoder": info.decoder, "error": info.fallback},
            )
        return info

    def _admit(self, frame_time: float | None, now: float, rate: SourceRateGate, meters: _Meters) -> bool:
        """Whether a decoded frame is published: within the camera's rate, and the camera not paused."""
        if not rate.admit(frame_time, now):
            meters.dropped_rate_limit.inc()
            return False
        if self.paused:
            meters.dropped_paused.inc()
            return False
        return True

    def _wait_for_room(self, consumer: ConsumerGate, abort: threading.Event, meters: _Meters) -> None:
        assert meters.consumer_wait is not None and meters.consumer_timeouts is not None
        waiting = time.perf_counter()
        meters.consumer_timeouts.inc(consumer.wait(abort))
        meters.consumer_wait.inc(time.perf_counter() - waiting)
        self._last_frame = time.monotonic()  # waiting for inference is not a stalled camera

    def _write(self, frame: Any, sizes: _Sizes, motion: MotionDetector, pixels: PixelWriter, meters: _Meters) -> None:
        """The frame's motion scored, its pixels written once into the ring, its FrameRef handed to the loop."""
        config = self.config
        started = time.perf_counter()
        score, box = 1.0, None
        if config.motion.enabled:
            score, box = motion.update(small_luma(frame, sizes.motion_height, sizes.motion_width))
        with self.ring.fill(
            sizes.width, sizes.height, config.pixel_format, motion=min(1.0, score), motion_box=box
        ) as slot:
            pixels.write(frame, slot.array)
        meters.convert_seconds.observe(time.perf_counter() - started)
        assert slot.ref is not None
        if self.consumer is not None:
            self.consumer.sent(slot.ref.seq)
        self._call(self._publish, slot.ref)

    def _call(self, function: Callable[..., None], *args: Any) -> None:
        """``function(*args)`` on the event loop, after every call made before it. The loop is woken once for
        all the calls queued until it gets round to them, not once per frame (a wake-up is a write to its
        self-pipe and a turn of the loop, on a core the decoders want)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        self._handover.append((function, args))
        if not self._handover_scheduled:
            self._handover_scheduled = True
            loop.call_soon_threadsafe(self._run_handed_over)

    def _run_handed_over(self) -> None:
        # Cleared before draining: a call queued meanwhile is either drained here or wakes the loop again.
        self._handover_scheduled = False
        while self._handover:
            function, args = self._handover.popleft()
            function(*args)

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
        self._frames_published.inc()
        self._deliver(ref)

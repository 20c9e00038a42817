"""One connection to a source: open it with PyAV, pick a decoder, yield decoded frames.

Everything here blocks and runs on the camera's own thread, never on the event loop.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import av
import av.error

from common.errors import EdgeSightError
from services.ingest.source import Source, hardware_decoders

__all__ = ["DecodeSession", "SourceError", "StallError", "StreamInfo"]

log = logging.getLogger(__name__)

# A few undecodable packets are normal on lossy networks; this many in a row means the stream is broken.
MAX_CONSECUTIVE_DECODE_ERRORS = 50


def describe(error: BaseException) -> str:
    """FFmpeg errors as a short reason: ``Server returned 404 Not Found``, not the errno and URL."""
    if isinstance(error, av.error.FFmpegError) and error.strerror:
        return str(error.strerror)
    return str(error)


class SourceError(EdgeSightError):
    """The source cannot be opened or read; the message is safe to log (credentials removed)."""


class StallError(SourceError):
    """Nothing arrived from an open source for the read timeout."""


@dataclasses.dataclass(frozen=True)
class StreamInfo:
    codec: str
    decoder: str
    width: int
    height: int
    rate: float | None  # the stream's nominal frames per second, when it says
    fallback: str | None = None  # why a requested hardware decoder is not in use


class DecodeSession:
    """Decodes one connection's frames; ``abort`` (set from another thread) ends it between packets."""

    def __init__(
        self,
        source: Source,
        *,
        timeout_s: float,
        decoder: str | None = None,
        loop: bool = False,
        realtime: bool = False,
        abort: threading.Event | None = None,
        camera: str = "-",
    ) -> None:
        self.source = source
        self.camera = camera  # for log lines
        self.timeout_s = timeout_s
        self.requested_decoder = decoder
        self.loop = loop and not source.is_live
        self.realtime = realtime and not source.is_live
        self.abort = abort or threading.Event()
        self.decode_errors = 0
        self._container: Any = None
        self._stream: Any = None
        self._codec: Any = None
        self._seekable = True  # until FFmpeg refuses a seek(0) of a looping file

    def open(self) -> StreamInfo:
        self._open_container()
        self._codec, fallback = self._open_decoder()
        context = self._stream.codec_context
        rate = self._stream.average_rate or self._stream.guessed_rate
        return StreamInfo(
            codec=context.name,
            decoder=self._codec.name,
            width=context.width,
            height=context.height,
            rate=float(rate) if rate else None,
            fallback=fallback,
        )

    def _open_container(self) -> None:
        try:
            # Reads get a second more than the watchdog's stall timeout: it notices first and says so.
            arguments = self.source.open_arguments(self.timeout_s, self.timeout_s + 1)
            self._container = av.open(self.source.url, **arguments)
        except av.error.ExitError:  # PyAV's open timeout interrupted FFmpeg
            raise SourceError(f"cannot open {self.source}: no answer within {self.timeout_s:g} s") from None
        except (av.error.FFmpegError, OSError) as exc:
            hint = ""
            if self.source.kind == "file" and isinstance(exc, av.error.InvalidDataError):
                hint = " (the file is truncated, corrupted or not a video)"
            raise SourceError(f"cannot open {self.source}: {self.source.redact(describe(exc))}{hint}") from None
        if not self._container.streams.video:
            self.close()
            raise SourceError(f"{self.source} has no video stream")
        self._stream = self._container.streams.video[0]

    def _open_decoder(self) -> tuple[Any, str | None]:
        software = self._stream.codec_context
        wanted = [self.requested_decoder] if self.requested_decoder else hardware_decoders(software.name)
        failures = []
        for name in wanted:
            if name == software.name:
                break
            try:
                codec = av.CodecContext.create(name, "r")
                codec.extradata = software.extradata
                codec.open()
                return codec, None
            except (av.error.FFmpegError, ValueError) as exc:
                failures.append(f"{name}: {exc}")
        return self._software(), "; ".join(failures) or None

    def _software(self) -> Any:
        """The stream's own decoder, with frame + slice threads: what a bare `ffmpeg -i` does."""
        self._stream.codec_context.thread_type = "AUTO"
        return self._stream.codec_context

    def frames(self) -> Iterator[tuple[Any, float]]:
        """``(frame, decode seconds)`` until the source ends (files without ``loop``) or ``abort``."""
        anchor: tuple[float, float] | None = None  # (stream time, monotonic) for realtime pacing
        rewound_by = ""  # how this pass started: "" (opened), "seek" or "reopen"
        while True:
            yielded = False
            for packet in self._demux():
                if self.abort.is_set():
                    return
                started = time.perf_counter()
                try:
                    decoded = self._codec.decode(packet)
                except av.error.InvalidDataError as exc:
                    self.decode_errors += 1
                    if self.decode_errors >= MAX_CONSECUTIVE_DECODE_ERRORS:
                        reason = describe(exc)
                        raise SourceError(f"{self.decode_errors} undecodable packets in a row: {reason}") from None
                    continue
                spent = time.perf_counter() - started
                if decoded:
                    self.decode_errors = 0
                for frame in decoded:
                    if self.realtime and frame.time is not None:
                        anchor = self._pace(frame.time, anchor)
                    yield frame, spent
                    spent = 0.0
                    yielded = True
            if not self.loop or self.abort.is_set():
                return
            if not yielded and rewound_by == "seek":
                self._cannot_seek("nothing to read after seeking to the start")
            elif not yielded and rewound_by == "reopen":
                raise SourceError(f"{self.source} has no decodable frame to loop over")
            rewound_by = self._rewind()
            anchor = None

    def _rewind(self) -> str:
        """Back to the file's start: a seek, or reopening it where FFmpeg cannot seek (a raw H.264/H.265
        stream, some streamed layouts): the decoder keeps going, so no backoff and no reconnect."""
        if self._seekable:
            try:
                self._container.seek(0)
                self._codec.flush_buffers()
                return "seek"
            except av.error.FFmpegError as exc:
                self._cannot_seek(describe(exc))
        software = self._stream.codec_context
        self.close()
        self._open_container()
        if self._codec is software:  # it belonged to the closed container's stream
            self._codec = self._software()
        else:  # a hardware decoder of our own: keep it open
            self._codec.flush_buffers()
        return "reopen"

    def _cannot_seek(self, reason: str) -> None:
        # once per session, not once per loop: the file will refuse every later seek the same way
        self._seekable = False
        log.info(
            "cannot seek in the file: looping by reopening it",
            extra={"camera": self.camera, "source": str(self.source), "error": reason},
        )

    def _demux(self) -> Iterator[Any]:
        try:
            yield from self._container.demux(self._stream)
        except av.error.EOFError:
            return
        except av.error.ExitError:  # PyAV's read timeout interrupted FFmpeg
            raise StallError(f"no data from {self.source} for {self.timeout_s + 1:g} s") from None
        except (av.error.FFmpegError, OSError) as exc:
            raise SourceError(f"reading {self.source}: {self.source.redact(describe(exc))}") from None

    def _pace(self, stream_time: float, anchor: tuple[float, float] | None) -> tuple[float, float]:
        now = time.monotonic()
        if anchor is None:
            return stream_time, now
        delay = (stream_time - anchor[0]) - (now - anchor[1])
        if delay > 0:
            self.abort.wait(delay)
        elif delay < -1.0:
            return stream_time, now  # fell behind (e.g. a slow machine): start the clock again
        return anchor

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None

    def __enter__(self) -> DecodeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

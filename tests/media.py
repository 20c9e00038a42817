"""Test media made from the shared clip into temporary folders (never into shared/)."""

from __future__ import annotations

import fractions
import hashlib
from pathlib import Path

import av
import numpy as np

# one copy of it: the benchmarks make the same model (re-exported for the tests)
from benchmarks._backend_bench import dynamic_batch_copy as dynamic_batch_copy


def repeat_clip(source: Path, target: Path, times: int) -> None:
    """``source`` played ``times`` times in a row, remuxed: the same compressed frames, no re-encode."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        offset = 0
        for _ in range(times):
            inp.seek(0)
            end = offset
            for packet in inp.demux(stream):
                if packet.dts is None:  # the demuxer's end-of-stream marker
                    continue
                packet.pts += offset
                packet.dts += offset
                end = max(end, packet.pts + (packet.duration or 0))
                packet.stream = copy
                out.mux(packet)
            offset = end


def elementary_stream(source: Path, target: Path, frames: int) -> None:
    """The first ``frames`` packets of ``source`` as a raw H.264 elementary stream (``.h264``), remuxed.

    FFmpeg cannot seek in such a file (PyAV's ``seek(0)`` raises PermissionError): what a looping file
    camera must cope with."""
    with av.open(str(source)) as inp, av.open(str(target), "w", format="h264") as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for index, packet in enumerate(inp.demux(stream)):
            if packet.dts is None or index == frames:
                break
            packet.stream = copy
            out.mux(packet)


def frame_digests(path: Path, pixel_format: str = "bgr24") -> set[str]:
    """The digest of every decoded frame of ``path`` in ``pixel_format``, converted as ingest documents it
    (4:2:0 by OpenCV's I420 conversion; see services.ingest.pixels.PixelWriter), computed here on its own."""
    import cv2

    codes = {"bgr24": cv2.COLOR_YUV2BGR_I420, "rgb24": cv2.COLOR_YUV2RGB_I420}
    digests = set()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            if frame.format.name == "yuv420p" and pixel_format in codes:
                digests.add(digest(cv2.cvtColor(frame.to_ndarray(), codes[pixel_format])))
            else:
                digests.add(digest(frame.to_ndarray(format=pixel_format)))
    return digests


def digest(pixels: np.ndarray) -> str:  # type: ignore[type-arg]
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).hexdigest()


def encode_clip(source: Path, target: Path, codec: str, frames: int | None = None) -> None:
    """``source`` re-encoded with ``codec`` (e.g. ``libx265``), fast preset, 25 fps."""
    with av.open(str(source)) as inp, av.open(str(target), "w") as out:
        stream = out.add_stream(codec, rate=25)
        template = inp.streams.video[0].codec_context
        stream.width, stream.height, stream.pix_fmt = template.width, template.height, "yuv420p"
        stream.options = {"preset": "ultrafast", "x265-params": "log-level=error"} if codec == "libx265" else {}
        for index, frame in enumerate(inp.decode(video=0)):
            if frames is not None and index == frames:
                break
            picture = frame.reformat(format="yuv420p")
            picture.pts, picture.time_base = index, fractions.Fraction(1, 25)
            out.mux(stream.encode(picture))
        out.mux(stream.encode(None))


def segment_hls(source: Path, folder: Path) -> Path:
    """``source`` cut into an HLS playlist with 2 s segments, remuxed; returns the playlist."""
    playlist = folder / "index.m3u8"
    options = {"hls_time": "2", "hls_list_size": "0", "hls_playlist_type": "vod"}
    with av.open(str(source)) as inp, av.open(str(playlist), "w", format="hls", options=options) as out:
        stream = inp.streams.video[0]
        copy = out.add_stream_from_template(stream)
        for packet in inp.demux(stream):
            if packet.dts is None:
                continue
            packet.stream = copy
            out.mux(packet)
    return playlist


def frame_at(path: Path, index: int, pixel_format: str = "bgr24") -> np.ndarray:  # type: ignore[type-arg]
    """Frame ``index`` (0-based) of ``path``, decoded."""
    with av.open(str(path)) as container:
        for position, frame in enumerate(container.decode(video=0)):
            if position == index:
                return frame.to_ndarray(format=pixel_format)
    raise IndexError(f"{path} has no frame {index}")

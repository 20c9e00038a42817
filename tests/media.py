"""Test media made from the shared clip into temporary folders (never into shared/)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np


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


def frame_digests(path: Path, pixel_format: str = "bgr24") -> set[str]:
    """The digest of every decoded frame of ``path`` in ``pixel_format``."""
    with av.open(str(path)) as container:
        return {digest(frame.to_ndarray(format=pixel_format)) for frame in container.decode(video=0)}


def digest(pixels: np.ndarray) -> str:  # type: ignore[type-arg]
    return hashlib.blake2b(np.ascontiguousarray(pixels).tobytes(), digest_size=16).hexdigest()

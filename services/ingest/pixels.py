"""A decoded frame as the ring holds it: the size it is written at, and the one write of its pixels."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["output_size", "write_pixels"]

# 4:2:0 planar YUV -> the ring's format, by OpenCV's SIMD conversion straight into the slot
_FROM_I420 = {"bgr24": cv2.COLOR_YUV2BGR_I420, "rgb24": cv2.COLOR_YUV2RGB_I420}


def output_size(width: int, height: int, max_width: int | None, slot_width: int, slot_height: int) -> tuple[int, int]:
    """The frame size written to shared memory: at most ``max_width`` wide and fitting the ring's
    slots, aspect ratio kept, even numbers (what scalers and encoders downstream prefer).

    >>> output_size(1920, 1080, 640, 1920, 1080)
    (640, 360)
    """
    scale = min(1.0, slot_width / width, slot_height / height)
    if max_width:
        scale = min(scale, max_width / width)
    if scale >= 1.0:
        return width, height
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


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

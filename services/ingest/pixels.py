"""A decoded frame as the ring holds it: the size it is written at, and the one write of its pixels."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np
import numpy.typing as npt

__all__ = ["PixelWriter", "output_size"]

# 4:2:0 planar YUV -> the ring's format, by OpenCV's SIMD conversion straight into the slot
_FROM_I420 = {"bgr24": cv2.COLOR_YUV2BGR_I420, "rgb24": cv2.COLOR_YUV2RGB_I420}
# FFmpeg's numbers for them (AVPixelFormat, part of its ABI) and for its default scaler (SWS_BILINEAR)
_AV_YUV420P = 0
_AV_FORMATS = {"rgb24": 2, "bgr24": 3}
_SWS_BILINEAR = 2
_GUARD = 4096  # bytes around a trial conversion that must stay untouched


def _load_swscale() -> Any:
    """The libswscale that PyAV's wheel ships and its own scaler runs on (already loaded with it), or None."""
    package = Path(av.__file__).parent
    found = [*sorted((package.parent / "av.libs").glob("libswscale*")), *sorted(package.glob(".dylibs/libswscale*"))]
    if not found:
        return None
    try:
        library = ctypes.CDLL(str(found[0]))
        library.sws_getContext.restype = ctypes.c_void_p
        library.sws_getContext.argtypes = [ctypes.c_int] * 7 + [ctypes.c_void_p] * 3
        pointers, strides = ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_int)
        library.sws_scale.restype = ctypes.c_int
        library.sws_scale.argtypes = [ctypes.c_void_p, pointers, strides, ctypes.c_int, ctypes.c_int, pointers, strides]
        library.sws_freeContext.restype = None
        library.sws_freeContext.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError):  # not a libswscale we can call: OpenCV converts instead
        return None
    return library


_SWSCALE = _load_swscale()
# (width, height, pixel format) -> whether FFmpeg's scaler may write that size straight into a slot
_DIRECT_SIZES: dict[tuple[int, int, str], bool] = {}


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


class PixelWriter:
    """Writes one camera's decoded frames into ring slots in ``pixel_format``; one per decode session (it
    holds FFmpeg's scaler for the frame size it last wrote), closed with it.

    A full-size 4:2:0 frame (what H.264/H.265 decoders give) is converted by FFmpeg's own scaler straight
    into the slot, the colours bit for bit those of PyAV's ``to_ndarray``: no private frame and no copy.
    FFmpeg's scaler assumes padded rows, which a slot has not, so a frame size goes this way only once a
    trial conversion of that size has matched PyAV's bit for bit without writing a byte outside the image
    (in practice: widths that are multiples of 8). Other sizes are packed into one I420 buffer and
    converted by OpenCV into the slot (BT.601 as FFmpeg, values at most 2 apart by rounding); a resize or
    another format goes through PyAV's scaler. ``tests/unit/test_ingest_pixels.py`` holds all three to this.
    """

    def __init__(self, pixel_format: str) -> None:
        self.pixel_format = pixel_format
        self._context: int | None = None  # FFmpeg's SwsContext for ``_size``
        self._size = (0, 0)
        self._sources = (ctypes.c_void_p * 4)()
        self._source_strides = (ctypes.c_int * 4)()
        self._target = (ctypes.c_void_p * 4)()
        self._target_stride = (ctypes.c_int * 4)()

    def write(self, frame: Any, out: npt.NDArray[np.uint8]) -> None:
        """``frame`` in this writer's pixel format at ``out``'s size, written once into ``out`` (a slot)."""
        height, width = out.shape[:2]
        if frame.format.name != "yuv420p" or (frame.width, frame.height) != (width, height):
            np.copyto(out, frame.to_ndarray(format=self.pixel_format, width=width, height=height))
        elif out.flags.c_contiguous and out.ctypes.data % 16 == 0 and _direct(width, height, self.pixel_format):
            self._scale(frame, out)
        else:
            cv2.cvtColor(frame.to_ndarray(), _FROM_I420[self.pixel_format], dst=out)

    def _scale(self, frame: Any, out: npt.NDArray[np.uint8]) -> None:
        """FFmpeg's scaler from the decoder's planes straight into ``out`` (the same size)."""
        height, width = out.shape[:2]
        if self._size != (width, height):
            self.close()
            target = _AV_FORMATS[self.pixel_format]
            context = _SWSCALE.sws_getContext(
                width, height, _AV_YUV420P, width, height, target, _SWS_BILINEAR, None, None, None
            )
            if not context:
                raise MemoryError(f"FFmpeg could not make a {width}x{height} scaler")
            self._context, self._size = context, (width, height)
        for index, plane in enumerate(frame.planes):  # the frame is referenced: its planes live through the call
            self._sources[index] = plane.buffer_ptr
            self._source_strides[index] = plane.line_size
        self._target[0] = out.ctypes.data
        self._target_stride[0] = out.strides[0]
        # ctypes lets go of the GIL for the call: the other cameras' threads run meanwhile
        _SWSCALE.sws_scale(
            self._context, self._sources, self._source_strides, 0, height, self._target, self._target_stride
        )

    def close(self) -> None:
        if self._context is not None:
            _SWSCALE.sws_freeContext(self._context)
            self._context, self._size = None, (0, 0)

    def __enter__(self) -> PixelWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _direct(width: int, height: int, pixel_format: str) -> bool:
    """Whether FFmpeg's scaler converts a ``width`` x ``height`` 4:2:0 frame straight into an unpadded slot
    exactly as PyAV does, writing nothing outside it: tried once per size on a random frame."""
    key = (width, height, pixel_format)
    if key not in _DIRECT_SIZES:
        _DIRECT_SIZES[key] = (
            _SWSCALE is not None and pixel_format in _AV_FORMATS and _trial(width, height, pixel_format)
        )
    return _DIRECT_SIZES[key]


def _trial(width: int, height: int, pixel_format: str) -> bool:
    frame = av.VideoFrame(width, height, "yuv420p")
    random = np.random.default_rng(0)
    for plane in frame.planes:
        plane.update(random.bytes(plane.buffer_size))
    expected = frame.to_ndarray(format=pixel_format)
    # aligned to 16 bytes and no more, the least a slot is (slots start on 64 bytes)
    buffer = np.full(expected.nbytes + 2 * _GUARD + 64, 0xA5, np.uint8)
    start = -buffer.ctypes.data % 64 + _GUARD + 16
    image = buffer[start : start + expected.nbytes].reshape(expected.shape)
    with PixelWriter(pixel_format) as trial:
        trial._scale(frame, image)
    untouched = np.all(buffer[:start] == 0xA5) and np.all(buffer[start + expected.nbytes :] == 0xA5)
    return bool(untouched and np.array_equal(image, expected))

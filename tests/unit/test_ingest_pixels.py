"""Ingest's one write of a frame's pixels into its slot: FFmpeg's scaler straight into the slot where a trial
proved it exact and contained, OpenCV's I420 conversion for other sizes, PyAV's scaler for a resize."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import numpy as np
import numpy.typing as npt
import pytest

from services.ingest import pixels
from services.ingest.pixels import PixelWriter

GUARD = 4096


def frames(shared_dir: Path, every: int = 40) -> Iterator[Any]:
    with av.open(str(shared_dir / "media" / "people.mp4")) as container:  # 854x480: a width FFmpeg pads
        for index, frame in enumerate(container.decode(video=0)):
            if index % every == 0:
                yield frame


def slot_in_guards(height: int, width: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """(the whole buffer, a slot in its middle starting on 64 bytes as ring slots do), filled with 0xA5."""
    buffer = np.full(height * width * 3 + 2 * GUARD + 64, 0xA5, np.uint8)
    start = -buffer.ctypes.data % 64 + GUARD
    return buffer, buffer[start : start + height * width * 3].reshape(height, width, 3)


def untouched_outside(buffer: npt.NDArray[np.uint8], slot: npt.NDArray[np.uint8]) -> bool:
    start = slot.ctypes.data - buffer.ctypes.data
    return bool(np.all(buffer[:start] == 0xA5) and np.all(buffer[start + slot.nbytes :] == 0xA5))


@pytest.mark.parametrize("pixel_format", ["bgr24", "rgb24"])
def test_ffmpegs_scaler_writes_the_slot_bit_for_bit_and_nothing_around_it(
    shared_dir: Path, pixel_format: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_opencv(*args: object, **kwargs: object) -> None:
        raise AssertionError("OpenCV converted a frame FFmpeg's scaler should have")

    monkeypatch.setattr(pixels.cv2, "cvtColor", no_opencv)
    with PixelWriter(pixel_format) as writer:
        for source in frames(shared_dir):
            frame = source.reformat(width=640, height=360, format="yuv420p")  # FFmpeg's own planes, padded rows
            buffer, slot = slot_in_guards(360, 640)
            writer.write(frame, slot)
            assert np.array_equal(slot, frame.to_ndarray(format=pixel_format))
            assert untouched_outside(buffer, slot)


@pytest.mark.parametrize("pixel_format", ["bgr24", "rgb24"])
def test_other_sizes_are_converted_by_opencv_and_resizes_by_ffmpeg(shared_dir: Path, pixel_format: str) -> None:
    """854 wide: FFmpeg's scaler would need padded rows, so OpenCV converts; against FFmpeg's scaler on the
    same frames no value is more than 2 apart (rounding). A frame needing a resize goes through FFmpeg."""
    with PixelWriter(pixel_format) as writer:
        for frame in frames(shared_dir):
            reference = frame.to_ndarray(format=pixel_format).astype(np.int16)
            buffer, slot = slot_in_guards(frame.height, frame.width)
            writer.write(frame, slot)
            assert np.abs(slot.astype(np.int16) - reference).max() <= 2
            assert np.abs(slot.astype(np.int16) - reference).mean() < 1.0
            assert untouched_outside(buffer, slot)
            half = np.zeros((frame.height // 2, frame.width // 2, 3), np.uint8)
            writer.write(frame, half)
            expected = frame.to_ndarray(format=pixel_format, width=frame.width // 2, height=frame.height // 2)
            assert np.array_equal(half, expected)


def test_without_ffmpegs_scaler_library_opencv_converts_every_size(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pixels, "_SWSCALE", None)
    monkeypatch.setattr(pixels, "_DIRECT_SIZES", {})
    frame = next(frames(shared_dir)).reformat(width=640, height=360, format="yuv420p")
    slot = np.zeros((360, 640, 3), np.uint8)
    with PixelWriter("bgr24") as writer:
        writer.write(frame, slot)
    assert np.abs(slot.astype(np.int16) - frame.to_ndarray(format="bgr24")).max() <= 2
    assert pixels._DIRECT_SIZES == {(640, 360, "bgr24"): False}


def test_a_scaler_that_writes_past_the_image_is_not_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    exact = PixelWriter._scale

    def one_byte_too_far(self: PixelWriter, frame: Any, out: npt.NDArray[np.uint8]) -> None:
        exact(self, frame, out)  # the image itself is right, but the byte after it is written
        ctypes.c_uint8.from_address(out.ctypes.data + out.nbytes).value = 0

    monkeypatch.setattr(pixels, "_DIRECT_SIZES", {})
    assert pixels._direct(640, 360, "bgr24")  # the real scaler passes
    monkeypatch.setattr(pixels, "_DIRECT_SIZES", {})
    monkeypatch.setattr(PixelWriter, "_scale", one_byte_too_far)
    assert not pixels._direct(640, 360, "bgr24")

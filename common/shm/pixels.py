"""Pixel formats, in one place: a ring holds what its camera's ``pixel_format`` says (bgr24, rgb24, and
gray8/nv12 as the contract allows); every reader asks for the channel order it wants instead of
guessing (an rgb24 camera once reached the model and the snapshots with red and blue swapped).
"""

from __future__ import annotations

from typing import Literal

import cv2
import numpy as np
import numpy.typing as npt

from contracts import PixelFormat

__all__ = ["ChannelOrder", "channel_order", "colour_view", "convert"]

ChannelOrder = Literal["bgr", "rgb"]

_ORDER: dict[str, ChannelOrder] = {"bgr24": "bgr", "rgb24": "rgb"}
_CONVERSIONS: dict[tuple[str, ChannelOrder], int] = {
    ("bgr24", "rgb"): cv2.COLOR_BGR2RGB,
    ("rgb24", "bgr"): cv2.COLOR_RGB2BGR,
    ("gray8", "bgr"): cv2.COLOR_GRAY2BGR,
    ("gray8", "rgb"): cv2.COLOR_GRAY2RGB,
    ("nv12", "bgr"): cv2.COLOR_YUV2BGR_NV12,
    ("nv12", "rgb"): cv2.COLOR_YUV2RGB_NV12,
}


def channel_order(pixel_format: PixelFormat) -> ChannelOrder | None:
    """The channel order of a three-channel format; None where the pixels need converting (gray8, nv12)."""
    return _ORDER.get(pixel_format)


def convert(pixels: npt.NDArray[np.uint8], pixel_format: PixelFormat, order: ChannelOrder) -> npt.NDArray[np.uint8]:
    """A new, writable HxWx3 array in ``order`` from a frame as the ring holds it: one pass over the pixels."""
    code = _CONVERSIONS.get((pixel_format, order))
    if code is None:
        if channel_order(pixel_format) != order:
            raise ValueError(f"cannot convert {pixel_format} pixels to {order}")
        return np.array(pixels, copy=True, order="C")
    return cv2.cvtColor(pixels, code)  # type: ignore[return-value]  # OpenCV's stubs: any numeric array


def colour_view(pixels: npt.NDArray[np.uint8], pixel_format: PixelFormat) -> tuple[npt.NDArray[np.uint8], ChannelOrder]:
    """The frame as HxWx3 and its channel order, without a copy where the ring holds three channels.

    For a consumer that reorders later anyway: inference swaps channels after the letterbox has
    shrunk the frame, far cheaper than converting the whole frame first.
    """
    order = channel_order(pixel_format)
    if order is not None:
        return pixels, order
    return convert(pixels, pixel_format, "bgr"), "bgr"

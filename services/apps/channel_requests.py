"""What an app sends on its channel, checked and decoded; and its ``video_out``, drawn.

Everything here is the app's choice (shapes, types, sizes, labels): each is checked against a bound
before it costs the apps service memory or CPU, and a request that breaks one is answered with
``RequestError``'s message, the channel kept open.
"""

from __future__ import annotations

import asyncio
import math
import socket
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.draw import Colour, draw_box, draw_label, in_pixels
from common.privacy import apply_privacy_masks
from contracts.messages import MAX_APP_PICTURE_BYTES

__all__ = [
    "RequestError",
    "model_feeds",
    "output_picture",
    "render_output",
    "typed_parameter",
    "widen_send_buffer",
]

SEND_BUFFER = 32 << 20  # a 4K BGR frame in one send
MAX_MODEL_INPUTS = 32
MAX_LABELS, MAX_RECTS = 256, 1024
MAX_SIDE = 4096  # pixels of a video_out picture's side: 4K, what an HDMI port showed at most
DTYPES = frozenset({"float32", "float16", "float64", "int8", "uint8", "int16", "uint16", "int32", "int64", "bool"})
LABEL_COLOR: Colour = (255, 255, 255)  # BGR: white text on black, readable anywhere
LABEL_BACKGROUND: Colour = (0, 0, 0)
RECT_COLOR: Colour = (0, 200, 0)
JPEG_QUALITY = 80
OUTPUT_WIDTH = 1920


class RequestError(Exception):
    """A request the app got wrong: answered with its message, the channel stays open."""


def widen_send_buffer(writer: asyncio.StreamWriter) -> None:
    """A frame in one ``send``: past the socket's buffer asyncio keeps the rest in a bytearray it trims
    from the front after each partial send, so a 6 MB frame through a 200 KB buffer costs 30 copies
    of what is left (measured: 34 frames/s instead of hundreds; benchmarks/app_channel.py)."""
    sock = writer.get_extra_info("socket")
    for option in (getattr(socket, "SO_SNDBUFFORCE", None), socket.SO_SNDBUF):  # FORCE: as root, past wmem_max
        if option is None:
            continue
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SEND_BUFFER)
            return
        except OSError:
            continue


def typed_parameter(kind: str, value: bool | int | float | str) -> Any:
    if kind == "float32":
        return float(np.float32(value))
    if kind == "int32":
        return int(value)
    if kind == "boolean":
        return bool(value)
    return str(value)


def _shape(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) > 8 or not all(type(d) is int and 0 <= d <= 1 << 24 for d in value):
        raise RequestError(f"{what}: shape must be a list of at most 8 sizes")
    return value


def model_feeds(inputs: Any, buffers: list[bytes]) -> dict[str, npt.NDArray[Any]]:
    if not isinstance(inputs, list) or len(inputs) != len(buffers) or len(inputs) > MAX_MODEL_INPUTS:
        raise RequestError("call: one input description per buffer")
    feeds = {}
    for described, buffer in zip(inputs, buffers, strict=True):
        if not isinstance(described, dict) or not isinstance(described.get("name"), str):
            raise RequestError("call: each input needs a name")
        dtype = described.get("dtype")
        if dtype not in DTYPES:
            raise RequestError(f"call: dtype {str(dtype)[:16]!r} (one of {sorted(DTYPES)})")
        shape = _shape(described.get("shape"), f"input {described['name'][:64]!r}")
        if math.prod(shape) * np.dtype(dtype).itemsize != len(buffer):
            raise RequestError(f"call: input {described['name'][:64]!r}: {len(buffer)} bytes for {shape} {dtype}")
        feeds[described["name"]] = np.frombuffer(buffer, dtype).reshape(shape)
    return feeds


def output_picture(cameras: list[str], stream: Any, buffer: bytes) -> npt.NDArray[np.uint8]:
    if not isinstance(stream, dict) or stream.get("camera") not in cameras:
        raise RequestError(f"put: camera must be one of {cameras}")
    shape = _shape(stream.get("shape"), "put")
    if len(shape) != 3 or shape[2] != 3 or not 0 < shape[0] <= MAX_SIDE or not 0 < shape[1] <= MAX_SIDE:
        raise RequestError(f"put: an image is HxWx3 BGR, got {shape}")
    if math.prod(shape) != len(buffer):
        raise RequestError(f"put: {len(buffer)} bytes for an image of {shape}")
    labels, rects = stream.get("labels", []), stream.get("rects", [])
    if (
        not isinstance(labels, list)
        or len(labels) > MAX_LABELS
        or not isinstance(rects, list)
        or len(rects) > MAX_RECTS
    ):
        raise RequestError(f"put: at most {MAX_LABELS} labels and {MAX_RECTS} rectangles")
    picture: npt.NDArray[np.uint8] = np.frombuffer(buffer, np.uint8).reshape(shape).copy()
    return picture


def render_output(picture: npt.NDArray[np.uint8], labels: list[Any], rects: list[Any], masks: Any) -> bytes | None:
    """The app's picture with its labels and rectangles drawn, the camera's masks applied again
    (an app may have scaled or moved what it was given), as a JPEG."""
    height, width = picture.shape[:2]
    thickness = max(1, round(min(width, height) / 240))
    for rect in rects:
        try:
            box = in_pixels((min(1.0, max(0.0, float(v))) for v in rect), width, height)
        except (TypeError, ValueError):
            continue
        if len(box) == 4:
            draw_box(picture, box, RECT_COLOR, thickness=thickness)
    for label in labels:
        try:
            text, x, y = str(label[0])[:256], min(1.0, max(0.0, float(label[1]))), min(1.0, max(0.0, float(label[2])))
        except (TypeError, ValueError, IndexError):
            continue
        at = in_pixels((x, y), width, height)  # the label's bottom-left corner
        draw_label(
            picture, text, at, LABEL_BACKGROUND, text_colour=LABEL_COLOR, scale=0.5 * thickness, thickness=thickness
        )
    apply_privacy_masks(picture, masks)
    if width > OUTPUT_WIDTH:  # for a screen, not a recorder: the bus carries it to the console
        size = (OUTPUT_WIDTH, round(height * OUTPUT_WIDTH / width))
        picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA)  # type: ignore[assignment]
    ok, encoded = cv2.imencode(".jpg", picture, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return encoded.tobytes() if ok and len(encoded) <= MAX_APP_PICTURE_BYTES else None

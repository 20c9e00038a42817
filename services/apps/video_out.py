"""``video_out.put``: an app's picture for its HDMI output, checked, drawn and sent to the console.

An app's picture, labels and rectangles are its own choice: each is bounded before it costs memory
or CPU. The camera's privacy masks are applied again (an app may have scaled or moved what it was
given), and the JPEG goes out on ``apps/<app>/`` as an ``AppVideo``, which the console shows behind
its login. Newest wins: a put that comes while the last one is still drawn is dropped.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from common.config import CameraConfig
from common.draw import Colour, draw_box, draw_label, in_pixels
from common.privacy import apply_privacy_masks
from contracts import AppVideo
from contracts.messages import MAX_APP_PICTURE_BYTES
from services.apps.channel_requests import RequestError, checked_shape
from services.apps.running_app import RunningApp

__all__ = ["VideoOut", "output_picture", "render_output"]

MAX_LABELS, MAX_RECTS = 256, 1024
MAX_SIDE = 4096  # pixels of a video_out picture's side: 4K, what an HDMI port showed at most
LABEL_COLOR: Colour = (255, 255, 255)  # BGR: white text on black, readable anywhere
LABEL_BACKGROUND: Colour = (0, 0, 0)
RECT_COLOR: Colour = (0, 200, 0)
JPEG_QUALITY = 80
OUTPUT_WIDTH = 1920

Publish = Callable[[str, AppVideo], Awaitable[None]]  # (app, video): on apps/<app>/


class VideoOut:
    """Draws each app's ``video_out`` pictures and hands them to ``publish``."""

    def __init__(self, cameras: dict[str, CameraConfig], publish: Publish) -> None:
        self.cameras = cameras
        self.publish = publish

    async def put(self, app: RunningApp, header: dict[str, Any], buffers: list[bytes]) -> None:
        streams = header.get("streams")
        if not isinstance(streams, list) or len(streams) != len(buffers) or len(streams) > len(app.config.cameras):
            raise RequestError("put: one stream per buffer, at most one per camera")
        if app.rendering:
            return  # newest wins: an app that puts faster than its pictures are drawn costs no more CPU here
        pictures = [
            output_picture(app.config.cameras, stream, buffer) for stream, buffer in zip(streams, buffers, strict=True)
        ]
        app.rendering = True
        try:
            for stream, picture in zip(streams, pictures, strict=True):
                masks = self.cameras[stream["camera"]].privacy_masks
                labels, rects = stream.get("labels", []), stream.get("rects", [])
                jpeg = await asyncio.to_thread(render_output, picture, labels, rects, masks)
                if jpeg is not None:
                    video = AppVideo(app=app.name, camera=stream["camera"], ts_ns=time.time_ns(), jpeg=jpeg)
                    await self.publish(app.name, video)
        finally:
            app.rendering = False


def output_picture(cameras: list[str], stream: Any, buffer: bytes) -> npt.NDArray[np.uint8]:
    """The picture of one stream of a put, checked: one of the app's cameras, HxWx3 BGR, bounded labels."""
    if not isinstance(stream, dict) or stream.get("camera") not in cameras:
        raise RequestError(f"put: camera must be one of {cameras}")
    shape = checked_shape(stream.get("shape"), "put")
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

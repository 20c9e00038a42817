"""Pixel formats next to the ring (``common.shm.pixels``) and the one privacy-mask function (``common.privacy``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config.cameras import CameraConfig, PrivacyMask
from common.models.manifest import ModelManifest
from common.privacy import apply_privacy_masks
from common.shm import FrameRingReader, FrameRingWriter, channel_order, colour_view, convert, frame_bytes
from contracts import PixelFormat
from services.inference.processing import Letterbox

RED_BGR = (0, 0, 255)


def red_scene() -> np.ndarray:  # type: ignore[type-arg]
    """BGR: grey with a red square."""
    scene = np.full((48, 64, 3), 128, np.uint8)
    scene[10:30, 20:40] = RED_BGR
    return scene


def as_format(scene: np.ndarray, pixel_format: PixelFormat) -> np.ndarray:  # type: ignore[type-arg]
    """The BGR scene as ingest would write it in ``pixel_format`` (bgr24 or rgb24)."""
    return np.ascontiguousarray(scene[..., ::-1] if pixel_format == "rgb24" else scene)


@pytest.mark.parametrize("pixel_format", ["bgr24", "rgb24"])
def test_convert_gives_each_order_from_each_three_channel_format(pixel_format: PixelFormat) -> None:
    scene = red_scene()
    pixels = as_format(scene, pixel_format)
    bgr, rgb = convert(pixels, pixel_format, "bgr"), convert(pixels, pixel_format, "rgb")
    assert (bgr == scene).all() and (rgb == scene[..., ::-1]).all()
    assert bgr.flags.writeable and not np.shares_memory(bgr, pixels)  # a copy, always
    view, order = colour_view(pixels, pixel_format)
    assert view is pixels and order == channel_order(pixel_format) == pixel_format[:3]  # no copy


def test_gray8_and_nv12_are_converted_to_three_channels() -> None:
    gray = np.full((48, 64), 90, np.uint8)
    assert channel_order("gray8") is None
    assert convert(gray, "gray8", "rgb").shape == (48, 64, 3) and (convert(gray, "gray8", "bgr") == 90).all()
    nv12 = np.full((72, 64), 128, np.uint8)  # luma 128, neutral chroma: grey
    view, order = colour_view(nv12, "nv12")
    assert order == "bgr" and view.shape == (48, 64, 3) and abs(int(view.mean()) - 128) <= 2


@pytest.mark.parametrize("pixel_format", ["bgr24", "rgb24"])
def test_a_reader_copies_a_frame_as_bgr_or_rgb_whatever_it_holds(tmp_path: Path, pixel_format: PixelFormat) -> None:
    scene = red_scene()
    with FrameRingWriter.create("t", "cam", slots=2, capacity=frame_bytes("bgr24", 64, 48), shm_dir=tmp_path) as ring:
        ref = ring.write(as_format(scene, pixel_format), pixel_format=pixel_format)
        with FrameRingReader(ring.name, shm_dir=tmp_path) as reader:
            assert (reader.copy(ref, "bgr") == scene).all()
            assert (reader.copy(ref, "rgb") == scene[..., ::-1]).all()
            assert (reader.copy(ref) == as_format(scene, pixel_format)).all()  # as held, by default


@pytest.mark.parametrize("color", ["bgr", "rgb"])
def test_the_letterbox_gives_the_model_its_order_whatever_the_frames(color: str) -> None:
    manifest = ModelManifest(name="m", file="m.onnx", decoder="yolox", color=color, letterbox="top_left")
    boxer = Letterbox(manifest, 64, 64)
    scene = red_scene()
    from_bgr, from_rgb = boxer.batch(2)[0], boxer.batch(2)[1]
    boxer.place(scene, from_bgr, "bgr")
    boxer.place(np.ascontiguousarray(scene[..., ::-1]), from_rgb, "rgb")
    assert np.array_equal(from_bgr, from_rgb)
    red_channel = 0 if color == "rgb" else 2
    assert from_bgr[red_channel, 20, 30] == pytest.approx(255 * manifest.scale)


def test_masks_fill_or_blur_only_their_polygon_in_place() -> None:
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 255, (100, 200, 3), dtype=np.uint8)
    original = frame.copy()
    fill = PrivacyMask(polygon=[(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (0.0, 0.5)])
    blur = PrivacyMask(polygon=[(0.6, 0.6), (0.9, 0.6), (0.9, 0.9), (0.6, 0.9)], mode="blur")
    assert apply_privacy_masks(frame, [fill, blur]) is frame
    assert (frame[:49, :99] == 0).all()  # the fill: black
    blurred = frame[62:88, 122:178].astype(float)
    assert blurred.std() < original[62:88, 122:178].astype(float).std() / 4  # the blur: nothing recognisable
    outside = np.ones((100, 200), bool)
    outside[:52, :102] = outside[58:92, 118:182] = False
    assert (frame[outside] == original[outside]).all()  # nothing else touched


def test_a_mask_hides_an_area_from_people_only_unless_it_says_inference() -> None:
    camera = CameraConfig.model_validate(
        {"url": "rtsp://h/1", "privacy_masks": [{"polygon": [[0, 0], [1, 0], [1, 1]]}]}
    )
    assert camera.privacy_masks[0].inference is False and camera.privacy_masks[0].mode == "fill"
    strict = PrivacyMask.model_validate({"polygon": [[0, 0], [1, 0], [1, 1]], "inference": True})
    assert strict.inference is True

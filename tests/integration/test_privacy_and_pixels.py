"""Frames as people and models get them, through the real processes (issue #25, items 5 and 6): a privacy
mask hides its area in the console's latest.jpg and live MJPEG, in a Panorama app's frame and its
video_out, and in rules' snapshots, while the model still sees it unless the mask says ``inference:
true``; an rgb24 camera's red object stays red for every reader (the model's input included)."""

from __future__ import annotations

import asyncio
import contextlib
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml

from common.bus import EventReceiver, Publisher, Subscriber
from common.shm import FrameRingWriter, frame_bytes
from contracts import Detections, Event, PixelFormat, topic
from tests.conftest import free_port
from tests.integration.conftest import Services
from tests.media import frame_at
from tests.support import bus_handshake, deadline

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 320, 240
PASSWORD = "privacy test password"
TOKEN = "token-privacy-0123456789"
MASK = [[0.0, 0.0], [0.3, 0.0], [0.3, 0.4], [0.0, 0.4]]  # top left
IN_MASK = (0.15, 0.2)  # (x, y) fractions of the frame
OUTSIDE = (0.85, 0.1)  # clear of the mask and of everything rules and the console draw
RED_AT = (0.175, 0.775)  # the red object's centre: clear of the walker's box and the line's label
WALKER_MODEL = "walker"  # Detections the test publishes itself, as a stand-in for inference

# Saves the image exactly as video_in.get() gave it (BGR), then shows it on video_out.
VIEWER_APP = """
import os
import numpy as np
import panoramasdk

node = panoramasdk.node()
while True:
    streams = node.inputs.video_in.get()
    for stream in streams:
        if not stream.is_cached:
            path = "/opt/aws/panorama/storage/" + stream.stream_id
            np.save(path + ".part.npy", stream.image)
            os.replace(path + ".part.npy", path + ".npy")
    node.outputs.video_out.put(streams)
"""


def site_sections(tmp_path: Path, cameras: dict[str, Any], app_cameras: list[str], **extra: Any) -> dict[str, Any]:
    """Cameras (the first one with a line rule that snapshots), a console, and the viewer app."""
    (tmp_path / "console_password").write_text(PASSWORD + "\n")
    code = tmp_path / "viewer"
    code.mkdir()
    (code / "app.py").write_text(textwrap.dedent(VIEWER_APP))
    first = next(iter(cameras))
    door = {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"], "min_frames": 2, "snapshot": True}
    cameras = {**cameras, first: {**cameras[first], "rules": {"door": door}}}
    return {
        "cameras": cameras,
        "tracker": {"min_hits": 2, "max_age_s": 0.5},
        "console": {
            "port": free_port(),
            "admin_password": f"${{file:{tmp_path / 'console_password'}}}",
            "api_tokens": [TOKEN],
        },
        "apps": {"viewer": {"code": str(code), "cameras": app_cameras}},
        **extra,
    }


async def drive(
    site: Services,
    frames: dict[str, tuple[np.ndarray, PixelFormat]],  # type: ignore[type-arg]
    done: Callable[[list[Event], list[Detections]], bool],
    *,
    walker: str | None = None,
    seconds: float = 60,
) -> tuple[list[Event], list[Detections]]:
    """Writes each camera's frame into its ring as ingest would and publishes the FrameRef; for ``walker``
    also Detections of a person walking down across the line (rules' snapshots). Rules' events are
    acknowledged as the uplink would; Detections of the site's models are collected. Until ``done``."""
    config = site.config
    rings = {
        camera: FrameRingWriter.create(
            config.site.name,
            camera,
            slots=8,
            capacity=frame_bytes(pixel_format, frame.shape[1], frame.shape[0]),
            shm_dir=config.site.shm_dir,
        )
        for camera, (frame, pixel_format) in frames.items()
    }
    events: list[Event] = []
    detections: list[Detections] = []
    try:
        async with (
            EventReceiver(config.bus.events.receive, "uplink-standin") as receiver,
            Subscriber(config.bus.subscribe, "test", [topic("detections")], hwm=1000) as subscriber,
            Publisher(config.bus.publish, "test") as publisher,
        ):
            await bus_handshake(publisher=publisher, subscriber=subscriber)

            async def acknowledge() -> None:
                while True:
                    delivery = await receiver.receive()
                    events.append(delivery.event)
                    await receiver.ack([delivery])

            async def collect() -> None:
                async for received in subscriber:
                    message = received.message
                    if isinstance(message, Detections) and message.model != WALKER_MODEL:
                        detections.append(message)

            tasks = [asyncio.create_task(acknowledge()), asyncio.create_task(collect())]
            try:  # the tasks end with the loop, however it ends (a failed check in done() too)
                end = deadline(seconds)
                step = 0
                while time.monotonic() < end and not done(events, detections):
                    for camera, ring in rings.items():
                        frame, pixel_format = frames[camera]
                        ref = ring.write(frame, pixel_format=pixel_format)
                        await publisher.publish("frames", camera, ref)
                        if camera == walker:
                            y = 0.3 + (step % 12) * 0.05
                            walking = Detections.from_arrays(
                                ref,
                                WALKER_MODEL,
                                boxes=[[0.45, y - 0.2, 0.55, y]],
                                class_ids=[0],
                                scores=[0.9],
                                labels={0: "person"},
                            )
                            await publisher.publish("detections", camera, walking)
                    step += 1
                    await asyncio.sleep(0.15)
            finally:
                for task in tasks:
                    task.cancel()
                for task in tasks:
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
    finally:
        for ring in rings.values():
            ring.close()
    return events, detections


def get(url: str, timeout: float = 5) -> bytes | None:
    """The body of a 200 answer (the console's token sent along), else None."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return answer.read() if answer.status == 200 else None  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return None


def first_mjpeg_frame(url: str) -> bytes | None:
    """The first JPEG of a multipart/x-mixed-replace stream."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as stream:
            assert stream.headers["Content-Type"].startswith("multipart/x-mixed-replace")
            length = None
            while (line := stream.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            return stream.read(length) if length else None  # type: ignore[no-any-return]
    except (urllib.error.URLError, OSError):
        return None


def decoded(jpeg: bytes | None) -> np.ndarray | None:  # type: ignore[type-arg]
    if jpeg is None:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image  # type: ignore[no-any-return]


def patch(image: np.ndarray, at: tuple[float, float]) -> np.ndarray:  # type: ignore[type-arg]
    """The mean BGR of a 7x7 patch around ``at`` (fractions of the frame)."""
    height, width = image.shape[:2]
    x, y = round(at[0] * (width - 1)), round(at[1] * (height - 1))
    return image[y - 3 : y + 4, x - 3 : x + 4].reshape(-1, 3).mean(axis=0)  # type: ignore[no-any-return]


def app_frame(site: Services, camera: str) -> np.ndarray | None:  # type: ignore[type-arg]
    path = Path(site.config.site.state_dir) / "apps" / "viewer" / "storage" / f"{camera}.npy"
    try:
        return np.load(path)  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


class Pictures:
    """What each reader made for people, fetched while frames flow; each once."""

    def __init__(self, site: Services, cameras: list[str]) -> None:
        assert site.config.console is not None
        self.site = site
        console = f"http://127.0.0.1:{site.config.console.port}"
        self.console = f"{console}/api/cameras"
        self.apps = f"{console}/api/apps"  # the app's video_out: the console serves it, behind its login
        self.cameras = cameras
        self.got: dict[str, np.ndarray] = {}  # type: ignore[type-arg]

    def fetch(self, live: bool = False, video_out: bool = False) -> None:
        kinds = ["console", "app", *(["live"] if live else []), *(["video_out"] if video_out else [])]
        for camera in self.cameras:
            for kind in kinds:
                name = f"{kind} {camera}"
                if name not in self.got and (picture := self._picture(kind, camera)) is not None:
                    self.got[name] = picture

    def _picture(self, kind: str, camera: str) -> np.ndarray | None:  # type: ignore[type-arg]
        if kind == "console":
            return decoded(get(f"{self.console}/{camera}/latest.jpg"))
        if kind == "live":  # once the console has a frame: the stream starts with it
            ready = f"console {camera}" in self.got
            return decoded(first_mjpeg_frame(f"{self.console}/{camera}/live.mjpg")) if ready else None
        if kind == "video_out":
            return decoded(get(f"{self.apps}/viewer/video/{camera}.jpg"))
        return app_frame(self.site, camera)


def snapshot_of(events: list[Event]) -> np.ndarray | None:  # type: ignore[type-arg]
    for event in events:
        if event.snapshot is not None:
            return decoded(event.snapshot.data)
    return None


def start(site: Services, *names: str) -> None:
    site.start("broker")
    for name in names:
        site.start(name)


def test_a_masked_area_is_hidden_wherever_people_see_frames(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    cameras = {"dock": {"url": "rtsp://unused/dock", "privacy_masks": [{"polygon": MASK, "mode": "fill"}]}}
    site = services(site_sections(tmp_path, cameras, ["dock"]))
    start(site, "console", "apps", "rules")
    pictures = Pictures(site, ["dock"])
    expected = {"console dock", "live dock", "app dock", "video_out dock"}

    def done(events: list[Event], _: list[Detections]) -> bool:
        pictures.fetch(live=True, video_out=True)
        return set(pictures.got) == expected and snapshot_of(events) is not None

    bright = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)  # bright everywhere: the mask must darken it
    events, _ = asyncio.run(drive(site, {"dock": (bright, "bgr24")}, done, walker="dock"))
    assert set(pictures.got) == expected, (sorted(pictures.got), site.log("console")[-2000:], site.log("apps")[-2000:])
    snapshot = snapshot_of(events)
    assert snapshot is not None, site.log("rules")[-2000:]
    wrong = []  # every reader that is wrong, not only the first
    for name, picture in [*pictures.got.items(), ("rules snapshot", snapshot)]:
        assert picture.shape == (HEIGHT, WIDTH, 3), name
        if patch(picture, IN_MASK).max() > 10:
            wrong.append(f"{name} shows the masked area: {patch(picture, IN_MASK)}")
        if patch(picture, OUTSIDE).min() < 180:
            wrong.append(f"{name} hides what is not masked: {patch(picture, OUTSIDE)}")
    assert not wrong, wrong
    assert (pictures.got["app dock"][: int(HEIGHT * 0.39), : int(WIDTH * 0.29)] == 0).all()  # exactly the fill


def test_the_model_sees_a_masked_area_unless_the_mask_says_inference(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    right = [[0.78, 0.0], [1.0, 0.0], [1.0, 1.0], [0.78, 1.0]]  # four people of frame 60 stand there
    cameras = {
        "open": {"url": "rtsp://unused/open", "privacy_masks": [{"polygon": right}]},
        "hidden": {"url": "rtsp://unused/hidden", "privacy_masks": [{"polygon": right, "inference": True}]},
    }
    site = services({"cameras": cameras, "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}}})
    start(site, "inference")
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)

    def done(_: list[Event], detections: list[Detections]) -> bool:
        return all(sum(d.frame.camera == camera for d in detections) >= 2 for camera in cameras)

    _, detections = asyncio.run(drive(site, {camera: (frame, "bgr24") for camera in cameras}, done))
    assert done([], detections), site.log("inference")[-2000:]

    def centres_x(camera: str) -> list[np.ndarray]:  # type: ignore[type-arg]
        boxes = [np.asarray(d.boxes.to_numpy(), np.float32) for d in detections if d.frame.camera == camera]
        return [(b[:, 0] + b[:, 2]) / 2 for b in boxes]

    for xs in centres_x("open"):
        assert (xs > 0.8).sum() >= 3, xs  # default: the model still sees the area (counting goes on)
    for xs in centres_x("hidden"):
        assert (xs > 0.78).sum() == 0, xs  # inference: true: not even the model
        assert len(xs) >= 10, xs  # the rest of the frame as before


def red_probe(path: Path, size: int = 64) -> None:
    """An ONNX model whose one detection scores max(channel 0 - channel 2) of its input: 1.0 where the model's
    first channel (red, for a model that takes RGB) holds a red object, nothing when red and blue are swapped."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def constant(name: str, values: Any, dtype: Any = np.int64) -> Any:
        return numpy_helper.from_array(np.asarray(values, dtype), name)

    constants = [
        *(constant(f"c{i}", [i]) for i in range(4)),
        constant("axis", [1]),
        constant("shape", [1, 1]),
        constant("box", [[[0, 0, size, size]]], np.float32),
        constant("cls", [[0]]),
    ]
    nodes = [
        helper.make_node("Slice", ["images", "c0", "c1", "axis"], ["first"]),
        helper.make_node("Slice", ["images", "c2", "c3", "axis"], ["third"]),
        helper.make_node("Sub", ["first", "third"], ["difference"]),
        helper.make_node("ReduceMax", ["difference"], ["peak"], axes=[1, 2, 3], keepdims=0),
        helper.make_node("Reshape", ["peak", "shape"], ["scores"]),
        helper.make_node("Identity", ["box"], ["boxes"]),
        helper.make_node("Identity", ["cls"], ["classes"]),
    ]
    graph = helper.make_graph(
        nodes,
        "red_probe",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 1, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1]),
            helper.make_tensor_value_info("classes", TensorProto.INT64, [1, 1]),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))


def probe_manifest(folder: Path) -> Path:
    red_probe(folder / "red_probe.onnx")
    fields = {
        "name": "probe",
        "file": "red_probe.onnx",
        "decoder": "end2end",
        "color": "rgb",
        "scale": 1 / 255,
        "letterbox": "top_left",
        "labels": ["red"],
        "score_threshold": 0.5,
    }
    manifest = folder / "probe.yaml"
    manifest.write_text(yaml.safe_dump(fields))
    return manifest


def is_red(bgr: np.ndarray) -> bool:  # type: ignore[type-arg]
    blue, green, red = bgr
    return bool(red >= 190 and blue <= 60 and green <= 60)


def test_a_red_object_of_an_rgb24_camera_stays_red_for_every_reader(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    cameras = {
        "rgbcam": {"url": "rtsp://unused/rgb", "pixel_format": "rgb24"},
        "bgrcam": {"url": "rtsp://unused/bgr", "pixel_format": "bgr24"},  # the same scene, the usual way
    }
    models = {"probe": {"path": str(probe_manifest(tmp_path))}}
    site = services(site_sections(tmp_path, cameras, ["rgbcam", "bgrcam"], models=models))
    start(site, "console", "apps", "rules", "inference")
    pictures = Pictures(site, list(cameras))

    def done(events: list[Event], detections: list[Detections]) -> bool:
        pictures.fetch()
        answered = all(sum(d.frame.camera == camera for d in detections) >= 2 for camera in cameras)
        return len(pictures.got) == 4 and snapshot_of(events) is not None and answered

    scene = np.full((HEIGHT, WIDTH, 3), 128, np.uint8)  # BGR: grey, and a red object
    scene[int(HEIGHT * 0.65) : int(HEIGHT * 0.9), int(WIDTH * 0.05) : int(WIDTH * 0.3)] = (0, 0, 255)
    frames: dict[str, tuple[np.ndarray, PixelFormat]] = {  # type: ignore[type-arg]
        "rgbcam": (np.ascontiguousarray(scene[..., ::-1]), "rgb24"),  # as ingest writes rgb24: R, G, B
        "bgrcam": (scene, "bgr24"),
    }
    events, detections = asyncio.run(drive(site, frames, done, walker="rgbcam"))
    assert len(pictures.got) == 4, (sorted(pictures.got), site.log("console")[-2000:], site.log("apps")[-2000:])
    snapshot = snapshot_of(events)
    assert snapshot is not None, site.log("rules")[-2000:]
    wrong = []  # every reader that is wrong, not only the first
    for name, picture in [*pictures.got.items(), ("rules snapshot rgbcam", snapshot)]:
        if not is_red(patch(picture, RED_AT)):
            wrong.append(f"{name}: the red object is {patch(picture, RED_AT)} (BGR)")
        assert abs(patch(picture, OUTSIDE) - 128).max() <= 8, name
    # the model's input: the probe finds red in its first channel (the model takes RGB) on both cameras
    for camera in cameras:
        answers = [d for d in detections if d.frame.camera == camera and d.model == "probe"]
        assert answers, (camera, site.log("inference")[-2000:])
        scores = [answer.scores.to_numpy().tolist() for answer in answers]
        if not all(list(answer.labels.values()) == ["red"] for answer in answers):
            wrong.append(f"inference {camera}: the model saw no red object in some frames (scores {scores})")
        elif min(min(s) for s in scores) < 0.99:
            wrong.append(f"inference {camera}: scores {scores}")
    assert not wrong, wrong

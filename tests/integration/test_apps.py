"""Panorama applications on the apps service: written here from the documented SDK, run unchanged."""

from __future__ import annotations

import asyncio
import json
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

from common.bus import Publisher
from common.shm import FrameRingWriter, frame_bytes
from tests.integration.conftest import Services
from tests.media import frame_at
from tests.support import http_get

pytestmark = pytest.mark.slow

# An application as Panorama developers wrote them: subclass without super().__init__(), a parameter
# port, a file from /panorama, a RotatingFileHandler on /opt/aws/panorama/logs, storage, both call
# orders, is_cached, add_rect/add_label, and YOLOX-Nano's raw output decoded by the app itself.
PEOPLE_APP = """
import json
import logging
from logging.handlers import RotatingFileHandler

import cv2
import numpy as np
import panoramasdk

log = logging.getLogger("people")
log.setLevel(logging.INFO)
handler = RotatingFileHandler("/opt/aws/panorama/logs/app.log", maxBytes=10_000_000, backupCount=2)
handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
log.addHandler(handler)


def letterbox(image, size=416):
    scale = min(size / image.shape[0], size / image.shape[1])
    resized = cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)))
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return canvas.transpose(2, 0, 1)[None].astype(np.float32), scale


def decode(output, scale, threshold):
    grids, strides = [], []
    for stride in (8, 16, 32):
        side = 416 // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((side * side, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    raw = output[0]
    xy = (raw[:, :2] + grid) * stride
    wh = np.exp(raw[:, 2:4]) * stride
    scores = raw[:, 4] * raw[:, 5]  # objectness x person
    keep = scores >= threshold
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), 1)[keep] / scale
    xywh = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]
    picked = cv2.dnn.NMSBoxes(xywh, scores[keep].tolist(), threshold, 0.45)
    return boxes[np.asarray(picked, int).reshape(-1)]


class Application(panoramasdk.node):
    def __init__(self):
        self.threshold = self.inputs.threshold.get()
        self.use_reference_order = self.inputs.reference_order.get()
        self.title = self.inputs.title.get()
        with open("/panorama/classes.json") as file:
            self.classes = json.load(file)
        self.storage = open("/opt/aws/panorama/storage/counts.jsonl", "a")
        log.info("started: threshold=%s (%s) person=%s", self.threshold, type(self.threshold).__name__, self.classes[0])

    def process_streams(self):
        streams = self.inputs.video_in.get(timeout=30)
        for stream in streams:
            if stream.is_cached:
                log.info("cached %s", stream.stream_id)
                continue
            tensor, scale = letterbox(stream.image)
            if self.use_reference_order:
                outputs = self.call("model_node", {"anything": tensor}, None)
            else:
                outputs = self.call({"images": tensor}, "model_node")
            boxes = decode(outputs[0], scale, self.threshold)
            height, width = stream.image.shape[:2]
            for x1, y1, x2, y2 in boxes:
                stream.add_rect(max(0, x1 / width), max(0, y1 / height), min(1, x2 / width), min(1, y2 / height))
            stream.add_label(f"{self.title}: {len(boxes)}", 0.02, 0.08)
            record = {"camera": stream.stream_id, "persons": len(boxes), "outputs": len(outputs),
                      "shape": list(outputs[0].shape), "time_stamp": list(stream.time_stamp), "size": [width, height]}
            log.info("count %s", json.dumps(record))
            self.storage.write(json.dumps(record) + "\\n")
            self.storage.flush()
        self.outputs.video_out.put(streams)


def main():
    app = Application()
    while True:
        app.process_streams()


main()
"""

# The composition style, and an app whose trouble must not reach the one above.
COMPOSED_APP = """
import json
import numpy as np
import panoramasdk

node = panoramasdk.node()
while True:
    streams = node.inputs.video_in.get()
    for stream in streams:
        stream.add_label("hello", 0.1, 0.1)
        if "model_node" in json.load(open("/panorama/models.json")):  # the reference's order, any input name
            outputs = node.call("model_node", {"data": np.zeros((1, 3, 416, 416), np.float64)}, time_out=5)
            with open("/opt/aws/panorama/storage/shapes.json", "w") as out:
                json.dump([list(o.shape) for o in outputs], out)
    node.outputs.video_out.put(streams)
"""
CRASHING_APP = """
import panoramasdk

class Application(panoramasdk.node):
    def process_streams(self):
        self.inputs.video_in.get()
        raise RuntimeError("the app's own bug")

app = Application()
while True:
    app.process_streams()
"""
HANGING_APP = """
import time
import panoramasdk

app = panoramasdk.node()
app.inputs.video_in.get()
while True:
    time.sleep(1)  # stuck in its own code, never asking for a frame again
"""


def write_app(folder: Path, source: str, models: tuple[str, ...] = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "app.py").write_text(textwrap.dedent(source))
    (folder / "classes.json").write_text(json.dumps(["person", "bicycle"]))
    (folder / "models.json").write_text(json.dumps(list(models)))
    return folder


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def feed(
    site: Services,
    frame: np.ndarray,
    cameras: list[str],
    seconds: float,
    until: Callable[[], bool],  # type: ignore[type-arg]
) -> None:
    """Writes ``frame`` for every camera into shared memory, as ingest does, and publishes its FrameRef."""
    config = site.config
    height, width = frame.shape[:2]
    rings = {
        camera: FrameRingWriter.create(
            config.site.name, camera, slots=4, capacity=frame_bytes("bgr24", width, height), shm_dir=config.site.shm_dir
        )
        for camera in cameras
    }
    try:
        async with Publisher(config.bus.publish, "test") as publisher:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline and not until():
                for camera, ring in rings.items():
                    await publisher.publish("frames", camera, ring.write(frame))
                await asyncio.sleep(0.2)
    finally:
        for ring in rings.values():
            ring.close()


def app_site(tmp_path: Path, shared_dir: Path, apps: dict[str, Any]) -> dict[str, Any]:
    cameras = {name: {"url": f"rtsp://viewer:secret@192.0.2.1/{name}"} for name in ("hall", "door")}
    return {"cameras": cameras, "apps": apps}


def test_a_panorama_app_counts_people_and_shows_its_output(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    parameters = {
        "threshold": {"type": "float32", "value": 0.3},
        "reference_order": {"type": "boolean", "value": False},
        "title": {"type": "string", "value": "people"},
    }
    apps = {
        "people": {
            "code": str(write_app(tmp_path / "people_code", PEOPLE_APP)),
            "cameras": ["hall", "door"],
            "models": {"model_node": {"path": "yolox_nano.onnx"}},
            "parameters": parameters,
        },
        "greeter": {
            "code": str(write_app(tmp_path / "greeter_code", COMPOSED_APP, ("model_node",))),
            "cameras": ["door"],
            "models": {"model_node": {"path": "yolox_nano.onnx"}},
        },
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    base = site.start("apps")
    state = Path(site.config.site.state_dir) / "apps"
    log_file = state / "people" / "logs" / "app.log"

    def counted() -> list[dict[str, Any]]:
        if not log_file.exists():
            return []
        lines = log_file.read_text().splitlines()
        return [json.loads(line.split("count ", 1)[1]) for line in lines if line.startswith("INFO count ")]

    def ready() -> bool:
        cameras = {record["camera"] for record in counted()}
        return cameras == {"hall", "door"} and status_of(f"{base}/apps/greeter/video/door.jpg") == 200

    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    asyncio.run(feed(site, frame, ["hall", "door"], 60, ready))
    records = counted()
    assert records, site.log("apps")
    hall = [r for r in records if r["camera"] == "hall"]
    assert hall and max(r["persons"] for r in hall) >= 15, hall
    assert hall[0]["shape"] == [1, 3549, 85] and hall[0]["outputs"] == 1  # raw outputs, batch dimension kept
    assert hall[0]["size"] == [854, 480] and hall[0]["time_stamp"][0] > 1_700_000_000
    log_text = log_file.read_text()
    assert "started: threshold=0.30000001192092896 (float) person=person" in log_text  # a float32, typed
    assert (state / "people" / "storage" / "counts.jsonl").read_text().count("\n") == len(records)
    deadline = time.monotonic() + 5
    while 'msg="app log" app=people' not in site.log("apps"):  # the app's log also reaches the service log
        assert time.monotonic() < deadline, site.log("apps")
        time.sleep(0.2)

    with urllib.request.urlopen(f"{base}/apps/people/video/hall.jpg", timeout=5) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        picture = cv2.imdecode(np.frombuffer(response.read(), np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape == (480, 854, 3)
    cv2.imwrite(str(tmp_path / "hall.jpg"), picture)
    print(f"output frame: {tmp_path / 'hall.jpg'}")
    green = (picture[:, :, 1] > 150) & (picture[:, :, 0] < 80) & (picture[:, :, 2] < 80)
    assert green.sum() > 2000, "the rectangles are drawn on the output"
    deadline = time.monotonic() + 5
    while (described := json.loads(http_get(f"{base}/apps")[1]))["people"]["frames"] < 2 or described["greeter"][
        "frames"
    ] < 1:  # stats come each second
        assert time.monotonic() < deadline, described
        time.sleep(0.2)
    assert described["people"]["state"] == "running"
    assert described["people"]["video"] == ["/apps/people/video/hall.mjpg", "/apps/people/video/door.mjpg"]
    assert described["greeter"]["frames"] >= 1
    shapes = state / "greeter" / "storage" / "shapes.json"
    assert json.loads(shapes.read_text()) == [[1, 3549, 85]]  # call(name, inputs): a float64 feed, any key


def test_a_crashing_and_a_hanging_app_are_restarted_and_the_others_run_on(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    apps = {
        "crasher": {"code": str(write_app(tmp_path / "crasher", CRASHING_APP)), "cameras": ["hall"]},
        "hanger": {"code": str(write_app(tmp_path / "hanger", HANGING_APP)), "cameras": ["hall"], "hang_timeout_s": 2},
        "steady": {"code": str(write_app(tmp_path / "steady", COMPOSED_APP)), "cameras": ["door"]},
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    base = site.start("apps")

    def described() -> dict[str, Any]:
        return dict(json.loads(http_get(f"{base}/apps")[1]))

    first_pid: list[int] = []

    def done() -> bool:
        now = described()
        if now["steady"]["pid"] and not first_pid:
            first_pid.append(now["steady"]["pid"])
        return now["crasher"]["restarts"] >= 2 and now["hanger"]["restarts"] >= 1 and now["steady"]["frames"] >= 20

    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    asyncio.run(feed(site, frame, ["hall", "door"], 60, done))
    now = described()
    assert now["crasher"]["restarts"] >= 2 and now["hanger"]["restarts"] >= 1, now
    assert now["steady"]["restarts"] == 0 and now["steady"]["pid"] == first_pid[0], now  # never disturbed
    assert now["steady"]["frames"] >= 20
    log = site.log("apps")
    assert 'msg="app exited; restarting" app=crasher' in log
    assert "RuntimeError: the app's own bug" in log  # the app's traceback, in the log
    assert 'msg="app hung; killing it" app=hanger' in log

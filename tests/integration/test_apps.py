"""Panorama applications on the apps service: written here from the documented SDK, run unchanged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
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

from common.bus import Publisher, Subscriber
from common.shm import FrameRingWriter, frame_bytes
from common.trust import build_package, generate_key_pair, load_signing_key
from contracts import AppStatus, AppVideo, topic
from services.apps.sandbox import processes_of
from tests.conftest import write_site
from tests.integration.conftest import Services
from tests.media import frame_at
from tests.support import deadline

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
            record = {"camera": stream.stream_id, "uri": stream.stream_uri, "persons": len(boxes),
                      "outputs": len(outputs), "shape": list(outputs[0].shape),
                      "time_stamp": list(stream.time_stamp), "size": [width, height]}
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
WAITING_APP = """
import json
import os
import panoramasdk

app = panoramasdk.node()
while True:
    try:
        app.inputs.video_in.get(timeout=0.5)  # its camera never sends
    except TimeoutError as exc:
        with open("/opt/aws/panorama/storage/waited.json", "w") as out:
            json.dump({"error": type(exc).__name__, "uid": os.environ["AppGraph_Uid"]}, out)
"""
HANGING_APP = """
import time
import panoramasdk

app = panoramasdk.node()
app.inputs.video_in.get()
while True:
    time.sleep(1)  # stuck in its own code, never asking for a frame again
"""


class BusWatch:
    """What the apps service publishes on ``apps/`` (AppStatus, AppVideo), newest per key, gathered by
    a thread of its own while the test feeds frames or waits."""

    def __init__(self, site: Services) -> None:
        self.site = site
        self.status: dict[str, AppStatus] = {}
        self.video: dict[tuple[str, str], AppVideo] = {}
        self.first_status: dict[str, AppStatus] = {}
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._gather()), daemon=True)

    def __enter__(self) -> BusWatch:
        self._thread.start()
        assert self._ready.wait(10), "the watch did not subscribe"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _gather(self) -> None:
        async with Subscriber(self.site.config.bus.subscribe, "test", [topic("apps")], hwm=1000) as apps:
            self._ready.set()
            while not self._stop.is_set():
                try:
                    received = await asyncio.wait_for(apps.receive(), 0.2)
                except asyncio.TimeoutError:
                    continue
                message = received.message
                if isinstance(message, AppStatus):
                    self.first_status.setdefault(message.app, message)
                    self.status[message.app] = message
                elif isinstance(message, AppVideo):
                    self.video[message.app, message.camera] = message

    def state(self, app: str) -> AppStatus:
        end = deadline(30)
        while app not in self.status:
            assert time.monotonic() < end, f"no AppStatus for {app}: {self.site.log('apps')[-3000:]}"
            time.sleep(0.1)
        return self.status[app]

    def picture(self, app: str, camera: str) -> np.ndarray | None:
        video = self.video.get((app, camera))
        return None if video is None else cv2.imdecode(np.frombuffer(video.jpeg, np.uint8), cv2.IMREAD_COLOR)


def write_app(folder: Path, source: str, models: tuple[str, ...] = ()) -> Path:
    """The app's code package; readable by the app's own uid (the sandbox checks nothing else)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    (folder / "app.py").write_text(textwrap.dedent(source))
    (folder / "classes.json").write_text(json.dumps(["person", "bicycle"]))
    (folder / "models.json").write_text(json.dumps(list(models)))
    for file in folder.iterdir():
        file.chmod(0o644)
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
            end = deadline(seconds)
            while time.monotonic() < end and not until():
                for camera, ring in rings.items():
                    await publisher.publish("frames", camera, ring.write(frame))
                await asyncio.sleep(0.2)
    finally:
        for ring in rings.values():
            ring.close()


def app_site(tmp_path: Path, shared_dir: Path, apps: dict[str, Any]) -> dict[str, Any]:
    cameras = {
        name: {"url": f"rtsp://viewer:secret@192.0.2.1/{name}?token=tok-{name}"} for name in ("hall", "door", "idle")
    }
    return {"cameras": cameras, "apps": apps}


def signed_model(tmp_path: Path, shared_dir: Path) -> Path:
    """YOLOX-Nano in a package signed by a fresh key (``keys/signing.pub``), as `edgesight models package` makes it."""
    private, _ = generate_key_pair(tmp_path / "keys", "signing")
    manifest = b"name: people\nversion: '1'\nfile: yolox_nano.onnx\ndecoder: yolox\nlabels: coco80\n"
    members = {"manifest.yaml": manifest, "yolox_nano.onnx": (shared_dir / "models" / "yolox_nano.onnx").read_bytes()}
    path = tmp_path / "people.espkg"
    path.write_bytes(build_package(members, name="people", version="1", signing_key=load_signing_key(private)))
    return path


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
            "models": {"model_node": {"path": str(signed_model(tmp_path, shared_dir))}},
        },
    }
    apps["people"]["models"]["model_node"]["allow_unsigned"] = True  # a plain file where keys are set: warned
    trust = {"site": {"trusted_keys": [str(tmp_path / "keys" / "signing.pub")]}}
    site = services(app_site(tmp_path, shared_dir, apps) | trust)
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")
        state = Path(site.config.site.state_dir) / "apps"
        log_file = state / "people" / "logs" / "app.log"

        def counted() -> list[dict[str, Any]]:
            if not log_file.exists():
                return []
            lines = log_file.read_text().splitlines()
            return [json.loads(line.split("count ", 1)[1]) for line in lines if line.startswith("INFO count ")]

        def ready() -> bool:
            cameras = {record["camera"] for record in counted()}
            people, greeter = watch.status.get("people"), watch.status.get("greeter")
            return (
                cameras == {"hall", "door"}
                and ("greeter", "door") in watch.video
                and ("people", "hall") in watch.video
                and people is not None
                and people.frames >= 2
                and greeter is not None
                and greeter.frames >= 1
            )

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 60, ready))
        records = counted()
        assert records, site.log("apps")
        hall = [r for r in records if r["camera"] == "hall"]
        assert hall and max(r["persons"] for r in hall) >= 15, hall
        assert hall[0]["shape"] == [1, 3549, 85] and hall[0]["outputs"] == 1  # raw outputs, batch dimension kept
        assert hall[0]["size"] == [854, 480] and hall[0]["time_stamp"][0] > 1_700_000_000
        assert hall[0]["uri"] == "rtsp://viewer:***@192.0.2.1/hall?token=***"  # neither password nor token
        log_text = log_file.read_text()
        assert "started: threshold=0.30000001192092896 (float) person=person" in log_text  # a float32, typed
        assert (state / "people" / "storage" / "counts.jsonl").read_text().count("\n") == len(records)
        end = deadline(30)
        while 'msg="app log" app=people' not in site.log("apps"):  # the app's log also reaches the service log
            assert time.monotonic() < end, site.log("apps")
            time.sleep(0.2)

        picture = watch.picture("people", "hall")  # what the console serves (behind its login)
        assert picture is not None and picture.shape == (480, 854, 3)
        cv2.imwrite(str(tmp_path / "hall.jpg"), picture)
        print(f"output frame: {tmp_path / 'hall.jpg'}")
        green = (picture[:, :, 1] > 150) & (picture[:, :, 0] < 80) & (picture[:, :, 2] < 80)
        assert green.sum() > 2000, "the rectangles are drawn on the output"
        people = watch.state("people")
        assert people.state == "running" and people.cameras == ["hall", "door"] and people.restarts == 0
        assert people.sandbox.startswith("uid ") and "network own" in people.sandbox
        shapes = state / "greeter" / "storage" / "shapes.json"
        assert json.loads(shapes.read_text()) == [[1, 3549, 85]]  # call(name, inputs): a float64 feed, any key
    assert "running an unsigned model file" in site.log("apps")  # allow_unsigned: warned, by the service
    # the service's own port serves its metrics and health, never the apps' video (the console does, behind its login)
    for path in ("/apps", "/apps/people/video/hall.jpg", "/apps/people/video/hall.mjpg"):
        with urllib.request.urlopen(f"{site.base('apps')}{path}", timeout=5) as answer:
            assert answer.headers["Content-Type"].startswith("text/plain") and b"\xff\xd8" not in answer.read(4096)


def test_a_crashing_and_a_hanging_app_are_restarted_and_the_others_run_on(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    apps = {
        "crasher": {"code": str(write_app(tmp_path / "crasher", CRASHING_APP)), "cameras": ["hall"]},
        "hanger": {"code": str(write_app(tmp_path / "hanger", HANGING_APP)), "cameras": ["hall"], "hang_timeout_s": 2},
        "steady": {"code": str(write_app(tmp_path / "steady", COMPOSED_APP)), "cameras": ["door"]},
        "waiter": {"code": str(write_app(tmp_path / "waiter", WAITING_APP)), "cameras": ["idle"]},
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")

        def done() -> bool:
            now = watch.status
            return (
                {"crasher", "hanger", "steady"} <= set(now)
                and now["crasher"].restarts >= 2
                and now["hanger"].restarts >= 1
                and now["steady"].frames >= 20
            )

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 60, done))
        now = dict(watch.status)
        assert now["crasher"].restarts >= 2 and now["hanger"].restarts >= 1, now
        assert now["crasher"].last_restart == "exited" and "RuntimeError: the app's own bug" in now["crasher"].error
        assert now["hanger"].last_restart == "hung", now["hanger"]
        assert now["steady"].restarts == 0 and now["steady"].state == "running", now  # never disturbed
        assert now["steady"].frames >= 20
        assert watch.state("waiter").restarts == 0  # waiting for frames is not hanging
    log = site.log("apps")
    assert 'msg="app stopped; restarting" app=crasher' in log
    assert "RuntimeError: the app's own bug" in log  # the app's traceback, in the log
    assert 'msg="app hung; killing it" app=hanger' in log
    waited = Path(site.config.site.state_dir) / "apps" / "waiter" / "storage" / "waited.json"
    assert json.loads(waited.read_text()) == {"error": "TimeoutError", "uid": "waiter"}
    uid = site.config.apps["steady"].user_id("steady")
    assert processes_of(uid), "the steady app runs as its own uid"
    site.processes["apps"].kill()  # the apps die with their service: no orphan keeps running
    site.processes["apps"].wait()
    end = deadline(30)
    while processes_of(uid):
        assert time.monotonic() < end, "an app outlived its service"
        time.sleep(0.1)


def panorama_project(folder: Path, *, framework: str = "PYTORCH") -> Path:
    """A Panorama application project as the Panorama CLI lays it out: graph, override, packages."""
    account = "123456789012"

    def write(path: Path, data: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2))

    graph = {
        "nodeGraph": {
            "envelopeVersion": "2021-01-01",
            "packages": [
                {"name": f"{account}::PEOPLE_CODE", "version": "1.0"},
                {"name": f"{account}::PEOPLE_MODEL", "version": "1.0"},
                {"name": "panorama::abstract_rtsp_media_source", "version": "1.0"},
                {"name": "panorama::hdmi_data_sink", "version": "1.0"},
            ],
            "nodes": [
                {"name": "code_node", "interface": f"{account}::PEOPLE_CODE.interface", "launch": "onAppStart"},
                {"name": "model_node", "interface": f"{account}::PEOPLE_MODEL.interface"},
                {"name": "camera_node", "interface": "panorama::abstract_rtsp_media_source.rtsp_v1_interface"},
                {"name": "output_node", "interface": "panorama::hdmi_data_sink.hdmi0"},
                {"name": "detection_threshold", "interface": "float32", "value": 0.3, "overridable": True},
                {"name": "banner", "interface": "string", "value": "people"},
            ],
            "edges": [
                {"producer": "camera_node.video_out", "consumer": "code_node.video_in"},
                {"producer": "code_node.video_out", "consumer": "output_node.video_in"},
                {"producer": "detection_threshold", "consumer": "code_node.threshold"},
                {"producer": "banner", "consumer": "code_node.title"},
            ],
        }
    }
    write(folder / "graphs" / "people_app" / "graph.json", graph)
    override = {
        "nodeGraphOverrides": {
            "packages": [
                {"name": f"{account}::lobby_cam", "version": "1.0"},
                {"name": f"{account}::door_cam", "version": "1.0"},
            ],
            "nodes": [
                {"name": "lobby_cam", "interface": f"{account}::lobby_cam.lobby_cam"},
                {"name": "door_cam", "interface": f"{account}::door_cam.door_cam"},
            ],
            "nodeOverrides": [{"replace": "camera_node", "with": [{"name": "lobby_cam"}, {"name": "door_cam"}]}],
        }
    }
    write(folder / "deployment_overrides" / "two_cameras.json", override)
    code = folder / "packages" / f"{account}-PEOPLE_CODE-1.0"
    interface = {
        "name": "interface",
        "category": "business_logic",
        "asset": "code_asset",
        "inputs": [{"name": "video_in", "type": "media"}, {"name": "threshold", "type": "float32"}],
        "outputs": [{"name": "video_out", "type": "media"}],
    }
    write(code / "package.json", {"nodePackage": {"name": "PEOPLE_CODE", "version": "1.0", "interfaces": [interface]}})
    write(code / "descriptor.json", {"runtimeDescriptor": {"entry": {"path": "python3", "name": "/panorama/app.py"}}})
    write_app(code / "src", COMPOSED_APP)
    model = folder / "packages" / f"{account}-PEOPLE_MODEL-1.0"
    model_interface = {"name": "interface", "category": "ml_model", "asset": "model_asset"}
    write(model / "package.json", {"nodePackage": {"name": "PEOPLE_MODEL", "interfaces": [model_interface]}})
    descriptor = {
        "mlModelDescriptor": {"framework": framework, "inputs": [{"name": "data", "shape": [1, 3, 416, 416]}]}
    }
    write(model / "descriptor.json", descriptor)
    return folder


def edgesight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args], capture_output=True, text=True, env=env, check=False
    )


def test_panorama_import_writes_a_site_that_config_check_accepts(tmp_path: Path, python_env: dict[str, str]) -> None:
    project = panorama_project(tmp_path / "people_app")
    (tmp_path / "base").mkdir()
    base = write_site(tmp_path / "base", {"cameras": {"yard": {"url": "rtsp://192.0.2.9/yard"}}})
    out = tmp_path / "site.yaml"
    result = edgesight(
        "panorama", "import", str(project),
        "--override", str(project / "deployment_overrides" / "two_cameras.json"),
        "--camera", "lobby_cam=rtsp://192.0.2.1/lobby", "--camera", "door_cam=rtsp://192.0.2.2/door",
        "--model", "model_node=yolox_nano.onnx", "--param", "detection_threshold=0.55",
        "--base", str(base), "--out", str(out), env=python_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    site = yaml.safe_load(out.read_text())
    app = site["apps"]["people_app"]
    assert app["cameras"] == ["lobby_cam", "door_cam"]  # one camera node, overridden by two
    assert app["parameters"] == {
        "threshold": {"type": "float32", "value": 0.55},  # --param wins over the graph's 0.3
        "title": {"type": "string", "value": "people"},
    }
    assert app["models"] == {"model_node": {"path": "yolox_nano.onnx"}}
    assert (app["entry"], app["interpreter"], app["video_in"], app["video_out"]) == (
        "/panorama/app.py",
        "python3",
        "video_in",
        "video_out",
    )
    assert Path(app["code"]) == (project / "packages" / "123456789012-PEOPLE_CODE-1.0" / "src").resolve()
    assert site["cameras"]["yard"]["url"] == "rtsp://192.0.2.9/yard"  # the base site is kept
    assert site["site"]["name"] == "test" and "bus" in site
    check = edgesight("config", "check", str(out), env=python_env)
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--model", "model_node=m.onnx"], "camera node 'camera_node': give its stream with --camera camera_node=rtsp://"),
        (["--camera", "camera_node=rtsp://h/1"], "model node 'model_node': a MXNET model that SageMaker Neo compiled"),
        (["--camera", "camera_node=rtsp://h/1", "--model", "model_node=m.onnx", "--param", "detection_threshold=high"],
         "parameter 'detection_threshold': 'high' is not a float32"),
        (["--camera", "camera_node=rtsp://h/1", "--model", "model_node=m.onnx", "--param", "nope=1"],
         "--param nope: no parameter node of that name"),
    ],
)  # fmt: skip
def test_panorama_import_says_what_it_cannot_translate(
    tmp_path: Path, python_env: dict[str, str], arguments: list[str], message: str
) -> None:
    project = panorama_project(tmp_path / "people_app", framework="MXNET")
    out = tmp_path / "site.yaml"
    result = edgesight("panorama", "import", str(project), *arguments, "--out", str(out), env=python_env)
    assert result.returncode == 2
    assert message in result.stderr, result.stderr
    if "MXNET" in message:
        assert "mxnet.onnx.export_model" in result.stderr  # how to get an ONNX file
    assert not out.exists()


def test_panorama_import_refuses_an_unknown_node_interface(tmp_path: Path, python_env: dict[str, str]) -> None:
    project = panorama_project(tmp_path / "people_app")
    graph_file = project / "graphs" / "people_app" / "graph.json"
    graph = json.loads(graph_file.read_text())
    graph["nodeGraph"]["nodes"].append({"name": "lidar", "interface": "panorama::lidar_source.v1"})
    graph_file.write_text(json.dumps(graph))
    result = edgesight(
        "panorama", "import", str(project), "--camera", "camera_node=rtsp://h/1", "--model", "model_node=m.onnx",
        "--out", str(tmp_path / "site.yaml"), env=python_env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "node 'lidar': unknown node interface 'panorama::lidar_source.v1'" in result.stderr


def test_config_check_finds_a_missing_app_model_and_entry(tmp_path: Path, python_env: dict[str, str]) -> None:
    code = write_app(tmp_path / "code", COMPOSED_APP)
    (code / "app.py").unlink()
    extra = {
        "cameras": {"hall": {"url": "rtsp://192.0.2.1/hall"}},
        "apps": {"people": {"code": str(code), "cameras": ["hall"], "models": {"model_node": {"path": "nosuch.onnx"}}}},
    }
    site = write_site(tmp_path, extra)
    result = edgesight("config", "check", str(site), env=python_env)
    assert result.returncode == 2
    assert "apps.people.entry: " in result.stderr and "app.py does not exist" in result.stderr
    assert "apps.people.models.model_node.path: nosuch.onnx not found" in result.stderr


def test_config_check_refuses_a_plain_app_model_where_keys_are_set(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str]
) -> None:
    signed_model(tmp_path, shared_dir)
    extra = {
        "site": {"trusted_keys": [str(tmp_path / "keys")]},
        "cameras": {"hall": {"url": "rtsp://192.0.2.1/hall"}},
        "apps": {
            "plain": {"code": str(write_app(tmp_path / "a", COMPOSED_APP)), "cameras": ["hall"],
                      "models": {"model_node": {"path": "yolox_nano.onnx"}}},
            "signed": {"code": str(write_app(tmp_path / "b", COMPOSED_APP)), "cameras": ["hall"],
                       "models": {"model_node": {"path": str(tmp_path / "people.espkg")}}},
        },
    }  # fmt: skip
    result = edgesight("config", "check", str(write_site(tmp_path, extra)), env=python_env)
    assert result.returncode == 2, result.stderr
    assert "apps.plain.models.model_node.path: " in result.stderr
    assert "is not a signed package and site.trusted_keys is set" in result.stderr
    assert "apps.signed" not in result.stderr and "Traceback" not in result.stderr

"""Panorama's v0 Application SDK (``panoramasdk.base`` and ``panoramasdk.model``) on a fake runtime.

Apps here are written as the 2020 preview's samples were (aws-samples/aws-panorama-samples before
July 2021, awsdocs/aws-panorama-developer-guide's ``aws-panorama-sample``): ``interface()`` tuples,
``init`` returning True or False, ``entry`` looping over ``inputs.video_in`` and assigning
``outputs.video_out[i]``, ``model.batch/flush/get_result/get/release_result`` into arrays made from
``get_dims()`` and ``get_type()``, and a module-level ``main()`` calling ``App().run()``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SDK = Path(__file__).resolve().parents[2] / "services" / "apps" / "sdk"

# A complete v0 app for the integration test (run by the apps service on YOLOX-Nano): the parameters
# `threshold` (float) and `person_model` (model), batch/flush/get_result on [1, 3, 416, 416] float32,
# one JSON line per camera and frame in storage, and video_out assigned per camera.
V0_PEOPLE_APP = """
import json

import cv2
import numpy as np
import panoramasdk

SIZE = 416
STORAGE = "/opt/aws/panorama/storage/v0.jsonl"


def preprocess(image):
    resized = cv2.resize(image, (SIZE, SIZE))
    return resized.transpose(2, 0, 1)[np.newaxis].astype(np.float32)  # BGR, 0-255: what YOLOX takes


def decode(raw, threshold):
    grids, strides = [], []
    for stride in (8, 16, 32):
        side = SIZE // stride
        ys, xs = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
        grids.append(np.stack((xs, ys), 2).reshape(-1, 2))
        strides.append(np.full((side * side, 1), stride))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    scores = raw[:, 4] * raw[:, 5]  # objectness x person
    keep = scores >= threshold
    xy = (raw[keep, :2] + grid[keep]) * stride[keep]
    wh = np.exp(np.minimum(raw[keep, 2:4], 10)) * stride[keep]
    boxes = np.clip(np.concatenate((xy - wh / 2, xy + wh / 2), 1) / SIZE, 0, 1)
    xywh = [[float(x1), float(y1), float(x2 - x1), float(y2 - y1)] for x1, y1, x2, y2 in boxes]
    picked = cv2.dnn.NMSBoxes(xywh, scores[keep].tolist(), threshold, 0.45)
    return boxes[np.asarray(picked, int).reshape(-1)]


class people_counter(panoramasdk.base):

    def interface(self):
        return {
            "parameters":
                (
                    ("float", "threshold", "Minimum person score", 0.5),
                    ("model", "person_model", "YOLOX-Nano, as imported in AWS Panorama", "yolox-nano"),
                    ("int", "batch_size", "Model batch size", 1),
                ),
            "inputs":
                (
                    ("media[]", "video_in", "Camera input stream"),
                ),
            "outputs":
                (
                    ("media[video_in]", "video_out", "Camera output stream"),
                )
        }

    def init(self, parameters, inputs, outputs):
        try:
            self.threshold = parameters.threshold
            self.frame_num = 0
            self.frames = [0] * len(inputs.video_in)
            print("Loading model: " + parameters.person_model)
            self.model = panoramasdk.model()
            self.model.open(parameters.person_model, parameters.batch_size)
            output_info = self.model.get_output(0)
            self.output_array = np.empty(output_info.get_dims(), dtype=output_info.get_type())
            self.storage = open(STORAGE, "a")
            print("Initialization complete: threshold={} cameras={}".format(self.threshold, len(self.frames)))
            return True
        except Exception as e:
            print("Exception: {}".format(e))
            return False

    def entry(self, inputs, outputs):
        self.frame_num += 1
        for i in range(len(inputs.video_in)):
            stream = inputs.video_in[i]
            self.model.batch(0, preprocess(stream.image))
            self.model.flush()
            result = self.model.get_result()
            outputs_count = result.size()
            result.get(0).get(0, self.output_array)
            self.model.release_result(result)

            boxes = decode(self.output_array[0], self.threshold)
            for left, top, right, bottom in boxes:
                stream.add_rect(left, top, right, bottom)
            stream.add_label("People detected: {}".format(len(boxes)), 0.02, 0.08)

            self.frames[i] += 1
            record = {"camera": stream.stream_id, "stream_uri": stream.stream_uri, "frame": self.frames[i],
                      "entry": self.frame_num, "output_shape": list(self.output_array.shape),
                      "outputs": outputs_count, "people": len(boxes), "threshold": self.threshold,
                      "cached": bool(stream.is_cached)}
            self.storage.write(json.dumps(record) + "\\n")
            self.storage.flush()
            outputs.video_out[i] = stream
        return True


def main():
    people_counter().run()


main()
"""

# The developer guide's people counter (GluonCV SSD: class, score and box outputs), as the samples wrote it.
SSD_PEOPLE_COUNTER = """
import numpy as np
import panoramasdk

HEIGHT = 64
WIDTH = 64
SEEN = {}


class people_counter(panoramasdk.base):

    def interface(self):
        return {
            "parameters":
                (
                    ("float", "threshold", "Minimum confidence for display", 0.10),
                    ("model", "people_counter", "Name of the model in AWS Panorama", "aws-panorama-sample-model"),
                    ("int", "batch_size", "Model batch size", 1),
                    ("float", "person_index", "The index of the person class in the model's dataset", 14),
                ),
            "inputs": (("media[]", "video_in", "Camera input stream"),),
            "outputs": (("media[video_in]", "video_out", "Camera output stream"),),
        }

    def init(self, parameters, inputs, outputs):
        try:
            self.threshold = parameters.threshold
            self.person_index = parameters.person_index
            self.frame_num = 0
            self.number_people = 0
            SEEN["parameters"] = (parameters.threshold, parameters.people_counter, parameters.batch_size,
                                  parameters.person_index)
            SEEN["cameras"] = len(inputs.video_in)
            self.model = panoramasdk.model()
            self.model.open(parameters.people_counter, 1)
            class_info = self.model.get_output(0)
            prob_info = self.model.get_output(1)
            rect_info = self.model.get_output(2)
            self.class_array = np.empty(class_info.get_dims(), dtype=class_info.get_type())
            self.prob_array = np.empty(prob_info.get_dims(), dtype=prob_info.get_type())
            self.rect_array = np.empty(rect_info.get_dims(), dtype=rect_info.get_type())
            return True
        except Exception as e:
            print("Exception: {}".format(e))
            return False

    def preprocess(self, img):
        resized = img[:HEIGHT, :WIDTH]
        img = resized.astype(np.float32) / 255.
        x1 = [[[], [], []]]
        x1[0][0] = (img[:, :, 0] - 0.485) / 0.229
        x1[0][1] = (img[:, :, 1] - 0.456) / 0.224
        x1[0][2] = (img[:, :, 2] - 0.406) / 0.225
        return np.asarray(x1)

    def get_number_persons(self, class_data, prob_data):
        person_indices = [i for i in range(len(class_data)) if int(class_data[i][0]) == self.person_index]
        return [i for i in person_indices if prob_data[i] >= self.threshold]

    def entry(self, inputs, outputs):
        self.frame_num += 1
        for i in range(len(inputs.video_in)):
            stream = inputs.video_in[i]
            x1 = self.preprocess(stream.image)
            self.model.batch(0, x1)
            self.model.flush()
            resultBatchSet = self.model.get_result()
            class_batch = resultBatchSet.get(0)
            prob_batch = resultBatchSet.get(1)
            rect_batch = resultBatchSet.get(2)
            class_batch.get(0, self.class_array)
            prob_batch.get(0, self.prob_array)
            rect_batch.get(0, self.rect_array)
            class_data = self.class_array[0]
            prob_data = self.prob_array[0]
            rect_data = self.rect_array[0]
            person_indices = self.get_number_persons(class_data, prob_data)
            self.number_people = len(person_indices)
            for index in person_indices:
                left = np.clip(rect_data[index][0] / float(WIDTH), 0, 1)
                top = np.clip(rect_data[index][1] / float(HEIGHT), 0, 1)
                right = np.clip(rect_data[index][2] / float(WIDTH), 0, 1)
                bottom = np.clip(rect_data[index][3] / float(HEIGHT), 0, 1)
                stream.add_rect(left, top, right, bottom)
                stream.add_label(str(prob_data[index][0]), right, bottom)
            stream.add_label('People detected: {}'.format(self.number_people), 0.8, 0.05)
            self.model.release_result(resultBatchSet)
            outputs.video_out[i] = stream
        return True


def main():
    people_counter().run()


main()
"""


class Stop(Exception):
    """The fake runtime's end of the video: how a test leaves ``run()``'s endless loop."""


class FakeMedia:
    """``panoramasdk.media`` as the runtime hands it out."""

    def __init__(self, camera: str, index: int, frame: int) -> None:
        self.image = np.full((64, 96, 3), 10 * index + frame, np.uint8)
        self.stream_id = camera
        self.stream_uri = f"rtsp://***@192.0.2.1/{camera}"
        self.time_stamp = (1_700_000_000 + frame, 0)
        self.is_cached = False
        self.labels: list[tuple[str, float, float]] = []
        self.rects: list[tuple[float, float, float, float]] = []

    def add_label(self, text: str, x1: float, y1: float) -> None:
        self.labels.append((text, float(x1), float(y1)))

    def add_rect(self, x1: float, y1: float, x2: float, y2: float) -> None:
        self.rects.append((float(x1), float(y1), float(x2), float(y2)))


Model = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, ...]]


def tensor(name: str, shape: list[int | None], dtype: str = "float32") -> dict[str, Any]:
    return {"name": name, "shape": shape, "dtype": dtype}


def ssd(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Three people (class 14, score 0.9) and 97 others, for every image in the batch."""
    n = len(feeds["data"])
    classes = np.full((n, 100, 1), 3.0, np.float32)
    classes[:, :3] = 14.0
    scores = np.full((n, 100, 1), 0.05, np.float32)
    scores[:, :3] = 0.9
    boxes = np.tile(np.array([8.0, 16.0, 32.0, 48.0], np.float32), (n, 100, 1))
    return classes, scores, boxes


def yolox(feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """Two people far apart in YOLOX's raw [n, 3549, 85] output; everything else scores 0."""
    raw = np.zeros((len(feeds["images"]), 3549, 85), np.float32)
    for row in (0, 1500):
        raw[:, row, :6] = [0.5, 0.5, 1.0, 1.5, 0.9, 0.9]
    return (raw,)


SSD_INFO = {
    "inputs": [tensor("data", [1, 3, 64, 64])],
    "outputs": [tensor("class", [1, 100, 1]), tensor("score", [1, 100, 1]), tensor("box", [1, 100, 4])],
}
YOLOX_INFO = {"inputs": [tensor("images", [1, 3, 416, 416])], "outputs": [tensor("output", [1, 3549, 85])]}


class FakeRuntime:
    """The runtime ``panoramasdk`` binds: ``frames`` sets of frames, then ``Stop``."""

    def __init__(
        self,
        models: Mapping[str, tuple[Mapping[str, Any], Model]],
        parameters: Mapping[str, object] | None = None,
        cameras: tuple[str, ...] = ("hall", "door"),
        frames: int = 3,
    ) -> None:
        self.cameras = list(cameras)
        self.parameters = dict(parameters or {})
        self.video_in, self.video_out = "video_in", "video_out"
        self.models = dict(models)
        self.frames = frames
        self.gets: list[list[FakeMedia]] = []
        self.puts: list[tuple[str, list[Any]]] = []
        self.calls: list[tuple[str, dict[str, np.ndarray]]] = []

    def get(self, port_name: str, timeout: float | None) -> list[FakeMedia]:
        assert (port_name, timeout) == (self.video_in, None)
        if len(self.gets) == self.frames:
            raise Stop
        streams = [FakeMedia(camera, i, len(self.gets)) for i, camera in enumerate(self.cameras)]
        self.gets.append(streams)
        return streams

    def put(self, port_name: str, streams: list[Any]) -> None:
        self.puts.append((port_name, list(streams)))

    def call(self, model_node_name: str, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
        self.calls.append((model_node_name, {name: array.copy() for name, array in feeds.items()}))
        return self.models[model_node_name][1](feeds)

    def model_info(self, model_node_name: str) -> Mapping[str, Any]:
        if model_node_name not in self.models:
            raise LookupError(f"model node {model_node_name!r} is not in apps.test.models ({sorted(self.models)})")
        return self.models[model_node_name][0]


@pytest.fixture
def v0(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """A fresh ``_panorama_v0``, and a ``panoramasdk`` that re-exports it as the real one does."""
    spec = importlib.util.spec_from_file_location("_panorama_v0", SDK / "_panorama_v0.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sdk = types.ModuleType("panoramasdk")
    for name in module.__all__:
        setattr(sdk, name, getattr(module, name))
    monkeypatch.setitem(sys.modules, "_panorama_v0", module)
    monkeypatch.setitem(sys.modules, "panoramasdk", sdk)
    return module


def run_app(v0: types.ModuleType, runtime: FakeRuntime, source: str) -> dict[str, Any]:
    """Runs an app's file as ``python3 app.py`` would, until the runtime's frames run out."""
    v0.bind(lambda: runtime)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    with pytest.raises(Stop):
        exec(compile(source, "app.py", "exec"), namespace)
    return namespace


def test_the_developer_guides_people_counter_runs_as_on_the_appliance(v0: types.ModuleType) -> None:
    runtime = FakeRuntime({"people_node": (SSD_INFO, ssd)}, {"threshold": 0.5, "people_counter": "people_node"})
    namespace = run_app(v0, runtime, SSD_PEOPLE_COUNTER)

    # site values win over interface() defaults, typed as declared: float 14 -> 14.0
    assert namespace["SEEN"] == {"parameters": (0.5, "people_node", 1, 14.0), "cameras": 2}
    assert [port for port, _ in runtime.puts] == ["video_out"] * 3
    for got, (_, put) in zip(runtime.gets, runtime.puts, strict=True):
        assert put == got  # the very media of video_in, in camera order
    hall = runtime.puts[0][1][0]
    assert hall.labels[-1] == ("People detected: 3", 0.8, 0.05)
    assert hall.rects == [(0.125, 0.25, 0.5, 0.75)] * 3
    assert len(runtime.calls) == 6  # one per camera and frame
    media = [stream for streams in runtime.gets for stream in streams]
    for (node, feeds), stream in zip(runtime.calls, media, strict=True):
        assert node == "people_node" and list(feeds) == ["data"]
        assert feeds["data"].shape == (1, 3, 64, 64) and feeds["data"].dtype == np.float32
        expected = (stream.image[0, 0, 0] / 255.0 - 0.485) / 0.229
        assert feeds["data"][0, 0, 0, 0] == pytest.approx(expected, rel=1e-6)


def test_the_integration_apps_writes_a_line_per_camera_and_frame(v0: types.ModuleType, tmp_path: Path) -> None:
    runtime = FakeRuntime({"model_node": (YOLOX_INFO, yolox)}, {"threshold": 0.3, "person_model": "model_node"})
    run_app(v0, runtime, V0_PEOPLE_APP.replace("/opt/aws/panorama/storage", str(tmp_path)))

    records = [json.loads(line) for line in (tmp_path / "v0.jsonl").read_text().splitlines()]
    assert [(r["camera"], r["frame"], r["entry"]) for r in records] == [
        (camera, frame, frame) for frame in (1, 2, 3) for camera in ("hall", "door")
    ]
    assert {r["people"] for r in records} == {2} and {r["threshold"] for r in records} == {0.3}
    assert records[0]["output_shape"] == [1, 3549, 85] and records[0]["outputs"] == 1
    assert records[0]["stream_uri"] == "rtsp://***@192.0.2.1/hall"
    assert [node for node, _ in runtime.calls] == ["model_node"] * 6
    fed = runtime.calls[1][1]["images"]
    assert fed.shape == (1, 3, 416, 416) and fed.dtype == np.float32 and np.all(fed == 10)  # door, frame 0
    door = runtime.puts[-1][1][1]
    assert door.labels == [("People detected: 2", 0.02, 0.08)] and len(door.rects) == 2


def test_init_returning_false_ends_the_app_with_a_message(
    v0: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    runtime = FakeRuntime({}, {"person_model": "missing_node"})
    v0.bind(lambda: runtime)
    namespace: dict[str, Any] = {}
    with pytest.raises(SystemExit) as ended:
        exec(compile(V0_PEOPLE_APP, "app.py", "exec"), namespace)
    assert ended.value.code == (
        "panoramasdk: people_counter.init() returned False: the app ends (its output above says why)"
    )
    assert "Exception: model node 'missing_node' is not in apps.test.models" in capsys.readouterr().out
    assert runtime.puts == [] and runtime.calls == []


def test_outputs_left_unassigned_are_the_input_media_and_a_false_entry_goes_on(
    v0: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    class App(v0.base):  # type: ignore[name-defined,misc]
        """Assigns camera 0's output only; every other entry fails. Its init is base's own."""

        entries = 0

        def interface(self) -> dict[str, Any]:
            return {"inputs": (("media[]", "cams", ""),), "outputs": (("media[cams]", "shown", ""),)}

        def entry(self, inputs: Any, outputs: Any) -> bool:
            App.entries += 1
            outputs.shown[0] = inputs.cams[0]
            inputs.cams[0].add_label("first", 0.1, 0.1)
            return App.entries % 2 == 0

    runtime = FakeRuntime({}, frames=4)
    v0.bind(lambda: runtime)
    with pytest.raises(Stop):
        App().run()
    assert [put for _, put in runtime.puts] == runtime.gets  # both cameras each time, camera 1 untouched
    assert [s.labels for s in runtime.puts[0][1]] == [[("first", 0.1, 0.1)], []]
    assert capsys.readouterr().err == (
        "panoramasdk: App.entry() returned False; the app goes on (False returns so far: 1)\n"
    )


def test_an_assignment_that_is_not_media_is_refused(v0: types.ModuleType) -> None:
    class App(v0.base):  # type: ignore[name-defined,misc]
        def interface(self) -> dict[str, Any]:
            return {"inputs": (("media[]", "video_in", ""),), "outputs": (("media[video_in]", "video_out", ""),)}

        def entry(self, inputs: Any, outputs: Any) -> bool:
            outputs.video_out[0] = inputs.video_in[0].image
            return True

    v0.bind(lambda: FakeRuntime({}))
    with pytest.raises(TypeError, match=r"outputs.video_out\[0\] takes a media of inputs, got ndarray"):
        App().run()


@pytest.mark.parametrize(
    ("kind", "value", "typed"),
    [
        ("float", 14, 14.0),
        ("float", 0.30000001192092896, 0.30000001192092896),  # a site float32 stays as the site gave it
        ("int", 3.0, 3),
        ("uint32", 2**32 - 1, 2**32 - 1),
        ("byte", 255, 255),
        ("bool", 1, True),
        ("bool", False, False),
        ("string", "lobby", "lobby"),
        ("model", "model_node", "model_node"),
        ("rect", [0, 0.5, 1, 1], (0.0, 0.5, 1.0, 1.0)),
    ],
)
def test_parameters_take_their_declared_type(v0: types.ModuleType, kind: str, value: object, typed: object) -> None:
    parameters = v0._Graph(interface(("p", kind, "", None)), "App").values({"p": value})
    assert parameters.p == typed and type(parameters.p) is type(typed)


@pytest.mark.parametrize(
    ("kind", "value", "error"),
    [
        ("int", 2.5, "parameter 'p': expected int, got 2.5"),
        ("byte", 256, "parameter 'p': expected byte, got 256"),
        ("float", True, "parameter 'p': expected float, got True"),
        ("string", 3, "parameter 'p': expected string, got 3"),
        ("double", 1.0, "parameter 'p': unknown type 'double'"),
    ],
)
def test_a_parameter_that_does_not_fit_is_refused(v0: types.ModuleType, kind: str, value: object, error: str) -> None:
    with pytest.raises(ValueError, match=error.replace("(", r"\(")):
        v0._Graph(interface(("p", kind, "", None)), "App").values({"p": value})


def interface(*parameters: tuple[str, str, str, object]) -> dict[str, Any]:
    """``(name, type, description, default)`` rows into v0's ``(type, name, description, default)``."""
    return {
        "parameters": tuple((kind, name, text, default) for name, kind, text, default in parameters),
        "inputs": (("media[]", "video_in", "Camera input stream"),),
        "outputs": (("media[video_in]", "video_out", "Camera output stream"),),
    }


def test_parameters_default_to_the_interface_and_name_what_they_have(
    v0: types.ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    graph = v0._Graph(interface(("threshold", "float", "", 0.1), ("title", "string", "", "people")), "App")
    parameters = graph.values({"threshold": 0.25, "extra": 1})
    assert (parameters.threshold, parameters.title) == (0.25, "people")
    with pytest.raises(AttributeError, match=r"no parameter 'tresh' in interface\(\): it declares \['thre"):
        parameters.tresh  # noqa: B018
    assert "site parameters ['extra'] are not in interface()" in capsys.readouterr().err


def test_what_edgesight_cannot_give_raises_not_implemented(v0: types.ModuleType) -> None:
    runtime = FakeRuntime({"people_node": (SSD_INFO, ssd)})
    v0.bind(lambda: runtime)
    with pytest.raises(NotImplementedError, match="parameter 'mask': a media parameter"):
        v0._Graph(interface(("mask", "media", "", None)), "App").values({})
    two_inputs = {"inputs": (("media[]", "a", ""), ("media[]", "b", "")), "outputs": (("media[a]", "o", ""),)}
    with pytest.raises(NotImplementedError, match=r"App.interface\(\): EdgeSight runs one 'media\[\]' input"):
        v0._Graph(two_inputs, "App")
    other_output = {"inputs": (("media[]", "a", ""),), "outputs": (("float", "o", ""),)}
    with pytest.raises(NotImplementedError, match=r"EdgeSight runs one 'media\[a\]' output"):
        v0._Graph(other_output, "App")
    opened = v0.model()
    opened.open("people_node", 1)
    with pytest.raises(NotImplementedError, match="no FourCC"):
        opened.get_input(0).get_four_cc()
    with pytest.raises(NotImplementedError, match="no input value range"):
        opened.get_input(0).get_range()


def test_a_model_describes_its_inputs_and_outputs(v0: types.ModuleType) -> None:
    v0.bind(lambda: FakeRuntime({"people_node": (SSD_INFO, ssd)}))
    opened = v0.model()
    opened.open("people_node", 1)
    assert (opened.get_batch_size(), opened.get_input_count(), opened.get_output_count()) == (1, 1, 3)
    assert (opened.get_input_names(), opened.get_output_names()) == (("data",), ("class", "score", "box"))
    data, box = opened.get_input(0), opened.get_output(2)
    assert (data.get_index(), data.get_name(), data.get_dims(), data.get_type()) == (0, "data", (1, 3, 64, 64), "f4")
    assert (box.get_index(), box.get_name(), box.get_dims(), box.get_size()) == (2, "box", (1, 100, 4), 1600)
    with pytest.raises(IndexError, match="model 'people_node': output 3 of 3"):
        opened.get_output(3)
    with pytest.raises(LookupError, match=r"model node 'elsewhere' is not in apps\.test\.models"):
        v0.model().open("elsewhere", 1)


def test_a_batch_of_two_on_a_batch_one_model_runs_item_by_item(v0: types.ModuleType) -> None:
    runtime = FakeRuntime({"people_node": (SSD_INFO, ssd)})
    v0.bind(lambda: runtime)
    opened = v0.model()
    opened.open("people_node", 2)
    opened.batch(0, np.zeros((1, 3, 64, 64), np.float32))
    opened.batch(0, np.ones((3, 64, 64), np.uint8))  # no batch dimension, and uint8: cast as the model takes
    opened.flush()
    assert [feeds["data"].shape for _, feeds in runtime.calls] == [(1, 3, 64, 64)] * 2
    assert runtime.calls[1][1]["data"].dtype == np.float32 and runtime.calls[1][1]["data"].max() == 1.0
    result = opened.get_result()
    assert result.size() == 3
    first, second = np.empty(opened.get_output(1).get_dims(), np.float32), np.empty((100, 1), np.float64)
    result.get(1).get(0, first)
    result.get(1).get(1, second)  # an array without the batch dimension, of a wider type
    assert first[0, 0, 0] == np.float32(0.9) and second[0, 0] == pytest.approx(0.9)
    with pytest.raises(IndexError, match="output 'score': item 2 of a result holding 2"):
        result.get(1).get(2, first)
    with pytest.raises(ValueError, match=r"output 'box': expected an array of shape \(1, 100, 4\), got \(1, 100\)"):
        result.get(2).get(0, np.empty((1, 100)))
    opened.release_result(result)
    with pytest.raises(RuntimeError, match="this result was given back by release_result"):
        result.get(0).get(0, first)


def test_a_model_refuses_what_it_cannot_run(v0: types.ModuleType) -> None:
    dynamic = {"inputs": [tensor("data", [None, 3, 8, 8])], "outputs": [tensor("boxes", [None, None, 4])]}
    runtime = FakeRuntime({"people_node": (SSD_INFO, ssd), "dynamic": (dynamic, lambda f: (np.zeros((1, 5, 4)),))})
    v0.bind(lambda: runtime)
    opened = v0.model()
    with pytest.raises(RuntimeError, match="model '' is not open"):
        opened.flush()
    opened.open("people_node", 1)
    with pytest.raises(RuntimeError, match=r"get_result\(\) without a flush\(\) before it"):
        opened.get_result()
    with pytest.raises(ValueError, match=r"flush\(\) needs the same number of items on every input, got \{'data': 0\}"):
        opened.flush()
    with pytest.raises(ValueError, match=r"input 'data': expected shape \[1, 3, 64, 64\], got \[1, 3, 64, 60\]"):
        opened.batch(0, np.zeros((1, 3, 64, 60), np.float32))
    with pytest.raises(TypeError, match="input 'data': expected float32, got complex128"):
        opened.batch(0, np.zeros((1, 3, 64, 64), complex))
    opened.batch(0, np.zeros(2 * 3 * 64 * 64, np.float32))  # two items' worth of elements: reshaped, as Neo did
    with pytest.raises(ValueError, match="opened with batch_size 1, got 2 items"):
        opened.flush()
    with pytest.raises(TypeError, match=r"release_result\(\) takes what get_result\(\) returned, got dict"):
        opened.release_result({})
    opened.finish()
    with pytest.raises(RuntimeError, match="model 'people_node' is not open"):
        opened.get_result()

    growing = v0.model()
    growing.open("dynamic", 1)
    with pytest.raises(ValueError, match=r"dynamic shape \[None, None, 4\]: its dims are known after the first flush"):
        growing.get_output(0).get_dims()
    growing.batch(0, np.zeros((3, 8, 8), np.float32))
    growing.flush()
    assert growing.get_output(0).get_dims() == (1, 5, 4)


def test_an_unbound_sdk_says_who_binds_it_and_an_app_needs_an_interface(v0: types.ModuleType) -> None:
    with pytest.raises(RuntimeError, match=r"panoramasdk calls _panorama_v0.bind\(\) first"):
        v0.model().open("people_node", 1)

    class App(v0.base):  # type: ignore[name-defined,misc]
        pass

    v0.bind(lambda: FakeRuntime({}))
    with pytest.raises(NotImplementedError, match=r"App defines no interface\(\)"):
        App().run()

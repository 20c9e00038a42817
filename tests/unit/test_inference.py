"""The inference code path on the real shared models and clip: detections, agreement, load-time errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.config import ModelConfig
from common.errors import ModelError
from common.models.engine_cache import engine_cache_key
from common.models.loading import load_model_spec
from common.models.manifest import suggest_manifest
from common.models.tensorrt_build import profile_shapes
from services.inference.detector import Detector, FrameDetections
from tests.media import frame_at
from tests.support import frame_ref


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # type: ignore[type-arg]
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area = lambda boxes: np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def frame60(shared_dir: Path) -> np.ndarray:  # type: ignore[type-arg]
    return frame_at(shared_dir / "media" / "people.mp4", 60)


@pytest.fixture(scope="module")
def yolox(frame60: np.ndarray) -> FrameDetections:  # type: ignore[type-arg]
    detector = Detector.from_config(ModelConfig(path="yolox_nano.onnx", score_threshold=0.3))
    return detector.detect([frame60])[0][0]


@pytest.fixture(scope="module")
def yolov8(frame60: np.ndarray) -> tuple[Detector, FrameDetections]:  # type: ignore[type-arg]
    detector = Detector.from_config(ModelConfig(path="yolov8n_int8.onnx", score_threshold=0.3))
    return detector, detector.detect([frame60])[0][0]


def persons(result: FrameDetections) -> np.ndarray:  # type: ignore[type-arg]
    return result.boxes[result.class_ids == 0]  # type: ignore[no-any-return]


def test_yolox_finds_the_crowd(yolox: FrameDetections) -> None:
    assert len(persons(yolox)) >= 15
    assert (yolox.scores >= 0.3).all()
    boxes = yolox.boxes
    assert ((boxes >= 0) & (boxes <= 1)).all()
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
    for cls in np.unique(yolox.class_ids):
        same = boxes[yolox.class_ids == cls]
        overlaps = iou_matrix(same, same)
        np.fill_diagonal(overlaps, 0)
        assert overlaps.max(initial=0) <= 0.7


def test_yolov8_int8_finds_the_crowd_with_labels_from_its_metadata(yolov8: tuple[Detector, FrameDetections]) -> None:
    detector, result = yolov8
    assert detector.spec.manifest.labels is None  # nothing given: read from the ONNX metadata
    assert detector.labels[:3] == ["person", "bicycle", "car"] and len(detector.labels) == 80
    assert len(persons(result)) >= 20


def test_the_two_models_agree(yolox: FrameDetections, yolov8: tuple[Detector, FrameDetections]) -> None:
    ours, theirs = persons(yolox), persons(yolov8[1])
    matched = (iou_matrix(ours, theirs).max(axis=1) >= 0.5).sum()
    assert matched >= 0.6 * len(ours), f"{matched} of {len(ours)}"


def test_suggested_manifests(shared_dir: Path) -> None:
    yolox = suggest_manifest(shared_dir / "models" / "yolox_nano.onnx")
    assert (yolox.decoder, yolox.input_size, yolox.color, yolox.scale, yolox.letterbox, yolox.labels) == (
        "yolox",
        (416, 416),
        "bgr",
        1.0,
        "top_left",
        "coco80",
    )
    yolov8 = suggest_manifest(shared_dir / "models" / "yolov8n_int8.onnx")
    assert (yolov8.decoder, yolov8.input_size, yolov8.color, yolov8.labels) == ("yolov8", (640, 640), "rgb", None)


def test_corrupt_model_fails_at_load(tmp_path: Path, shared_dir: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes((shared_dir / "models" / "yolox_nano.onnx").read_bytes()[:100_000])
    with pytest.raises(ModelError, match=r"broken\.onnx is not a loadable ONNX model"):
        Detector.from_config(ModelConfig(path=str(broken)))


def write_manifest(folder: Path, model: Path, **fields: object) -> Path:
    import yaml

    (folder / model.name).write_bytes(model.read_bytes())
    manifest = {"name": "people", "version": "3", "file": model.name, "decoder": "yolox", **fields}
    path = folder / "people.yaml"
    path.write_text(yaml.safe_dump(manifest))
    return path


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"input_size": [640, 640]}, r"input_size \[640, 640\] \(width, height\) does not match the model's input"),
        ({"decoder": "yolov8"}, r"decoder yolov8 expects \[batch, 4 \+ classes, anchors\]"),
        ({"labels": ["person", "car"]}, "has 80 classes but 2 labels"),
        ({"decoder": "ssd"}, "decoder: Input should be 'yolox', 'yolov8' or 'end2end'"),
        ({"file": "missing.onnx"}, "file 'missing.onnx' does not exist beside the manifest"),
        (  # a label becomes part of events and count topics: the contract's label pattern applies at load
            {"labels": [*(f"class_{i}" for i in range(79)), "forklift/#"]},
            r"label 'forklift/#' is not letters, digits, space",
        ),
    ],
)
def test_manifest_that_does_not_fit_the_model_fails_at_load(
    tmp_path: Path, shared_dir: Path, fields: dict[str, object], message: str
) -> None:
    manifest = write_manifest(tmp_path, shared_dir / "models" / "yolox_nano.onnx", **{"labels": "coco80", **fields})
    with pytest.raises(ModelError, match=message):
        load_model_spec(manifest)


def test_a_good_manifest_loads_with_its_version(tmp_path: Path, shared_dir: Path) -> None:
    manifest = write_manifest(
        tmp_path,
        shared_dir / "models" / "yolox_nano.onnx",
        labels="coco80",
        color="bgr",
        scale=1.0,
        letterbox="top_left",
        classes=["person"],
    )
    detector = Detector.from_config(ModelConfig(path=str(manifest)))
    assert (detector.name, detector.version, detector.max_batch) == ("people", "3", 1)
    result, _ = detector.detect([np.full((480, 854, 3), 90, np.uint8)])
    assert set(result[0].class_ids.tolist()) <= {0}
    with pytest.raises(ModelError, match=r"has no classes \['forklift'\]"):
        Detector.from_config(ModelConfig(path=str(manifest), classes=["forklift"]))


def test_tensorrt_engine_cache_key_changes_with_what_invalidates_an_engine() -> None:
    orin_nano, agx_orin = "Orin sm8.7 8SM 7GiB", "Orin sm8.7 16SM 61GiB"  # both call themselves "Orin"
    base = engine_cache_key("abc", (416, 416), "10.3.0", orin_nano, 1, True)
    assert base.endswith(".cached-engine")
    assert base == engine_cache_key("abc", (416, 416), "10.3.0", orin_nano, 1, True)
    others = {
        engine_cache_key("abd", (416, 416), "10.3.0", orin_nano, 1, True),
        engine_cache_key("abc", (640, 416), "10.3.0", orin_nano, 1, True),  # one model file run at another size
        engine_cache_key("abc", (416, 416), "10.4.0", orin_nano, 1, True),
        engine_cache_key("abc", (416, 416), "10.3.0", agx_orin, 1, True),
        engine_cache_key("abc", (416, 416), "10.3.0", orin_nano, 8, True),
        engine_cache_key("abc", (416, 416), "10.3.0", orin_nano, 1, False),
    }
    assert base not in others and len(others) == 6


def test_tensorrt_profile_shapes() -> None:
    assert profile_shapes((1, 3, 416, 416), 8) == ((1, 3, 416, 416),) * 3
    assert profile_shapes(("batch", 3, 640, 640), 8) == ((1, 3, 640, 640), (8, 3, 640, 640), (8, 3, 640, 640))
    assert profile_shapes((-1, 3, "h", "w"), 4, (320, 256))[2] == (4, 3, 256, 320)
    with pytest.raises(ModelError, match="the input's height is dynamic"):
        profile_shapes((1, 3, "h", 640), 1)
    with pytest.raises(ModelError, match=r"expected an image input"):
        profile_shapes((1, 640, 640), 1)


def test_tensorrt_backend_without_tensorrt_says_how_to_get_it() -> None:
    with pytest.raises(
        ModelError, match=r"venv --system-site-packages \.venv && \.venv/bin/pip install -e '\.\[jetson\]'"
    ):
        Detector.from_config(ModelConfig(path="yolox_nano.onnx", backend="tensorrt"))


def test_missing_execution_provider_falls_back_loudly(caplog: pytest.LogCaptureFixture) -> None:
    detector = Detector.from_config(ModelConfig(path="yolox_nano.onnx", providers=["CUDAExecutionProvider"]))
    assert detector.backend.provider == "CPUExecutionProvider"
    assert "execution provider unavailable" in caplog.text


def test_a_stale_slot_is_skipped_and_counted(tmp_path: Path, frame60: np.ndarray) -> None:  # type: ignore[type-arg]
    from prometheus_client import REGISTRY

    from common.config import parse_config
    from common.shm import FrameRingWriter, frame_bytes
    from services.inference.batch import BatchRunner

    config = parse_config(
        f"site: {{name: t, shm_dir: {tmp_path}}}\n"
        "models: {people: {path: yolox_nano.onnx}}\n"
        "cameras: {gate: {url: rtsp://camera/1}}\n"
    )
    batches = BatchRunner(config)
    detector = Detector.from_config(config.models["people"])
    stale_count = {"model": "people", "reason": "stale"}
    before = REGISTRY.get_sample_value("edgesight_inference_frames_skipped_total", stale_count) or 0.0
    with FrameRingWriter.create(
        "t", "gate", slots=2, capacity=frame_bytes("bgr24", 854, 480), shm_dir=tmp_path
    ) as ring:
        overwritten = ring.write(frame60)
        ring.write(frame60)
        fresh = ring.write(frame60)  # lands in the slot `overwritten` named
        results = batches.infer("people", detector, [overwritten, fresh])
    assert [d.frame.seq for d in results] == [fresh.seq]
    assert len(results[0].scores.to_numpy()) >= 15
    assert REGISTRY.get_sample_value("edgesight_inference_frames_skipped_total", stale_count) == before + 1


def test_replicas_split_the_cameras() -> None:
    from common.config import INFERENCE_SHARD_VARIABLE, parse_config
    from common.errors import ConfigError
    from services.inference.shard import assignment, parse_shard

    config = parse_config(
        "site: {name: t}\n"
        "models: {people: {path: a.onnx}, vests: {path: b.onnx}}\n"
        "cameras:\n"
        "  a: {url: rtsp://h/a, models: [people]}\n"
        "  b: {url: rtsp://h/b}\n"
        "  c: {url: rtsp://h/c, models: [vests]}\n"
    )
    shares = [assignment(config, (index, 2)) for index in range(2)]
    assert shares == [{"a": ["people"], "c": ["vests"]}, {"b": ["people", "vests"]}]
    for bad in ("2/2", "x", "1/0"):
        with pytest.raises(ConfigError, match=INFERENCE_SHARD_VARIABLE):
            parse_shard(bad)


def test_a_replica_takes_the_replica_count_from_the_site_file(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compose and k3s give a replica its number only; how many there are is the site file's to say."""
    from common.config import INFERENCE_SHARD_VARIABLE, parse_config
    from common.errors import ConfigError
    from services.inference.service import InferenceService
    from services.inference.shard import INFERENCE_REPLICA_VARIABLE, replica_shard

    config = parse_config("site: {name: t}\nrun: {inference_replicas: 3}\n")
    assert replica_shard({}, config) == (0, 1)  # one process, started by hand: every camera
    assert replica_shard({INFERENCE_REPLICA_VARIABLE: "2"}, config) == (2, 3)
    assert replica_shard({INFERENCE_SHARD_VARIABLE: "1/2", INFERENCE_REPLICA_VARIABLE: "2"}, config) == (1, 2)
    for bad in ("3", "-1", "x", ""):
        with pytest.raises(ConfigError, match=rf"{INFERENCE_REPLICA_VARIABLE}=.*run\.inference_replicas is 3"):
            replica_shard({INFERENCE_REPLICA_VARIABLE: bad}, config)
    monkeypatch.delenv(INFERENCE_SHARD_VARIABLE, raising=False)
    monkeypatch.setenv(INFERENCE_REPLICA_VARIABLE, "1")
    assert InferenceService(config).shard == (1, 3)


def test_still_frames_are_skipped_but_every_camera_is_rechecked(monkeypatch: pytest.MonkeyPatch) -> None:
    from common.config import parse_config
    from contracts import FrameRef
    from services.inference import worker as inference

    config = parse_config(
        "site: {name: t}\n"
        "models: {people: {path: yolox_nano.onnx, skip_still_frames: true, recheck_s: 5, min_motion: 0.01}}\n"
        "cameras: {gate: {url: rtsp://camera/1}}\n"
    )
    clock = [1000.0]
    monkeypatch.setattr(inference.time, "monotonic", lambda: clock[0])

    def unused(*args: object, **kwargs: object) -> Any:
        raise AssertionError("offer() calls nothing outside the worker")

    links = inference.WorkerLinks(infer=unused, publish=unused, load=unused, audit=unused)
    worker = inference.ModelWorker(
        "people", config.models["people"], [Detector.from_config(config.models["people"])], links
    )

    def ref(seq: int, motion: float) -> FrameRef:
        return frame_ref("gate", seq, monotonic_ns=seq, motion=motion)

    worker.offer(ref(0, 0.0))  # never run before: a still frame still goes
    assert worker.pending["gate"].seq == 0
    worker.pending.clear()
    worker.last_run["gate"] = clock[0]
    clock[0] += 1
    worker.offer(ref(1, 0.0))  # still, and run a second ago: skipped
    assert "gate" not in worker.pending
    worker.offer(ref(2, 0.5))  # motion: runs
    assert worker.pending["gate"].seq == 2
    worker.pending.clear()
    clock[0] += 5
    worker.offer(ref(3, 0.0))  # still, but not run for 5 s: rechecked
    assert worker.pending["gate"].seq == 3

"""Pre- and post-processing against plain implementations: the letterbox, whatever frames came before,
and the pruned decode, NMS and ordering, frame by frame of the shared clip; readers per thread."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from common.config import ModelConfig, parse_config
from common.models.manifest import YOLOX_STRIDES, ModelManifest
from common.shm import FrameRingWriter, frame_bytes
from services.inference.batch import BatchRunner
from services.inference.detector import Detector, FrameDetections
from services.inference.processing import Letterbox
from tests.media import frame_at

Image = npt.NDArray[np.uint8]
Floats = npt.NDArray[np.float32]


def plain_letterbox(frame: Image, manifest: ModelManifest, side: int) -> Floats:
    """The model's input the obvious way: a padded canvas, the resized frame on it, channels first."""
    height, width = frame.shape[:2]
    ratio = min(side / width, side / height)
    new_w, new_h = max(1, round(width * ratio)), max(1, round(height * ratio))
    x0, y0 = ((side - new_w) // 2, (side - new_h) // 2) if manifest.letterbox == "center" else (0, 0)
    canvas = np.full((side, side, 3), manifest.pad_value, np.uint8)
    canvas[y0 : y0 + new_h, x0 : x0 + new_w] = cv2.resize(frame, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    if manifest.color == "rgb":
        canvas = canvas[..., ::-1]
    scaled = canvas.transpose(2, 0, 1).astype(np.float32) * np.float32(manifest.scale)
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in (manifest.mean, manifest.std))
    return (scaled - mean) / std  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("letterbox", "color", "scale", "mean", "size"),
    [
        ("top_left", "bgr", 1.0, (0.0, 0.0, 0.0), (480, 854)),  # YOLOX: resized straight into the canvas
        ("center", "rgb", 1 / 255, (0.0, 0.0, 0.0), (480, 854)),
        ("center", "rgb", 1 / 255, (0.485, 0.456, 0.406), (900, 600)),  # taller than wide: a column band
        ("top_left", "rgb", 1 / 255, (0.0, 0.0, 0.0), (416, 416)),  # exactly the input size
    ],
)
def test_letterbox_matches_a_plain_implementation(
    letterbox: str, color: str, scale: float, mean: tuple[float, float, float], size: tuple[int, int]
) -> None:
    manifest = ModelManifest(
        name="m", file="m.onnx", decoder="yolox", letterbox=letterbox, color=color, scale=scale, mean=mean
    )
    frame = np.random.default_rng(3).integers(0, 255, (*size, 3), dtype=np.uint8)
    boxer = Letterbox(manifest, 416, 416)
    out = boxer.batch(1)[0]
    out.fill(-1)  # whatever a previous frame left
    boxer.place(frame, out)
    assert np.allclose(out, plain_letterbox(frame, manifest, 416), atol=1e-5)


@pytest.mark.parametrize("letterbox", ["top_left", "center"])
def test_a_batch_row_is_right_whatever_frame_sizes_came_before(letterbox: str) -> None:
    """The padding of a batch row is written once per frame size: after a frame of another size
    (a band of other rows, a column band, the full input), every row is right again."""
    manifest = ModelManifest(
        name="m", file="m.onnx", decoder="yolox", letterbox=letterbox, color="rgb", scale=1 / 255, mean=(0.4,) * 3
    )
    boxer = Letterbox(manifest, 64, 64)
    row = boxer.batch(2)[1]
    foreign = np.full((3, 64, 64), -1, np.float32)  # not one of the letterbox's batches: padded every time
    rng = np.random.default_rng(7)
    for size in [(36, 64), (36, 64), (20, 64), (64, 40), (36, 64), (64, 64), (36, 64)]:
        frame = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        boxer.place(frame, row, "bgr")
        assert np.allclose(row, plain_letterbox(frame, manifest, 64), atol=1e-6)
        foreign.fill(-1)
        boxer.place(frame, foreign, "rgb")  # the same pixels taken as RGB: the model sees them swapped
        assert np.allclose(foreign, plain_letterbox(np.ascontiguousarray(frame[..., ::-1]), manifest, 64), atol=1e-6)


def plain_detections(detector: Detector, frame: Image) -> FrameDetections:
    """What the detector must find, decoded the plain way: every anchor, then the thresholds, NMS per
    class and best first, on the same model outputs."""
    manifest, side = detector.spec.manifest, detector.backend.input_width
    tensor = plain_letterbox(frame, manifest, side)[None]
    raw = detector.backend.run(tensor)[0][0].astype(np.float32)
    if manifest.decoder == "yolox":
        cells, strides = [], []
        for stride in YOLOX_STRIDES:
            ys, xs = np.meshgrid(np.arange(side // stride), np.arange(side // stride), indexing="ij")
            cells.append(np.stack((xs, ys), -1).reshape(-1, 2))
            strides.append(np.full((cells[-1].shape[0], 1), stride))
        grid, stride = np.concatenate(cells).astype(np.float32), np.concatenate(strides).astype(np.float32)
        xy, wh = (raw[:, :2] + grid) * stride, np.exp(raw[:, 2:4]) * stride
        class_scores = raw[:, 5:] * raw[:, 4:5]
    else:  # yolov8: [4 + C, N]
        xy, wh, class_scores = raw[:2].T, raw[2:4].T, raw[4:].T
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    class_ids = class_scores.argmax(axis=1).astype(np.int32)
    scores = class_scores[np.arange(len(class_ids)), class_ids]
    passed = scores >= detector.score_threshold
    boxes, class_ids, scores = boxes[passed], class_ids[passed], scores[passed]
    xywh = np.concatenate((boxes[:, :2], boxes[:, 2:] - boxes[:, :2]), axis=1)
    kept = np.asarray(
        cv2.dnn.NMSBoxesBatched(xywh.tolist(), scores.tolist(), class_ids.tolist(), 0.0, detector.nms_iou), np.intp
    ).reshape(-1)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    height, width = frame.shape[:2]
    ratio = min(side / width, side / height)
    x0, y0 = ((side - round(width * ratio)) // 2, (side - round(height * ratio)) // 2)
    pad = np.asarray([x0, y0] * 2, np.float32) if manifest.letterbox == "center" else np.zeros(4, np.float32)
    size = np.asarray([width, height] * 2, np.float32) * np.float32(ratio)
    return FrameDetections(np.clip((boxes[kept] - pad) / size, 0, 1), class_ids[kept], scores[kept])


@pytest.fixture(scope="module")
def clip_frames(shared_dir: Path) -> list[Image]:
    return [frame_at(shared_dir / "media" / "people.mp4", index) for index in (0, 60, 150, 300)]


@pytest.mark.parametrize(("model", "threshold"), [("yolox_nano.onnx", 0.3), ("yolov8n_int8.onnx", 0.25)])
def test_the_pruned_decode_finds_what_decoding_every_anchor_finds(
    model: str, threshold: float, clip_frames: list[Image]
) -> None:
    detector = Detector.from_config(ModelConfig(path=model, score_threshold=threshold, threads=1))
    for frame in clip_frames:
        expected = plain_detections(detector, frame)
        (found,), _ = detector.detect([frame])
        assert len(expected.scores) >= 5
        assert found.class_ids.tolist() == expected.class_ids.tolist()
        assert np.allclose(found.scores, expected.scores, atol=1e-6)
        assert np.allclose(found.boxes, expected.boxes, atol=1e-4)


def test_batches_of_one_model_run_on_several_threads_at_once(tmp_path: Path, clip_frames: list[Image]) -> None:
    """Two engines of a model on two threads through one runner: each thread reads shared memory
    through its own readers, and every frame gets the detections it gets alone."""
    config = parse_config(
        f"site: {{name: t, shm_dir: {tmp_path}}}\n"
        "models: {people: {path: yolox_nano.onnx, threads: 1}}\n"
        "cameras: {gate: {url: rtsp://camera/1}}\n"
    )
    runner = BatchRunner(config)
    engines = [Detector.from_config(config.models["people"]) for _ in range(2)]
    expected = [engines[0].detect([frame])[0][0] for frame in clip_frames]
    mismatches: list[str] = []
    readers: dict[int, object] = {}
    with FrameRingWriter.create(
        "t", "gate", slots=8, capacity=frame_bytes("bgr24", 854, 480), shm_dir=tmp_path
    ) as ring:
        refs = [ring.write(frame) for frame in clip_frames]

        def run(engine: Detector) -> None:
            readers[threading.get_ident()] = runner._reader(refs[0].segment)
            for _ in range(3):
                for ref, wanted in zip(refs, expected, strict=True):
                    (detections,) = runner.infer("people", engine, [ref])
                    if not np.allclose(detections.boxes.to_numpy(), wanted.boxes, atol=1e-6):
                        mismatches.append(f"frame {ref.seq} on {threading.get_ident()}")

        threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert mismatches == []
    assert len(readers) == 2 and len({id(reader) for reader in readers.values()}) == 2
    assert runner.inference_ms()["people"] > 0

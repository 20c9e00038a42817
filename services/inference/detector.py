"""One model, ready to run: the code path shared by the service and ``edgesight detect``."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from common.config import ModelConfig
from common.errors import ModelError
from common.models import Backend, open_backend
from common.models.loading import ModelSpec, load_model_spec
from common.models.sizing import cpu_threads
from common.shm import ChannelOrder
from common.trust import TrustPolicy
from services.inference.processing import Letterbox, Placement, decode_outputs, nms_per_class, to_source

__all__ = ["Detector", "FrameDetections", "Timing"]


@dataclasses.dataclass(frozen=True)
class FrameDetections:
    boxes: npt.NDArray[np.float32]  # [N, 4] xyxy, 0..1 of the source frame
    class_ids: npt.NDArray[np.int32]
    scores: npt.NDArray[np.float32]


@dataclasses.dataclass(frozen=True)
class Timing:
    preprocess_ns: int
    inference_ns: int
    postprocess_ns: int
    batch_size: int


class Detector:
    def __init__(
        self,
        spec: ModelSpec,
        backend: Backend,
        *,
        score_threshold: float | None = None,
        nms_iou: float | None = None,
        classes: Sequence[str] = (),
    ) -> None:
        self.spec = spec
        self.backend = backend
        manifest = spec.manifest
        self.name = manifest.name
        self.version = manifest.version
        self.labels = spec.labels
        self.score_threshold = manifest.score_threshold if score_threshold is None else score_threshold
        self.nms_iou = manifest.nms_iou if nms_iou is None else nms_iou
        wanted = list(classes) or manifest.classes
        unknown = sorted(set(wanted) - set(self.labels))
        if unknown:
            raise ModelError(f"model {self.name!r} has no classes {unknown} (it has {len(self.labels)} labels)")
        self.keep = np.asarray([self.labels.index(c) for c in wanted], np.int32) if wanted else None
        self.letterbox = Letterbox(manifest, backend.input_width, backend.input_height)
        # Fail at load, not at the first frame: one dummy run checks shapes end to end.
        self.detect([np.zeros((backend.input_height, backend.input_width, 3), np.uint8)])

    @classmethod
    def from_config(
        cls,
        config: ModelConfig,
        asset_paths: tuple[Path, ...] = (),
        trust: TrustPolicy | None = None,
        what: str = "the model",
    ) -> Detector:
        spec = load_model_spec(config.path, asset_paths, trust, allow_unsigned=config.allow_unsigned, what=what)
        # logs and metrics of the backend (a build, a fallback) name the model as the site file does
        file = (
            dataclasses.replace(spec.file(), name=what.removeprefix("models."))
            if what.startswith("models.")
            else spec.file()
        )
        backend = open_backend(
            file, config.backend, config.providers, max_batch=config.max_batch, threads=cpu_threads(config)
        )
        try:
            return cls(
                spec, backend, score_threshold=config.score_threshold, nms_iou=config.nms_iou, classes=config.classes
            )
        except BaseException:
            backend.close()  # a GPU backend's buffers and stream: a refused model must not keep them
            raise

    @property
    def max_batch(self) -> int:
        return self.backend.max_batch

    def detect(
        self, frames: Sequence[npt.NDArray[np.uint8]], orders: Sequence[ChannelOrder] | None = None
    ) -> tuple[list[FrameDetections], list[Timing]]:
        """Detections per frame (HxWx3, BGR unless ``orders`` says each frame's channel order), run in
        batches of at most the model's batch size."""
        results: list[FrameDetections] = []
        timings: list[Timing] = []
        step = max(1, self.backend.max_batch)
        every: Sequence[ChannelOrder] = orders if orders is not None else ["bgr"] * len(frames)
        for start in range(0, len(frames), step):
            chunk = frames[start : start + step]
            t0 = time.perf_counter_ns()
            tensor = self.letterbox.batch(step if self.backend.static_batch else len(chunk))
            placements = [self.letterbox.place(frame, tensor[i], every[start + i]) for i, frame in enumerate(chunk)]
            t1 = time.perf_counter_ns()
            outputs = self.backend.run(tensor)  # a static batch's unused rows hold older frames: ignored
            t2 = time.perf_counter_ns()
            results.extend(self._postprocess(outputs, i, placement) for i, placement in enumerate(placements))
            t3 = time.perf_counter_ns()
            timings.append(Timing(t1 - t0, t2 - t1, t3 - t2, len(chunk)))
        return results, timings

    def _postprocess(self, outputs: list[npt.NDArray[np.generic]], index: int, placement: Placement) -> FrameDetections:
        boxes, class_ids, scores = decode_outputs(
            self.spec.manifest,
            outputs,
            index,
            self.backend.input_width,
            self.backend.input_height,
            self.score_threshold,
        )
        mask = scores >= self.score_threshold
        if self.keep is not None:
            mask &= np.isin(class_ids, self.keep)
        selected = np.flatnonzero(mask)
        kept = selected[nms_per_class(boxes[selected], class_ids[selected], scores[selected], self.nms_iou)]
        kept = kept[np.argsort(-scores[kept], kind="stable")]  # best first
        return FrameDetections(
            to_source(boxes[kept], placement),
            class_ids[kept].astype(np.int32, copy=False),
            scores[kept].astype(np.float32, copy=False),
        )

    def close(self) -> None:
        self.backend.close()

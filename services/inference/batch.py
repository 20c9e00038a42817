"""One batch of FrameRefs through a model: frames read zero-copy from shared memory, privacy masks
where a camera asks for them, the detector, and one Detections per frame that was not overwritten
meanwhile. Runs on worker threads: several at once, for one model's engines as for several models."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import numpy.typing as npt

from common.config import SiteConfig
from common.errors import ShmError, StaleFrameError
from common.models import Backend
from common.privacy import apply_privacy_masks
from common.shm import ChannelOrder, FrameReaders, FrameRingReader, FrameView, colour_view
from contracts import Detections, FrameRef, InferenceTiming
from services.inference import metrics
from services.inference.detector import Detector, FrameDetections, Timing

__all__ = ["BatchRunner"]

log = logging.getLogger(__name__)

MAX_UNREADABLE_LOGGED = 1024  # segments whose read error is remembered, so that each is logged once


class BatchRunner:
    """Runs batches for every model of the service, from any number of threads at once (each call with
    its own detector: an engine runs one batch at a time)."""

    def __init__(self, config: SiteConfig) -> None:
        self.config = config
        self._local = threading.local()  # .readers: this thread's FrameReaders (a reader is one thread's)
        self._lock = threading.Lock()  # guards what threads share: the smoothed times, the errors logged
        self._unreadable: dict[str, str] = {}  # segment -> the error last logged for it
        self._inference_ms: dict[str, float] = {}  # model -> smoothed backend time per frame

    def infer(self, model: str, detector: Detector, refs: list[FrameRef]) -> list[Detections]:
        """Views into shared memory, one batch through ``model``, torn reads dropped (blocking).

        ``model`` is the site's name for it (``models.<name>``), what Detections and metrics carry."""
        views = self._views(model, refs)
        if not views:
            return []
        started = time.perf_counter()
        inputs = [self._model_input(view) for view in views]
        results, timings = detector.detect([frame for frame, _ in inputs], [order for _, order in inputs])
        metrics.PIPELINE_SECONDS.labels(model).observe(time.perf_counter() - started)
        self._observe(model, detector.backend, timings)
        # Every frame carries the first chunk's timing: the batch is one chunk unless it outgrew the model's batch.
        first_chunk = _inference_timing(timings[0], detector.backend)
        messages = []
        for view, result in zip(views, results, strict=True):
            if not view.valid():  # overwritten while it was letterboxed: the result may mix two frames
                metrics.SKIPPED.labels(model, "stale").inc()
                continue
            metrics.FRAMES.labels(model).inc()
            messages.append(_detections(view.ref, model, detector, result, first_chunk))
        return messages

    def inference_ms(self) -> dict[str, float]:
        """Model -> smoothed backend milliseconds per frame, for Health."""
        with self._lock:
            return dict(self._inference_ms)

    def _views(self, model: str, refs: list[FrameRef]) -> list[FrameView]:
        """The frames still in their slots; the others counted as skipped (``stale``, ``rejected``)."""
        views: list[FrameView] = []
        now = time.monotonic_ns()
        for ref in refs:
            try:
                views.append(self._reader(ref.segment).view(ref))
            except StaleFrameError:
                metrics.SKIPPED.labels(model, "stale").inc()
            except ShmError as exc:  # a forged, missing or foreign segment: not a frame we can trust
                metrics.SKIPPED.labels(model, "rejected").inc()
                if self._first_report(ref.segment, str(exc)):
                    log.warning("cannot read frame", extra={"camera": ref.camera, "error": str(exc)})
            else:
                metrics.FRAME_AGE.labels(model).observe(max(0, now - ref.monotonic_ns) / 1e9)
        return views

    def _first_report(self, segment: str, error: str) -> bool:
        """True the first time ``segment`` fails with ``error``: logged once per segment and reason."""
        with self._lock:
            if self._unreadable.get(segment) == error or len(self._unreadable) >= MAX_UNREADABLE_LOGGED:
                return False
            self._unreadable[segment] = error
            return True

    def _observe(self, model: str, backend: Backend, timings: list[Timing]) -> None:
        for timing in timings:
            metrics.BATCH_SIZE.labels(model).observe(timing.batch_size)
            labels = (model, backend.name, backend.provider, str(timing.batch_size))
            metrics.INFERENCE_SECONDS.labels(*labels).observe(timing.inference_ns / 1e9)
            per_frame_ms = timing.inference_ns / 1e6 / timing.batch_size
            with self._lock:
                previous = self._inference_ms.get(model, per_frame_ms)
                self._inference_ms[model] = 0.9 * previous + 0.1 * per_frame_ms  # smoothed for Health

    def _model_input(self, view: FrameView) -> tuple[npt.NDArray[np.uint8], ChannelOrder]:
        """The frame as the model may see it, and its channel order: the ring's pixels in place, unless
        the camera has privacy masks with ``inference: true``, applied to a copy (the ring is every reader's)."""
        frame, order = colour_view(view.array, view.ref.pixel_format)
        camera = self.config.cameras.get(view.ref.camera)
        masks = [mask for mask in camera.privacy_masks if mask.inference] if camera is not None else []
        if masks:
            frame = apply_privacy_masks(frame.copy() if frame is view.array else frame, masks)
        return frame, order

    def _reader(self, segment: str) -> FrameRingReader:
        """This thread's reader of ``segment``: readers per thread, since a reader (which may remap after
        its writer restarts) is used by one thread at a time, and batches of one model run on several."""
        readers: FrameReaders | None = getattr(self._local, "readers", None)
        if readers is None:
            readers = self._local.readers = FrameReaders(self.config.site.shm_dir)
        return readers.reader(segment)


def _inference_timing(timing: Timing, backend: Backend) -> InferenceTiming:
    return InferenceTiming(
        preprocess_ns=timing.preprocess_ns,
        inference_ns=timing.inference_ns,
        postprocess_ns=timing.postprocess_ns,
        batch_size=timing.batch_size,
        backend=backend.name,
        provider=backend.provider,
    )


def _detections(
    ref: FrameRef, model: str, detector: Detector, result: FrameDetections, timing: InferenceTiming
) -> Detections:
    present = set(result.class_ids.tolist())
    return Detections.from_arrays(
        ref,
        model,
        boxes=result.boxes,
        class_ids=result.class_ids,
        scores=result.scores,
        model_version=detector.version,
        labels={c: detector.labels[c] for c in present},
        labels_ref=f"{model}@{detector.version}",
        timing=timing,
    )

"""The inference service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

INFERENCE_SECONDS = Histogram(
    "edgesight_inference_seconds",
    "Time the backend took for one batch (pre- and post-processing excluded).",
    ["model", "backend", "provider", "batch"],  # batch: frames in the run, 1..max_batch
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2),
)
PIPELINE_SECONDS = Histogram(
    "edgesight_inference_pipeline_seconds",
    "Time for one batch from shared memory to Detections: read, letterbox, run, decode, NMS.",
    ["model"],
    buckets=(0.002, 0.005, 0.01, 0.02, 0.04, 0.08, 0.15, 0.3, 0.6, 1.2),
)
BATCH_SIZE = Histogram(
    "edgesight_inference_batch_size", "Frames per backend run.", ["model"], buckets=(1, 2, 4, 8, 16, 32)
)
FRAME_AGE = Histogram(
    "edgesight_inference_frame_age_seconds",
    "Age of a frame (since ingest decoded it) when inference starts on it.",
    ["model"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
)
FRAMES = Counter("edgesight_inference_frames_total", "Frames run through a model.", ["model"])
SKIP_REASONS = ("behind", "stale", "rejected", "still", "error")
SKIPPED = Counter(
    "edgesight_inference_frames_skipped_total",
    "Frames not run: behind (a newer frame of the camera came first), stale (slot overwritten), "
    "rejected (a segment that is not a frame ring under shm_dir: forged, missing or foreign), "
    "still (no motion, skip_still_frames), error (the model failed).",
    ["model", "reason"],
)
MODEL_INFO = Gauge(
    "edgesight_model_info", "1 for the model version in use.", ["model", "version", "backend", "provider"]
)
RELOADS = Counter("edgesight_model_reloads_total", "Model reloads by outcome.", ["model", "outcome"])
ENGINES = Gauge(
    "edgesight_model_engines", "Copies of the model running frames at once (models.<name>.engines).", ["model"]
)
THREADS = Gauge(
    "edgesight_model_threads", "CPU threads per engine (models.<name>.threads; 0: ONNX Runtime's choice).", ["model"]
)

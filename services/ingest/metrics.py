"""The ingest service's metrics; every series is labelled by camera."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CAMERA_UP = Gauge("edgesight_camera_up", "1 while the camera is streaming.", ["camera"])
CAMERA_STATE = Gauge(
    "edgesight_camera_state", "1 for the camera's current state (connecting, streaming, …).", ["camera", "state"]
)
CAMERA_FPS = Gauge("edgesight_camera_fps", "Frames published per second over the last few seconds.", ["camera"])
_SECONDS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
DECODE_SECONDS = Histogram(
    "edgesight_camera_decode_seconds",
    "Time to decode one packet (compressed to raw frame).",
    ["camera"],
    buckets=_SECONDS,
)
CONVERT_SECONDS = Histogram(
    "edgesight_camera_convert_seconds",
    "Time to convert (and resize) one frame into its shared-memory slot, motion included.",
    ["camera"],
    buckets=_SECONDS,
)
RECONNECTS = Counter("edgesight_camera_reconnects_total", "Connection attempts after the first.", ["camera"])
FRAMES_PUBLISHED = Counter(
    "edgesight_camera_frames_total", "Frames written to shared memory and published.", ["camera"]
)
FRAMES_DROPPED = Counter(
    "edgesight_camera_frames_dropped_total",
    "Decoded frames not published: rate_limit (fps setting), paused, decode_error, bus (publisher behind).",
    ["camera", "reason"],
)
CONSUMER_WAIT = Counter(
    "edgesight_camera_consumer_wait_seconds_total",
    "Time a file read with realtime: false waited for inference to answer its frames (backpressure).",
    ["camera"],
)
CONSUMER_TIMEOUTS = Counter(
    "edgesight_camera_consumer_timeouts_total",
    "Frames of a backpressured file that no Detections answered in time; counted as taken.",
    ["camera"],
)

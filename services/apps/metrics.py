"""The apps service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES = Gauge("edgesight_app_frames", "Frames the application took (video_in.get) since it started.", ["app"])
SKIPPED = Gauge("edgesight_app_frames_skipped", "Frames the application was too slow for, since it started.", ["app"])
RESTARTS = Counter(
    "edgesight_app_restarts_total",
    "Applications restarted, by why: exited, hung, memory (over apps.<app>.limits.memory_mb), sandbox.",
    ["app", "why"],
)
RUNNING = Gauge("edgesight_app_running", "1 while the application's process runs.", ["app"])
MEMORY = Gauge("edgesight_app_memory_bytes", "Resident memory of the application's processes.", ["app"])
OUTPUT_CUT = Counter("edgesight_app_output_lines_cut_total", "App output lines cut at 4 KiB.", ["app"])
OUTPUT_DROPPED = Counter(
    "edgesight_app_output_lines_dropped_total", "App output and log lines over the rate not logged.", ["app"]
)
CHANNEL_REFUSED = Counter(
    "edgesight_app_channel_refused_total", "Requests on an app's channel refused as malformed.", ["app"]
)
MODEL_CALLS = Counter("edgesight_app_model_calls_total", "Model calls run for applications.", ["app", "model"])

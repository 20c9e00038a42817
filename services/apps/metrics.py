"""The apps service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

FRAMES = Gauge("edgesight_app_frames", "Frames the application took (video_in.get) since it started.", ["app"])
SKIPPED = Gauge("edgesight_app_frames_skipped", "Frames the application was too slow for, since it started.", ["app"])
RESTARTS = Counter("edgesight_app_restarts_total", "Applications restarted after they exited or hung.", ["app", "why"])
RUNNING = Gauge("edgesight_app_running", "1 while the application's process runs.", ["app"])

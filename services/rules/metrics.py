"""The rules service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter("edgesight_rule_events_total", "Events decided by rules.", ["rule", "type"])
ZONE_OCCUPANCY = Gauge("edgesight_zone_occupancy", "Objects in a zone now.", ["camera", "zone", "label"])
LINE_CROSSINGS = Counter(
    "edgesight_line_crossings_total", "Objects counted crossing a line.", ["camera", "line", "direction", "label"]
)
ACTIVE_TRACKS = Gauge("edgesight_tracks_active", "Confirmed tracks in the last frame.", ["camera", "model"])
SNAPSHOTS_MISSED = Counter(
    "edgesight_snapshots_missed_total", "Snapshots not taken because the frame was overwritten first.", ["camera"]
)
EVENTS_QUEUED = Gauge("edgesight_events_queued", "Events in the outbox: decided, not yet acknowledged by the uplink.")
OUTBOX_DROPPED = Counter(
    "edgesight_outbox_dropped_total",
    "Events dropped from the rules outbox: full (past events.outbox_max_mb) or invalid (no longer decodes).",
    ["reason"],
)
ACTIONS_DROPPED = Counter(
    "edgesight_actions_dropped_total",
    "Local actions not run because MAX_RUNNING_ACTIONS were already running.",
    ["rule", "action"],
)
RELOADS = Counter(
    "edgesight_rules_reloads_total",
    "Reloads of the site file's rules (Control 'reload'): applied, or refused because the file does not validate.",
    ["result"],
)
SERIES_FLUSH_FAILED = Counter(
    "edgesight_series_flush_failed_total",
    "Flushes of the counts over time (analytics) that failed; what they held is tried again at the next.",
)
DETECTIONS_DROPPED = Counter(
    "edgesight_rules_detections_dropped_total",
    "Detections rules did not track: models (Detections messages: every shared tracker slot of the camera is "
    "taken by models the site does not name), labels (detections of a label past the model's MAX_LABELS_PER_MODEL).",
    ["camera", "reason"],
)
MODELS_OVERLAP = Counter(
    "edgesight_rules_models_overlap_total",
    "Rules without model: that saw one label from two models (each object then counts once per model): "
    "counted once per camera and rule, with a warning in the log.",
    ["camera", "rule"],
)

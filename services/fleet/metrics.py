"""The fleet service's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

JOB_RESULTS = ("succeeded", "failed", "rejected")
MESSAGE_REJECTIONS = ("too_large", "malformed", "topic")

JOBS = Counter(
    "edgesight_fleet_jobs_total",
    "Fleet jobs ended: succeeded, failed (rolled back), rejected (refused before running: signature, replay, "
    "expiry, target, not allowed).",
    ["result"],
)
MQTT_CONNECTED = Gauge("edgesight_fleet_mqtt_connected", "1 while the fleet service is connected to its broker.")
REPORTS = Counter("edgesight_fleet_reports_total", "Reported states published to the site's shadow.")
MESSAGES_REJECTED = Counter(
    "edgesight_fleet_messages_rejected_total",
    "MQTT messages dropped unread: too_large, malformed (not the AWS shape), topic (none of ours).",
    ["reason"],
)

for _result in JOB_RESULTS:  # at 0 from the start: an alert's rate() finds the series
    JOBS.labels(_result)
for _reason in MESSAGE_REJECTIONS:
    MESSAGES_REJECTED.labels(_reason)

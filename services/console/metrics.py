"""The console's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS_STORED = Counter("edgesight_console_events_stored_total", "Events added to the console's history.")
EVENTS_PRUNED = Counter(
    "edgesight_console_events_pruned_total", "Events removed from the history by retention_days or max_mb."
)
EVENTS_KEPT = Gauge("edgesight_console_events", "Events in the console's history.")
LOGINS = Counter("edgesight_console_logins_total", "Console login attempts.", ["result"])
RULE_SAVES = Counter("edgesight_console_rule_saves_total", "Rule edits saved from the console.", ["result"])
REQUESTS = Counter("edgesight_console_requests_total", "Console HTTP requests answered.", ["status"])
APP_MESSAGES_IGNORED = Counter(
    "edgesight_console_app_messages_ignored_total",
    "Messages of the apps stream not kept: unknown_app, unknown_camera (not in the site file's apps:), "
    "wrong_topic (another app's name), not_jpeg.",
    ["reason"],
)
FLEET_DROPPED = Counter(
    "edgesight_console_fleet_messages_dropped_total",
    "Reported states heard on the fleet's broker and not kept (console.fleet): too_large, malformed, "
    "wrong_thing (another thing than its topic's), too_many_things (the stalest site evicted for a new one).",
    ["reason"],
)
FLEET_CONNECTED = Gauge(
    "edgesight_console_fleet_connected", "1 while the console is connected to the fleet's broker (console.fleet)."
)
FLEET_SITES = Gauge(
    "edgesight_console_fleet_sites", "Sites of the fleet whose newest reported state the console keeps."
)

"""The uplink's metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from contracts import REFUSAL_REASONS

SPOOL_DEPTH = Gauge("edgesight_spool_events", "Events in the spool.")
SPOOL_OLDEST = Gauge("edgesight_spool_oldest_age_seconds", "Age of the oldest event in the spool.")
SPOOL_BYTES = Gauge("edgesight_spool_bytes", "Bytes the spool's rows take.")
SENT = Counter("edgesight_sink_sent_total", "Events a sink confirmed.", ["sink"])
FAILED = Counter(
    "edgesight_sink_failures_total", "Failed attempts to deliver (and lost MQTT connections), per sink.", ["sink"]
)
DROPPED = Counter(
    "edgesight_sink_dropped_total",
    "What was dropped: spool/external_event (an event of an external rule: the first to go), spool/snapshot and "
    "spool/event on overflow, privacy/snapshot when a rule did not ask for one.",
    ["sink", "what"],
)
for _what in ("external_event", "snapshot", "event"):  # at 0 from the start: the first drop is an increase
    DROPPED.labels("spool", _what)
CONNECTED = Gauge("edgesight_sink_connected", "1 while the sink's last attempt succeeded.", ["sink"])
DEAD_LETTERS = Counter(
    "edgesight_sink_dead_letters_total",
    "Events a sink refused for good (kept in the spool's dead_letters table); sink * = no longer decodes.",
    ["sink"],
)
AUDIT_SPOOLED = Counter("edgesight_audit_records_total", "Audit trail records spooled as audit events.")
AUDIT_MALFORMED = Counter("edgesight_audit_malformed_total", "Audit trail lines that were not records, skipped.")
REFUSED = Counter(
    "edgesight_uplink_events_refused_total",
    "Events refused on the acknowledged path (their sender is told, and drops them): a body that breaks the "
    "contract, one that disagrees with its topic or the site file, an id already taken by another event "
    "(conflict), a rule's event from a bus key other than the rules service's (wrong_sender); the uplink's log "
    "says which and why.",
    ["reason"],
)
for _reason in REFUSAL_REASONS:  # at 0 from the start: the first refusal is an increase an alert sees
    REFUSED.labels(_reason)
DUPLICATES = Counter(
    "edgesight_uplink_events_duplicate_total",
    "Events received again, the same event with an id the spool holds or remembers (24 h): acknowledged again, "
    "not stored or delivered again.",
)

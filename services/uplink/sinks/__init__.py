"""The sinks: the ways out of the site, one module each beside a small base.

Each drains its own queue in the spool, with its own connection state and backoff
(:class:`~services.uplink.sinks.base.Sink`). A sink tells two failures apart. An outage (no
connection, a timeout, a 5xx) raises out of ``deliver``: what it confirmed before stays confirmed,
the rest waits and is retried. A refusal of one event for good (a topic or key the far side
rejects, a 4xx) is ``receipt.reject``: that event goes to the spool's dead letters, counted and
logged once, and the others flow.

The runtime classes are named for what they do; each is configured by the site file's section of
the same sink (``MqttPublisher`` by ``uplink.mqtt``, a ``common.config.uplink.MqttSink``).
"""

from services.uplink.sinks.base import Receipt, Sink
from services.uplink.sinks.cloudwatch import CloudWatchReporter, SiteFigure
from services.uplink.sinks.jsonl import JsonlWriter
from services.uplink.sinks.mqtt import MqttPublisher
from services.uplink.sinks.s3 import S3Uploader
from services.uplink.sinks.webhook import WebhookPoster

__all__ = [
    "CloudWatchReporter",
    "JsonlWriter",
    "MqttPublisher",
    "Receipt",
    "S3Uploader",
    "Sink",
    "SiteFigure",
    "WebhookPoster",
]

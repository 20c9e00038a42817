"""``uplink:`` — the spool and the sinks: the only way anything leaves the site."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from common.config._types import Section

__all__ = [
    "CloudWatchSink",
    "JsonlSink",
    "MqttSink",
    "S3Sink",
    "SpoolConfig",
    "TlsConfig",
    "UplinkConfig",
    "WebhookSink",
]


class TlsConfig(Section):
    ca_file: str | None = Field(None, description="CA bundle (AWS IoT Core: AmazonRootCA1.pem).")
    cert_file: str | None = Field(None, description="Client certificate for mutual TLS.")
    key_file: str | None = Field(None, description="Client private key for mutual TLS.")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        return self


class MqttSink(Section):
    host: str
    port: int = Field(1883, ge=1, le=65535, description="8883 for TLS (AWS IoT Core).")
    client_id: str | None = Field(None, description="Stable per device; default edgesight-<site>.")
    username: str | None = None
    password: str | None = Field(None, description="Use ${ENV} or ${file:...}; never logged.")
    tls: TlsConfig | None = None
    topic_prefix: str = Field("edgesight", min_length=1)
    qos: Literal[0, 1] = 1
    keepalive_s: int = Field(30, ge=5, le=3600)
    stats_interval_s: float = Field(60.0, gt=0, le=86400)
    home_assistant: bool = Field(
        False,
        description="Home Assistant MQTT discovery: each line's in/out totals, each zone's occupancy and each "
        "camera's state appear as sensors of one device (the site), with no YAML. Turned off again, the "
        "uplink removes the entities it announced.",
    )
    home_assistant_prefix: str = Field(
        "homeassistant",
        pattern=r"^[^#+\x00]{1,200}$",
        description="Home Assistant's discovery prefix (its MQTT integration's setting; rarely changed).",
    )


class S3Sink(Section):
    bucket: str = Field(..., min_length=3, max_length=63)
    prefix: str = "edgesight"
    region: str | None = None
    endpoint_url: str | None = Field(None, description="For MinIO and other S3-compatible stores.")
    server_side_encryption: Literal["none", "AES256", "aws:kms"] = "AES256"
    kms_key_id: str | None = None


class CloudWatchSink(Section):
    namespace: str = "EdgeSight"
    region: str | None = None
    endpoint_url: str | None = None
    log_group: str | None = Field("/edgesight/events", description="None sends no logs.")
    metrics_interval_s: float = Field(60.0, gt=0, le=3600)


class JsonlSink(Section):
    path: str = Field(..., description="One JSON object per line; relative paths are under site.state_dir.")


class WebhookSink(Section):
    url: str = Field(..., pattern=r"^https?://")
    timeout_s: float = Field(5.0, gt=0, le=120)


class SpoolConfig(Section):
    max_mb: int = Field(
        512, ge=1, le=1_000_000, description="Past this, snapshots are dropped first, then the oldest events."
    )
    fsync: Literal["always", "batch", "never"] = Field(
        "batch", description="batch: fsync every commit of a batch of events."
    )


class UplinkConfig(Section):
    spool: SpoolConfig = Field(default_factory=SpoolConfig)
    mqtt: MqttSink | None = None
    s3: S3Sink | None = None
    cloudwatch: CloudWatchSink | None = None
    jsonl: JsonlSink | None = None
    webhook: WebhookSink | None = None

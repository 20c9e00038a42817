"""The CloudWatch sink: events to CloudWatch Logs, and event counts and site figures as metrics."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from common.config.uplink import CloudWatchSink
from services.uplink.sinks.aws import AwsClients
from services.uplink.sinks.base import Receipt, Sink, upstream_json
from services.uplink.spool import Spooled

__all__ = ["CloudWatchReporter", "SiteFigure"]

log = logging.getLogger(__package__)

SiteFigure = tuple[str, dict[str, str], float, str]  # (metric, dimensions, value, unit)
CountKey = tuple[str, str, str]  # (camera, rule, event type)
METRICS_PER_CALL = 1000  # PutMetricData's limit


class CloudWatchReporter(Sink):
    """Events to CloudWatch Logs (``PutLogEvents``) and counts per camera, rule and type to CloudWatch
    metrics (``PutMetricData``, batched every ``metrics_interval_s``)."""

    name = "cloudwatch"

    def __init__(self, config: CloudWatchSink, site: str) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.counts: dict[CountKey, int] = {}
        self._stream_ready = False
        self.aws = AwsClients(config.region, config.endpoint_url)
        self.metrics_aws = AwsClients(config.region, config.endpoint_url)

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        try:
            refused = await self._put_log_events(batch) if self.config.log_group else {}
        except Exception:
            await self.aws.close()
            raise
        for item in batch:
            if item.seq in refused:
                receipt.reject(item, refused[item.seq])
                continue
            key = (item.event.camera, item.event.rule, item.event.event_type)
            self.counts[key] = self.counts.get(key, 0) + 1
            receipt.confirm(item.seq)

    async def close(self) -> None:
        await self.aws.close()
        await self.metrics_aws.close()

    async def _put_log_events(self, batch: list[Spooled]) -> dict[int, str]:
        """Sends ``batch`` to the site's log stream; returns seq -> why for the records refused."""
        assert self.config.log_group is not None
        logs = await self.aws.get("logs")
        if not self._stream_ready:
            for call, args in (
                (logs.create_log_group, {"logGroupName": self.config.log_group}),
                (logs.create_log_stream, {"logGroupName": self.config.log_group, "logStreamName": self.site}),
            ):
                try:
                    await call(**args)
                except logs.exceptions.ResourceAlreadyExistsException:
                    pass
            self._stream_ready = True
        ordered = sorted(batch, key=lambda item: item.event.ts_ns)  # CloudWatch wants them in time order
        records = [{"timestamp": item.event.ts_ns // 1_000_000, "message": upstream_json(item)} for item in ordered]
        response = await logs.put_log_events(
            logGroupName=self.config.log_group, logStreamName=self.site, logEvents=records
        )
        return _refused_log_events(response.get("rejectedLogEventsInfo") or {}, ordered)

    async def publish_metrics(self, site_figures: Callable[[], list[SiteFigure]]) -> None:
        """Every ``metrics_interval_s``: event counts since the last call per camera/rule/type, and the
        site's figures now (camera fps, inference time per model)."""
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            counts, self.counts = self.counts, {}
            data = _metric_data(self.site, counts, site_figures())
            if not data:
                continue
            try:
                cloudwatch = await self.metrics_aws.get("cloudwatch")
                for start in range(0, len(data), METRICS_PER_CALL):
                    chunk = data[start : start + METRICS_PER_CALL]
                    await cloudwatch.put_metric_data(Namespace=self.config.namespace, MetricData=chunk)
            except Exception as exc:
                await self.metrics_aws.close()
                for key, value in counts.items():  # keep the counts for the next try
                    self.counts[key] = self.counts.get(key, 0) + value
                log.warning("cloudwatch metrics not sent", extra={"error": str(exc)})


def _metric_data(site: str, counts: dict[CountKey, int], figures: list[SiteFigure]) -> list[dict[str, Any]]:
    """``PutMetricData``'s ``MetricData``: an ``Events`` count per camera, rule and type, then the figures."""
    where = {"Name": "Site", "Value": site}
    data: list[dict[str, Any]] = [
        {
            "MetricName": "Events",
            "Dimensions": [
                where,
                {"Name": "Camera", "Value": camera},
                {"Name": "Rule", "Value": rule},
                {"Name": "Type", "Value": kind},
            ],
            "Value": value,
            "Unit": "Count",
        }
        for (camera, rule, kind), value in counts.items()
    ]
    data += [
        {
            "MetricName": name,
            "Dimensions": [where, *({"Name": k, "Value": v} for k, v in dimensions.items())],
            "Value": value,
            "Unit": unit,
        }
        for name, dimensions, value, unit in figures
    ]
    return data


def _refused_log_events(info: dict[str, int], ordered: list[Spooled]) -> dict[int, str]:
    """seq -> why, for the records PutLogEvents accepted the call for but refused (too old or new)."""
    refused: dict[int, str] = {}
    if "tooNewLogEventStartIndex" in info:
        for item in ordered[info["tooNewLogEventStartIndex"] :]:
            refused[item.seq] = "CloudWatch Logs: timestamp too far in the future"
    for key, why in (("tooOldLogEventEndIndex", "too old"), ("expiredLogEventEndIndex", "past the retention")):
        if key in info:
            for item in ordered[: info[key]]:
                refused[item.seq] = f"CloudWatch Logs: timestamp {why}"
    return refused

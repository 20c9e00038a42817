"""The CloudWatch sink: events to CloudWatch Logs, and event counts and site figures as metrics.

A ``count_report`` (rules' interval report) is also put as metric data, timestamped at its interval's
start (where a dashboard's period of that length shows it), before it is confirmed:

- ``Crossings`` (Count; dimensions Site, Camera, Rule, Label, Direction ``in``/``out``), a line's
  crossings in the interval: graph its Sum;
- ``OccupancyMean`` and ``OccupancyMax`` (Count; Site, Camera, Rule, Label), a zone's objects over the
  interval: graph the Average of the first, the Maximum of the second.

    >>> from contracts import Event
    >>> report = Event(id="report.dock.door.0", event_type="count_report", site="s", camera="dock",
    ...                rule="door", ts_ns=900 * 10**9, start_ns=0, attributes={"person.in": 3, "kind": "line"})
    >>> [(d["MetricName"], d["Value"], [x["Value"] for x in d["Dimensions"]]) for d in report_metric_data(report)]
    [('Crossings', 3.0, ['s', 'dock', 'door', 'person', 'in'])]
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import Callable
from typing import Any

from common.config.uplink import CloudWatchSink
from contracts import Event
from services.uplink.sinks.aws import AwsClients, http_status
from services.uplink.sinks.base import Receipt, Sink, upstream_json
from services.uplink.spool import Spooled

__all__ = ["CloudWatchReporter", "SiteFigure", "report_metric_data"]

log = logging.getLogger(__package__)

SiteFigure = tuple[str, dict[str, str], float, str]  # (metric, dimensions, value, unit)
CountKey = tuple[str, str, str]  # (camera, rule, event type)
METRICS_PER_CALL = 1000  # PutMetricData's limit
MAX_METRIC_AGE_S = 14 * 86400 - 3600  # PutMetricData refuses data points two weeks old
REPORT_METRICS = {  # a count report's attribute "<label>.<figure>" -> (metric, extra dimensions)
    "in": ("Crossings", {"Direction": "in"}),
    "out": ("Crossings", {"Direction": "out"}),
    "occupancy_mean": ("OccupancyMean", {}),
    "occupancy_max": ("OccupancyMax", {}),
}


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
            if item.event.event_type == "count_report" and not await self._put_report(item, receipt):
                continue
            key = (item.event.camera, item.event.rule, item.event.event_type)
            self.counts[key] = self.counts.get(key, 0) + 1
            receipt.confirm(item.seq)

    async def _put_report(self, item: Spooled, receipt: Receipt) -> bool:
        """Puts a count report's metric data (one call: a report holds far fewer than 1000 data points);
        False when CloudWatch refused it for good (rejected on ``receipt``). Raises on an outage: a
        report confirmed before stays confirmed, so a retry never puts the same crossings twice."""
        data = report_metric_data(item.event)
        if not data:
            return True
        if data[0]["Timestamp"].timestamp() < dt.datetime.now(dt.timezone.utc).timestamp() - MAX_METRIC_AGE_S:
            log.warning("count report too old for cloudwatch metrics; logged only", extra={"id": item.event.id})
            return True
        try:
            cloudwatch = await self.aws.get("cloudwatch")  # deliver's clients (the periodic metrics have their own)
            await cloudwatch.put_metric_data(Namespace=self.config.namespace, MetricData=data)
        except Exception as exc:
            if http_status(exc) == 400:  # this report's data is refused (a bad value): it never will be taken
                receipt.reject(item, f"CloudWatch metrics: {exc}")
                return False
            await self.aws.close()  # a fresh client at the next try
            raise
        return True

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


def report_metric_data(report: Event) -> list[dict[str, Any]]:
    """``PutMetricData``'s ``MetricData`` for a count report (see the module's docstring); attributes
    that are not a line's or zone's figure, or not a finite number, are left out."""
    when = dt.datetime.fromtimestamp(
        (report.start_ns if report.start_ns is not None else report.ts_ns) / 1e9, dt.timezone.utc
    )
    where = {"Site": report.site, "Camera": report.camera, "Rule": report.rule}
    data = []
    for key, value in sorted(report.attributes.items()):
        label, _, figure = key.rpartition(".")
        metric = REPORT_METRICS.get(figure)
        if metric is None or not label or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if not math.isfinite(value):
            continue
        name, extra = metric
        dimensions = {**where, "Label": label, **extra}
        data.append(
            {
                "MetricName": name,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dimensions.items()],
                "Timestamp": when,
                "Value": float(value),
                "Unit": "Count",
            }
        )
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

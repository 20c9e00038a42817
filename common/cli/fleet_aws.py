"""The operator on AWS IoT, for ``edgesight fleet`` in aws mode: jobs through AWS IoT Jobs, reported and
desired state through the ``edgesight`` named shadow, all through boto3. The same questions and answers as
:class:`common.cli.fleet_broker.MqttLink` (:mod:`common.cli.fleet_wire`)."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from common.cli.fleet_wire import UNPARSABLE, JobRecord, JobStatus, LinkError, heard_status, operation_of, reported_end
from common.fleet import shapes
from common.fleet.topics import SHADOW_NAME
from common.fleet.untrusted import printable

__all__ = ["MAX_AWS_JOBS", "POLL_S", "AwsLink", "aws_region"]

POLL_S = 2.0  # how often AWS IoT is asked about a job execution (DescribeJobExecution allows 10/s per account)
MAX_AWS_JOBS = 100  # `fleet jobs` lists at most the newest this many jobs in aws mode
T = TypeVar("T")


class AwsLink:
    """The operator on AWS IoT (aws mode): jobs through AWS IoT Jobs (CreateJob, DescribeJobExecution), reported
    and desired state through the ``edgesight`` named shadow (the IoT data plane). boto3 finds credentials
    as everywhere (environment, profile, role); ``AWS_ENDPOINT_URL`` points both clients elsewhere (moto)."""

    def __init__(self, region: str | None, data_endpoint_url: str | None) -> None:
        self.region = region
        self.data_endpoint_url = data_endpoint_url
        self._arns: dict[str, str] = {}
        self._malformed: set[str] = set()  # things whose shadow did not parse
        self.iot: Any = None
        self.data: Any = None

    async def __aenter__(self) -> AwsLink:
        import boto3  # type: ignore[import-untyped]

        self.iot = boto3.client("iot", region_name=self.region)
        self.data = boto3.client("iot-data", region_name=self.region, endpoint_url=self.data_endpoint_url)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for client in (self.iot, self.data):
            client.close()

    async def _call(self, what: str, method: Callable[..., Any], **arguments: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

        try:
            return await asyncio.to_thread(method, **arguments)
        except (BotoCoreError, ClientError) as exc:
            if (
                isinstance(exc, ClientError)
                and exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException"
            ):
                return None  # no such thing, shadow or job: the caller says what that means
            raise LinkError(f"AWS IoT {what}: {exc}") from None

    async def _shadow(self, thing: str) -> bytes | None:
        answer = await self._call(
            f"GetThingShadow {thing}", self.data.get_thing_shadow, thingName=thing, shadowName=SHADOW_NAME
        )
        return None if answer is None else bytes(answer["payload"].read())

    @property
    def malformed(self) -> int:
        """Shadows read that did not parse."""
        return len(self._malformed)

    async def _parsed(self, thing: str, parse: Callable[[bytes], T | None]) -> T | None:
        """The thing's shadow parsed; None when it has none or it does not parse (counted)."""
        payload = await self._shadow(thing)
        if payload is None:
            return None
        try:
            parsed = parse(payload)
        except UNPARSABLE:
            self._malformed.add(thing)
            return None
        self._malformed.discard(thing)
        return parsed

    async def _reported(self, thing: str) -> dict[str, Any] | None:
        # as of when it was read: a report stamped later is one from then
        return await self._parsed(thing, functools.partial(shapes.parse_reported, read_at=time.time()))

    async def reported(self, things: Iterable[str], seconds: float) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for thing in things:
            reported = await self._reported(thing)
            if reported is not None:
                found[thing] = reported
        return found

    async def site_reported(self, thing: str, job_id: str) -> str | None:
        """The final status the site's own reported state gives ``job_id`` (:func:`reported_end`)."""
        return reported_end(await self._reported(thing), thing, job_id)

    async def submit(self, thing: str, job_id: str, document: dict[str, Any]) -> None:
        if thing not in self._arns:
            described = await self._call(f"DescribeThing {thing}", self.iot.describe_thing, thingName=thing)
            if described is None:
                raise LinkError(f"AWS IoT has no thing {thing!r} (fleet.yaml sites: thing)")
            self._arns[thing] = described["thingArn"]
        await self._call(
            f"CreateJob {job_id}",
            self.iot.create_job,
            jobId=job_id,
            targets=[self._arns[thing]],
            document=json.dumps(document, separators=(",", ":")),
            description=f"edgesight {operation_of(document, job_id)} for {thing}",
        )

    async def status(self, thing: str, job_id: str) -> JobStatus | None:
        answer = await self._call(
            f"DescribeJobExecution {job_id}", self.iot.describe_job_execution, jobId=job_id, thingName=thing
        )
        if answer is None:
            return None
        execution = answer["execution"]
        details = (execution.get("statusDetails") or {}).get("detailsMap") or {}
        return heard_status(job_id, thing, str(execution["status"]), details)

    async def finished(self, thing: str, job_id: str) -> None:
        """Nothing to do: AWS IoT keeps a job's execution until the job is deleted (``fleet jobs --prune``)."""

    def mark(self) -> int:
        return 0

    async def wait_news(self, mark: int, seconds: float) -> None:
        await asyncio.sleep(max(0.0, min(POLL_S, seconds)))  # AWS IoT tells nothing: it is asked again

    async def desired(self, thing: str, seconds: float) -> dict[str, str]:
        desired = await self._parsed(thing, shapes.parse_desired)
        return dict(desired.models or {}) if desired is not None else {}

    async def set_desired(self, thing: str, models: dict[str, str], document: dict[str, Any]) -> None:
        # a shadow update is merged into the desired state: a model no longer desired is deleted with a null,
        # in the models and in the signed document's args (else the site would read a document never signed)
        gone: dict[str, Any] = {name: None for name in await self.desired(thing, 0) if name not in models}
        update = shapes.desired_update(models, document)
        if gone:
            desired = update["state"]["desired"]
            desired["models"] = {**models, **gone}
            desired["signed"] = {**document, "args": {**document["args"], "models": {**models, **gone}}}
        payload = shapes.encode(update)
        await self._call(
            f"UpdateThingShadow {thing}",
            self.data.update_thing_shadow,
            thingName=thing,
            shadowName=SHADOW_NAME,
            payload=payload,
        )

    async def jobs(self, things: Iterable[str], seconds: float) -> list[JobRecord]:
        listed = await self._call("ListJobs", self.iot.list_jobs, maxResults=MAX_AWS_JOBS)
        records: list[JobRecord] = []
        for job in (listed or {}).get("jobs", []):
            job_id = job["jobId"]
            operation = operation_of(None, job_id)
            executions = await self._call(
                f"ListJobExecutionsForJob {job_id}", self.iot.list_job_executions_for_job, jobId=job_id
            )
            for summary in (executions or {}).get("executionSummaries", []):
                thing = printable(str(summary.get("thingArn", "")).rsplit("/", 1)[-1], 128) or "?"
                execution = summary.get("jobExecutionSummary", {})
                status = heard_status(job_id, thing, str(execution.get("status", "QUEUED")), {})
                queued = execution.get("queuedAt")
                queued_at = float(queued.timestamp()) if hasattr(queued, "timestamp") else None  # boto3: a datetime
                records.append(JobRecord(job_id, thing, operation, queued_at, status))
        return sorted(records, key=lambda record: (record.queued_at or 0, record.job_id))

    async def prune(self, records: Iterable[JobRecord]) -> tuple[int, int]:
        """Deletes each finished job: (how many, 0). AWS IoT hands a finished execution to no device,
        whoever finished it: deleting it takes nothing from a site."""
        finished = {record.job_id for record in records if record.status is not None and record.status.final}
        for job_id in finished:  # one thing a job (job_id_for): its execution's end is the job's
            await self._call(f"DeleteJob {job_id}", self.iot.delete_job, jobId=job_id)
        return len(finished), 0


def aws_region(host: str) -> str | None:
    """The region of an AWS IoT endpoint (``abc-ats.iot.eu-west-1.amazonaws.com``); None for any other host.

    >>> aws_region("a1b2c3-ats.iot.eu-west-1.amazonaws.com"), aws_region("mosquitto.local")
    ('eu-west-1', None)
    """
    match = re.fullmatch(r"[^.]+\.iot\.([a-z0-9-]+)\.amazonaws\.com", host)
    return match[1] if match else None

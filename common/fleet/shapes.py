"""The fleet's messages in AWS IoT's shapes: job executions and their status updates (the Jobs MQTT
API), reported and desired state (a shadow's update and delta). Builders return dicts to send as JSON
(:func:`encode`); parsers take a payload off the network and never raise but :class:`MalformedMessage`,
which the caller counts and drops (the reading of untrusted values themselves: :mod:`common.fleet.untrusted`,
whose names are here too). A parser returns None for a payload that says "nothing": empty (a
retained message cleared) or without an execution (no job queued).

>>> execution = job_execution("job-1", "site-a", {"edgesight_job": 1}, queued_at=1_800_000_000)
>>> parse_execution(encode(notify_next(execution, timestamp=1_800_000_001))).job_id
'job-1'
>>> parse_execution(b'{"timestamp": 1800000001}') is None
True
>>> try:
...     parse_execution(b"not json")
... except MalformedMessage as bad:
...     print(bad.reason)
not JSON
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Mapping
from typing import Any

from common.fleet.topics import JOB_ID_PATTERN, THING_PATTERN
from common.fleet.untrusted import MAX_NUMBER, MAX_PAYLOAD_BYTES, MalformedMessage, decode_object, number, printable

__all__ = [
    "DEVICE_STATUSES",
    "JOB_STATUSES",
    "MAX_INTERVAL_S",
    "MAX_NUMBER",
    "MAX_PAYLOAD_BYTES",
    "MAX_REPORTED_BYTES",
    "OK_STATES",
    "REPORTED_SCHEMA",
    "TERMINAL_STATUSES",
    "Desired",
    "Execution",
    "MalformedMessage",
    "StatusUpdate",
    "client_token",
    "decode_object",
    "desired_delta",
    "desired_update",
    "encode",
    "fit_reported",
    "job_execution",
    "notify_next",
    "number",
    "parse_desired",
    "parse_execution",
    "parse_reported",
    "parse_status_update",
    "printable",
    "reported_update",
    "shadow_get",
    "start_next",
    "status_update",
]

MAX_REPORTED_BYTES = 8 * 1024  # a shadow's reported section
MAX_INTERVAL_S = 86400.0  # a report's interval_s above this reads as this (fleet.report_interval_s's bound)
REPORTED_SCHEMA = 1
JOB_STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED")
DEVICE_STATUSES = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")  # what a device may set
TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT", "REMOVED"})
OK_STATES = {"cameras": "streaming", "services": "ready", "apps": "running"}  # per map of REPORTED
_MAX_DETAILS = 10  # statusDetails: AWS keeps 10 pairs, values of 1-1024 characters without control characters
_MAX_DETAIL_CHARS = 1024
_FIRST_DETAILS = ("operation", "step", "reason", "site", "version")
_MAX_MODELS = 256
_JOB_ID = re.compile(JOB_ID_PATTERN)
_THING = re.compile(THING_PATTERN)
_DETAIL_KEY = re.compile(r"[A-Za-z0-9:_-]{1,128}")


def client_token() -> str:
    """A fresh token (32 hex digits) that AWS IoT echoes in its answer to a request."""
    return uuid.uuid4().hex


def encode(message: Mapping[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _number(value: object, what: str, default: float | None = None) -> float:
    if value is None and default is not None:
        return default
    checked = number(value)
    if checked is None:
        raise MalformedMessage("wrong type", f"{what} is not a number (finite, at most {MAX_NUMBER:g})")
    return checked


def _integer(value: object, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 53:
        raise MalformedMessage("wrong type", f"{what} is not a whole number")
    return value


def _text(value: object, what: str, limit: int = 256) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise MalformedMessage("wrong type", f"{what} is not a string of 1 to {limit} characters")
    return value


def _object(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MalformedMessage("wrong type", f"{what} is not an object")
    return value


# Jobs -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Execution:
    """A job execution as AWS IoT Jobs (or a retained document) hands it over; ``document`` is the job
    document, not yet verified (:func:`common.fleet.signing.verify_document`). Times: epoch seconds."""

    job_id: str
    document: dict[str, Any]
    status: str = "QUEUED"
    thing: str | None = None
    queued_at: float = 0.0
    last_updated_at: float = 0.0
    version: int | None = None
    execution_number: int | None = None


def job_execution(
    job_id: str,
    thing: str,
    document: Mapping[str, Any],
    *,
    queued_at: int,
    version: int = 1,
    execution_number: int = 1,
    last_updated_at: int | None = None,
) -> dict[str, Any]:
    """JOB_EXECUTION, as an operator queues it in retained mode."""
    return {
        "jobId": job_id,
        "thingName": thing,
        "jobDocument": dict(document),
        "status": "QUEUED",
        "queuedAt": queued_at,
        "lastUpdatedAt": queued_at if last_updated_at is None else last_updated_at,
        "versionNumber": version,
        "executionNumber": execution_number,
    }


def notify_next(execution: Mapping[str, Any] | None, *, timestamp: int | None = None) -> dict[str, Any]:
    """``{"timestamp", "execution"?}``: AWS's notify-next, and a retained mode job document."""
    message: dict[str, Any] = {"timestamp": int(time.time()) if timestamp is None else timestamp}
    if execution is not None:
        message["execution"] = dict(execution)
    return message


def start_next(token: str | None = None) -> dict[str, Any]:
    """The request on ``jobs/start-next``: AWS answers on start-next/accepted with the next execution."""
    return {"clientToken": token or client_token()}


def status_update(
    status: str,
    details: Mapping[str, object],
    *,
    expected_version: int | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """A job's status as AWS takes it: at most 10 details (the brief's five first), keys of AWS's
    pattern, values cut to 1024 characters with control characters made spaces; empty values dropped
    (AWS refuses them). A device sets only IN_PROGRESS, SUCCEEDED, FAILED or REJECTED."""
    if status not in DEVICE_STATUSES:
        raise ValueError(f"status {status!r} is not one of {', '.join(DEVICE_STATUSES)}")
    ordered = sorted(details, key=lambda key: (_FIRST_DETAILS.index(key) if key in _FIRST_DETAILS else 99, key))
    clean: dict[str, str] = {}
    for key in ordered:
        value = printable(str(details[key]), _MAX_DETAIL_CHARS) or ""
        if _DETAIL_KEY.fullmatch(key) and value.strip() and len(clean) < _MAX_DETAILS:
            clean[key] = value
    message: dict[str, Any] = {"status": status, "statusDetails": clean, "clientToken": token or client_token()}
    if expected_version is not None:
        message["expectedVersion"] = expected_version
    return message


def parse_execution(payload: object) -> Execution | None:
    """The execution in a notify-next, start-next/accepted or retained job document; None when there
    is none (nothing queued, or the retained document was cleared)."""
    message = decode_object(payload)
    if message is None or message.get("execution") is None:
        return None
    execution = _object(message["execution"], "execution")
    job_id = _text(execution.get("jobId"), "execution.jobId", 64)
    if not _JOB_ID.fullmatch(job_id):
        raise MalformedMessage("wrong type", "execution.jobId is not a job id")
    thing = execution.get("thingName")
    if thing is not None and not (isinstance(thing, str) and _THING.fullmatch(thing)):
        raise MalformedMessage("wrong type", "execution.thingName is not a thing name")
    status = execution.get("status", "QUEUED")
    if status not in JOB_STATUSES:
        raise MalformedMessage("wrong type", "execution.status is not a job status")
    return Execution(
        job_id=job_id,
        document=_object(execution.get("jobDocument"), "execution.jobDocument"),
        status=status,
        thing=thing,
        queued_at=_number(execution.get("queuedAt"), "execution.queuedAt", 0.0),
        last_updated_at=_number(execution.get("lastUpdatedAt"), "execution.lastUpdatedAt", 0.0),
        version=_integer(execution.get("versionNumber"), "execution.versionNumber"),
        execution_number=_integer(execution.get("executionNumber"), "execution.executionNumber"),
    )


@dataclasses.dataclass(frozen=True)
class StatusUpdate:
    status: str
    details: dict[str, str]
    expected_version: int | None = None
    client_token: str | None = None


def parse_status_update(payload: object) -> StatusUpdate | None:
    """A job's status as a device published it (``R/things/T/jobs/<jobId>/update``); None when cleared."""
    message = decode_object(payload)
    if message is None:
        return None
    status = message.get("status")
    if status not in JOB_STATUSES:
        raise MalformedMessage("wrong type", "status is not a job status")
    details = _object(message.get("statusDetails", {}), "statusDetails")
    if len(details) > _MAX_DETAILS or not all(isinstance(value, str) for value in details.values()):
        raise MalformedMessage("wrong type", f"statusDetails is not at most {_MAX_DETAILS} strings")
    token = message.get("clientToken")
    return StatusUpdate(
        status=status,
        details={key: value[:_MAX_DETAIL_CHARS] for key, value in details.items()},
        expected_version=_integer(message.get("expectedVersion"), "expectedVersion"),
        client_token=token if isinstance(token, str) else None,
    )


# Reported state ------------------------------------------------------------------------------------


def reported_update(reported: Mapping[str, Any], *, token: str | None = None) -> dict[str, Any]:
    """A shadow update of the reported state, made to fit a shadow (:func:`fit_reported`)."""
    return {"state": {"reported": fit_reported(reported)}, "clientToken": token or client_token()}


def fit_reported(reported: Mapping[str, Any], limit: int = MAX_REPORTED_BYTES) -> dict[str, Any]:
    """REPORTED within ``limit`` bytes of JSON: the largest map (cameras, services, apps, models) is
    halved until it fits, entries in trouble kept first, and ``cut`` says what each held in all:
    ``{"cameras": {"total": 120, "ok": 117}}``; long texts are cut to 256 characters."""
    fitted = dict(reported)
    for key in ("last_error", "console_url"):
        if isinstance(fitted.get(key), str):
            fitted[key] = fitted[key][:256]
    cut: dict[str, dict[str, int]] = {}
    while len(encode(fitted)) > limit:
        maps = [name for name in ("cameras", "services", "apps", "models") if isinstance(fitted.get(name), dict)]
        maps = [name for name in maps if fitted[name]]
        if not maps:
            fitted.pop("desired", None)
            break
        name = max(maps, key=lambda candidate: len(encode(fitted[candidate])))
        entries = fitted[name]
        if name not in cut:
            ok = sum(1 for entry in entries.values() if _is_ok(name, entry))
            cut[name] = {"total": len(entries), "ok": ok}
        ordered = sorted(entries.items(), key=lambda item: (_is_ok(name, item[1]), item[0]))
        fitted[name] = dict(ordered[: len(ordered) // 2])
        fitted["cut"] = cut
    return fitted


def _is_ok(name: str, entry: object) -> bool:
    wanted = OK_STATES.get(name)
    return wanted is None or (isinstance(entry, dict) and entry.get("state") == wanted)


def parse_reported(payload: object, *, read_at: float | None = None) -> dict[str, Any] | None:
    """REPORTED out of a shadow update, its keys' types checked where a reader relies on them
    (schema, site, thing, reported_at, interval_s); None when cleared. What a reader decides on is
    bounded: ``interval_s`` above :data:`MAX_INTERVAL_S` reads as that, and ``reported_at`` after
    ``read_at`` (when the message was read) reads as ``read_at``, by how much it was ahead kept in
    ``clock_ahead_s``: a report from the future is one from now, and a silent site still goes offline.

    >>> message = encode({"state": {"reported": {"schema": 1, "site": "s", "thing": "t", "reported_at": 9e9,
    ...     "interval_s": 1e12}}})
    >>> reported = parse_reported(message, read_at=1000.0)
    >>> reported["reported_at"], reported["interval_s"], reported["clock_ahead_s"]
    (1000.0, 86400.0, 8999999000.0)
    """
    message = decode_object(payload)
    if message is None:
        return None
    reported = dict(_object(_object(message.get("state"), "state").get("reported"), "state.reported"))
    schema = _integer(reported.get("schema"), "schema")
    if schema is None or schema < REPORTED_SCHEMA:
        raise MalformedMessage("wrong type", f"schema is not {REPORTED_SCHEMA} or later")
    _text(reported.get("site"), "site", 128)
    if not _THING.fullmatch(_text(reported.get("thing"), "thing", 128)):
        raise MalformedMessage("wrong type", "thing is not a thing name")
    reported_at = _number(reported.get("reported_at"), "reported_at")
    interval_s = _number(reported.get("interval_s"), "interval_s")
    if interval_s <= 0:
        raise MalformedMessage("wrong type", "interval_s is not above 0")
    reported["interval_s"] = min(interval_s, MAX_INTERVAL_S)
    reported.pop("clock_ahead_s", None)  # the reader's finding, never the sender's word
    if read_at is not None and reported_at > read_at:
        reported["reported_at"], reported["clock_ahead_s"] = read_at, reported_at - read_at
    return reported


# Desired state -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Desired:
    """Desired state as a device hears it: ``models`` (name -> version) as the shadow says it, for
    people, and ``signed``, the set_desired document a device believes instead (once verified)."""

    models: dict[str, str] | None
    signed: dict[str, Any] | None
    version: int | None = None
    timestamp: float | None = None


def desired_delta(
    models: Mapping[str, str], signed: Mapping[str, Any], *, version: int, timestamp: int | None = None
) -> dict[str, Any]:
    """retained mode: what an operator retains on ``.../update/delta``."""
    return {
        "state": {"models": dict(models)},
        "version": version,
        "timestamp": int(time.time()) if timestamp is None else timestamp,
        "signed": dict(signed),
    }


def desired_update(
    models: Mapping[str, str], signed: Mapping[str, Any] | None, *, token: str | None = None
) -> dict[str, Any]:
    """aws mode: the shadow update an operator sends to set desired state (AWS then sends the delta)."""
    desired: dict[str, Any] = {"models": dict(models)}
    if signed is not None:
        desired["signed"] = dict(signed)
    return {"state": {"desired": desired}, "clientToken": token or client_token()}


def shadow_get(token: str | None = None) -> dict[str, Any]:
    """aws mode: asks for the whole shadow (answered on ``.../get/accepted``)."""
    return {"clientToken": token or client_token()}


def parse_desired(payload: object) -> Desired | None:
    """Desired state from a retained delta, AWS's delta or AWS's get/accepted (whose ``state.desired``
    is read: the whole desired state, not only what differs); None when cleared or empty."""
    message = decode_object(payload)
    if message is None:
        return None
    state = _object(message.get("state", {}), "state")
    if any(key in state for key in ("desired", "reported", "delta")):  # get/accepted
        state = _object(state.get("desired", {}), "state.desired")
    signed = message.get("signed", state.get("signed"))
    models = state.get("models")
    if models is not None:
        models = _object(models, "state.models")
        if len(models) > _MAX_MODELS or not all(isinstance(value, str) for value in models.values()):
            raise MalformedMessage("wrong type", f"state.models is not at most {_MAX_MODELS} name: version")
    if models is None and signed is None:
        return None
    version = message.get("version")
    timestamp = message.get("timestamp")
    return Desired(
        models=models,
        signed=None if signed is None else _object(signed, "signed"),
        version=_integer(version, "version"),
        timestamp=None if timestamp is None else _number(timestamp, "timestamp"),
    )

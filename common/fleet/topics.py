"""The fleet's MQTT topics: AWS IoT's shapes (a named shadow ``edgesight``, the Jobs MQTT API) under a
``topic_root`` that is ``$aws`` on AWS IoT Core and may be anything on another broker (Mosquitto takes
``$aws/...`` too). One class names them all, so the device and the operator's CLI cannot disagree.

>>> topics = FleetTopics("$aws", "site-a")
>>> topics.reported
'$aws/things/site-a/shadow/name/edgesight/update'
>>> topics.job_update("job-1")
'$aws/things/site-a/jobs/job-1/update'
>>> FleetTopics.all_reported("fleet")
'fleet/things/+/shadow/name/edgesight/update'
>>> topic = "fleet/things/site-b/jobs/job-1/update"
>>> thing_of(topic, "fleet"), job_id_of(topic, "fleet")
('site-b', 'job-1')
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = [
    "AWS_THING_PATTERN",
    "DEFAULT_ROOT",
    "JOB_ID_PATTERN",
    "SHADOW_NAME",
    "THING_PATTERN",
    "FleetTopics",
    "check_job_id",
    "check_root",
    "job_id_of",
    "jobs_mode",
    "thing_of",
]

DEFAULT_ROOT = "$aws"
SHADOW_NAME = "edgesight"
# AWS IoT's thing names ([a-zA-Z0-9:_-], 1-128), and '.' besides: a thing defaults to the site's name,
# which may hold one (a config check refuses it where AWS IoT answers).
THING_PATTERN = r"[A-Za-z0-9:_.-]{1,128}"
AWS_THING_PATTERN = r"[A-Za-z0-9:_-]{1,128}"
JOB_ID_PATTERN = r"[A-Za-z0-9_-]{1,64}"  # AWS IoT Jobs' job ids
_THING = re.compile(THING_PATTERN)
_JOB_ID = re.compile(JOB_ID_PATTERN)
_RESERVED = frozenset({"notify", "notify-next", "start-next", "get"})  # AWS's own levels under jobs/
_ROOT_LEVEL = re.compile(r"[^/+#\x00]{1,64}")


def jobs_mode(jobs: str, host: str | None) -> Literal["aws", "retained"]:
    """How jobs and desired state travel: ``auto`` is ``aws`` on AWS IoT Core (a host ending in
    ``.amazonaws.com``: its Jobs API and shadow service), else ``retained`` (retained messages).

    >>> jobs_mode("auto", "abc123-ats.iot.eu-west-1.amazonaws.com"), jobs_mode("auto", "mosquitto")
    ('aws', 'retained')
    """
    if jobs in ("aws", "retained"):
        return "aws" if jobs == "aws" else "retained"
    return "aws" if (host or "").lower().rstrip(".").endswith(".amazonaws.com") else "retained"


def check_root(root: str) -> str:
    """A topic root: levels without wildcards, no leading, trailing or doubled ``/``."""
    if not 0 < len(root) <= 128 or not all(_ROOT_LEVEL.fullmatch(level) for level in root.split("/")):
        raise ValueError("a topic root is one or more levels, '/' between them, without + # or NUL")
    return root


class FleetTopics:
    """Every topic of one thing (``R`` = root, ``T`` = thing). Properties are topics a device publishes
    to or subscribes to; ``job_*(job_id)`` name one job; class methods are operators' wildcard filters."""

    def __init__(self, root: str, thing: str) -> None:
        if not _THING.fullmatch(thing):
            raise ValueError(f"thing {thing[:60]!r} is not 1-128 letters, digits, : _ . -")
        self.root = check_root(root)
        self.thing = thing
        self.shadow = f"{root}/things/{thing}/shadow/name/{SHADOW_NAME}"
        self.jobs = f"{root}/things/{thing}/jobs"

    def __repr__(self) -> str:
        return f"FleetTopics({self.root!r}, {self.thing!r})"

    # Reported and desired state: the named shadow.
    @property
    def reported(self) -> str:
        """``R/things/T/shadow/name/edgesight/update``: the device's reported state (an AWS shadow update)."""
        return f"{self.shadow}/update"

    @property
    def update_accepted(self) -> str:
        return f"{self.shadow}/update/accepted"

    @property
    def update_rejected(self) -> str:
        """AWS IoT says here why a reported update was refused (too large, too deep)."""
        return f"{self.shadow}/update/rejected"

    @property
    def desired_delta(self) -> str:
        """``.../update/delta``: desired state; retained by the operator in retained mode, AWS's delta in aws."""
        return f"{self.shadow}/update/delta"

    @property
    def shadow_get(self) -> str:
        """aws mode: asks for the whole shadow at connect; answered on :attr:`shadow_get_accepted`."""
        return f"{self.shadow}/get"

    @property
    def shadow_get_accepted(self) -> str:
        return f"{self.shadow}/get/accepted"

    @property
    def shadow_get_rejected(self) -> str:
        return f"{self.shadow}/get/rejected"

    # Jobs: AWS IoT Jobs' MQTT API (aws mode) or retained documents (retained mode).
    @property
    def notify_next(self) -> str:
        return f"{self.jobs}/notify-next"

    @property
    def start_next(self) -> str:
        return f"{self.jobs}/start-next"

    @property
    def start_next_accepted(self) -> str:
        return f"{self.jobs}/start-next/accepted"

    @property
    def start_next_rejected(self) -> str:
        return f"{self.jobs}/start-next/rejected"

    @property
    def job_updates_accepted(self) -> str:
        """``R/things/T/jobs/+/update/accepted``: AWS IoT took a status update."""
        return f"{self.jobs}/+/update/accepted"

    @property
    def job_updates_rejected(self) -> str:
        """``R/things/T/jobs/+/update/rejected``: AWS IoT refused a status update (a version mismatch, ...)."""
        return f"{self.jobs}/+/update/rejected"

    @property
    def job_documents(self) -> str:
        """retained mode: ``R/things/T/jobs/+/document``, every job queued for this thing."""
        return f"{self.jobs}/+/document"

    @property
    def job_updates(self) -> str:
        """``R/things/T/jobs/+/update``: every job's status, as an operator follows one site."""
        return f"{self.jobs}/+/update"

    def job_update(self, job_id: str) -> str:
        """``R/things/T/jobs/<jobId>/update``: a job's status (retained in retained mode)."""
        return f"{self.jobs}/{check_job_id(job_id)}/update"

    def job_document(self, job_id: str) -> str:
        """retained mode: ``R/things/T/jobs/<jobId>/document``, where the operator queues a job."""
        return f"{self.jobs}/{check_job_id(job_id)}/document"

    def thing_of(self, topic: str) -> str | None:
        return thing_of(topic, self.root)

    def job_id_of(self, topic: str) -> str | None:
        return job_id_of(topic, self.root)

    @staticmethod
    def all_reported(root: str = DEFAULT_ROOT) -> str:
        """Every site's reported state: ``R/things/+/shadow/name/edgesight/update``."""
        return f"{check_root(root)}/things/+/shadow/name/{SHADOW_NAME}/update"

    @staticmethod
    def all_job_updates(root: str = DEFAULT_ROOT) -> str:
        """Every site's job statuses: ``R/things/+/jobs/+/update``."""
        return f"{check_root(root)}/things/+/jobs/+/update"

    @staticmethod
    def all_job_documents(root: str = DEFAULT_ROOT) -> str:
        """retained mode: every queued job document: ``R/things/+/jobs/+/document``."""
        return f"{check_root(root)}/things/+/jobs/+/document"


def check_job_id(job_id: str) -> str:
    """A job id that names one topic level: AWS's pattern, and none of the Jobs API's own levels."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id) or job_id in _RESERVED:
        raise ValueError(
            f"job id {str(job_id)[:60]!r} is not 1-64 letters, digits, _ - (nor {', '.join(sorted(_RESERVED))})"
        )
    return job_id


def _levels_after_root(topic: str, root: str) -> list[str] | None:
    prefix = f"{root}/things/"
    if not isinstance(topic, str) or not topic.startswith(prefix):
        return None
    return topic[len(prefix) :].split("/")


def thing_of(topic: str, root: str = DEFAULT_ROOT) -> str | None:
    """The thing a topic under ``root`` is about; None for any other topic or a name that is no thing's."""
    levels = _levels_after_root(topic, root)
    if not levels or not _THING.fullmatch(levels[0]):
        return None
    return levels[0]


def job_id_of(topic: str, root: str = DEFAULT_ROOT) -> str | None:
    """The job id of ``R/things/T/jobs/<jobId>/...`` (not of ``notify-next`` or ``start-next``)."""
    levels = _levels_after_root(topic, root)
    if not levels or len(levels) < 4 or levels[1] != "jobs" or levels[2] in _RESERVED:
        return None
    return levels[2] if _JOB_ID.fullmatch(levels[2]) and _THING.fullmatch(levels[0]) else None

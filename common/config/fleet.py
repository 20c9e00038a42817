"""``fleet:`` — this site as one of a fleet: state reported to, and jobs and desired state taken from, an
MQTT broker (AWS IoT Core or any other) in AWS IoT's shapes. The fleet service runs where this section is.

What the section leaves out is filled from the rest of the site file when it is loaded: ``thing`` from
``site.name``, ``mqtt`` from ``uplink.mqtt`` (its own client id, ``...-fleet``), the S3 settings from
``uplink.s3``; ``jobs: auto`` becomes ``aws`` or ``retained`` by the broker's host.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Formatter
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from common.config._types import HttpUrl, Section
from common.config.uplink import MqttSink
from common.fleet.topics import AWS_THING_PATTERN, DEFAULT_ROOT, THING_PATTERN, check_root, jobs_mode

__all__ = ["FleetConfig", "FleetSection", "fill_from_site"]

_PACKAGES = re.compile(r"(s3|https?)://[^\s]{1,2000}")


class FleetConfig(Section):
    """The fleet service's settings; after loading, ``thing`` and ``mqtt`` are always set."""

    thing: str | None = Field(
        None, pattern=f"^{THING_PATTERN}$", description="This site's IoT thing name; default site.name."
    )
    mqtt: MqttSink | None = Field(
        None,
        description="The broker operators reach this site through; default uplink.mqtt's (host, port, tls, "
        "username, password) with client_id <uplink's client id, or edgesight-<site>>-fleet.",
    )
    topic_root: str = Field(
        DEFAULT_ROOT,
        description="Topics are AWS IoT's (<root>/things/<thing>/shadow/name/edgesight/..., .../jobs/...) "
        "under this root on every broker; $aws is AWS IoT's own and Mosquitto takes it too.",
    )
    jobs: Literal["auto", "aws", "retained"] = Field(
        "auto",
        description="aws: AWS IoT Jobs and a named shadow; retained: job documents and desired state retained on "
        "any broker; auto: aws when the broker's host ends with .amazonaws.com.",
    )
    trusted_operators: list[Path] = Field(
        default_factory=list,
        description="ed25519 public keys (.pub files or folders of them, as site.trusted_keys) of the operators "
        "whose signed jobs and desired state this site takes. In retained mode nothing unsigned is ever taken "
        "(none listed: no job runs); in aws mode, unsigned jobs run only while this list is empty, and only "
        "on AWS IoT Core itself (jobs: aws on another broker needs this list).",
    )
    report_interval_s: float = Field(
        60.0, ge=1, le=86400, description="Reported state at least this often; offline after twice this unheard."
    )
    min_report_interval_s: float = Field(
        5.0, ge=0.1, le=3600, description="Reported state at most this often, however fast it changes."
    )
    packages: str | None = Field(
        None,
        description="Where desired models are fetched: a URL template with {name} and {version}, e.g. "
        "s3://bucket/edgesight/models/{name}/{version}.espkg (the package's signature is checked on install).",
    )
    s3_endpoint_url: str | None = Field(None, description="For s3:// downloads (MinIO...); default uplink.s3's.")
    s3_region: str | None = Field(None, description="For s3:// downloads; default uplink.s3's.")
    healthy_s: float = Field(
        10.0, ge=0, le=3600, description="A change is live and healthy this long before its job succeeds."
    )
    job_timeout_s: float = Field(300.0, ge=10, le=86400, description="A job not done by then fails (and rolls back).")
    allow_apps: bool = Field(False, description="install_app jobs are refused unless this is true.")
    console_url: HttpUrl | None = Field(None, description="This site's console, linked from the fleet table.")

    @property
    def jobs_mode(self) -> Literal["aws", "retained"]:
        """``jobs`` with ``auto`` decided by the broker's host."""
        return jobs_mode(self.jobs, self.mqtt.host if self.mqtt else None)

    @field_validator("topic_root")
    @classmethod
    def _root(cls, root: str) -> str:
        return check_root(root)

    @field_validator("packages")
    @classmethod
    def _template(cls, template: str | None) -> str | None:
        if template is None:
            return None
        if not _PACKAGES.fullmatch(template):
            raise ValueError("must be an s3://, https:// or http:// URL template")
        try:
            fields = [(field, spec, conversion) for _, field, spec, conversion in Formatter().parse(template)]
        except ValueError:
            raise ValueError("has a lone { or }; write {{ and }} for braces") from None
        names = {field for field, _, _ in fields if field is not None}
        if names != {"name", "version"} or any(spec or conversion for field, spec, conversion in fields if field):
            raise ValueError("must hold {name} and {version}, and no other placeholder")
        return template

    @model_validator(mode="after")
    def _intervals(self) -> FleetConfig:
        if self.min_report_interval_s > self.report_interval_s:
            raise ValueError(
                f"fleet.min_report_interval_s ({self.min_report_interval_s:g}) is longer than report_interval_s "
                f"({self.report_interval_s:g})"
            )
        return self


def _problem(key: str, message: str, value: Any = None) -> ValidationError:
    """An error at ``fleet.<key>`` (a ValidationError raised in a validator keeps its own location)."""
    error = InitErrorDetails(type=PydanticCustomError("fleet", message), loc=(key,), input=value)
    return ValidationError.from_exception_data("FleetConfig", [error])


def fill_from_site(fleet: FleetConfig, info: ValidationInfo) -> FleetConfig:
    """Runs as ``SiteConfig.fleet`` is validated (``site`` and ``uplink`` come before it): fills in what
    the section left to the rest of the file and checks what only the whole file can tell."""
    site, uplink = info.data.get("site"), info.data.get("uplink")
    if site is None or uplink is None:
        return fleet  # their own errors are reported; a second one here would only repeat them
    update: dict[str, Any] = {"thing": fleet.thing or site.name}
    if fleet.mqtt is None:
        if uplink.mqtt is None:
            raise _problem("mqtt", "no MQTT broker: give fleet.mqtt (host, port, tls...) or uplink.mqtt")
        base = uplink.mqtt.client_id or f"edgesight-{site.name}"
        update["mqtt"] = uplink.mqtt.model_copy(update={"client_id": f"{base}-fleet", "home_assistant": False})
    elif fleet.mqtt.client_id is None:
        base = (uplink.mqtt.client_id if uplink.mqtt else None) or f"edgesight-{site.name}"
        update["mqtt"] = fleet.mqtt.model_copy(update={"client_id": f"{base}-fleet"})
    if uplink.s3 is not None:
        update["s3_endpoint_url"] = fleet.s3_endpoint_url or uplink.s3.endpoint_url
        update["s3_region"] = fleet.s3_region or uplink.s3.region
    filled = fleet.model_copy(update=update)
    filled.jobs = filled.jobs_mode
    _check_against_aws(filled)
    return filled


def _check_against_aws(fleet: FleetConfig) -> None:
    """AWS IoT answers jobs and shadows only under ``$aws``, for thing names of its pattern, and keeps
    ``$aws`` to itself: retained documents there would go to its services, not to the site. Unsigned
    jobs are taken only from AWS IoT itself, whose policies decide who creates jobs: on any other
    broker any client could answer ``start-next`` with one."""
    on_aws = jobs_mode("auto", fleet.mqtt.host if fleet.mqtt else None) == "aws"
    if fleet.jobs == "aws" and not on_aws and not fleet.trusted_operators:
        host = fleet.mqtt.host if fleet.mqtt else None
        raise _problem(
            "trusted_operators",
            f"jobs: aws on a broker that is not AWS IoT Core ({host}) would run unsigned jobs any client sends: "
            "list the operators' keys in fleet.trusted_operators (or use jobs: retained)",
        )
    if fleet.jobs == "aws":
        if fleet.topic_root != DEFAULT_ROOT:
            raise _problem("topic_root", "jobs: aws needs topic_root $aws (AWS IoT answers only there)")
        if not re.fullmatch(AWS_THING_PATTERN, fleet.thing or ""):
            raise _problem(
                "thing", f"{fleet.thing!r} is no AWS IoT thing name (letters, digits, : _ -); set fleet.thing"
            )
    elif on_aws and fleet.topic_root == DEFAULT_ROOT:
        raise _problem("topic_root", "jobs: retained on AWS IoT Core needs a topic_root of your own ($aws is AWS's)")


# SiteConfig's field: the section, completed from the rest of the site file.
FleetSection = Annotated[FleetConfig, AfterValidator(fill_from_site)]

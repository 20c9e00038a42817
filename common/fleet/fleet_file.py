"""The operator's ``fleet.yaml``: the broker, the sites and groups of sites, and the key jobs are signed
with; what ``edgesight fleet ...`` reads. Loaded as the site file is (``${VAR}`` and ``${file:...}``
substituted, every problem as ``file:line: key: message``). Relative paths in it (``operator_key``, the
broker's TLS files) are relative to the fleet file's folder, wherever the command runs.

>>> fleet = parse_fleet_file('''
... broker: {host: mosquitto.example, port: 1883}
... sites: {plant-7: {}, plant-9: {thing: p9}}
... groups: {north: [plant-7, plant-9]}
... ''', "fleet.yaml", {})
>>> fleet.jobs_mode, fleet.targets(["north"])
('retained', ['plant-7', 'p9'])
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from common.config._types import HttpUrl, Name, Section
from common.config.loader import load_yaml
from common.config.uplink import MqttSink
from common.errors import ConfigError
from common.fleet.topics import AWS_THING_PATTERN, DEFAULT_ROOT, THING_PATTERN, FleetTopics, check_root, jobs_mode

__all__ = ["BucketConfig", "FleetFile", "FleetSite", "load_fleet_file", "parse_fleet_file"]


class BucketConfig(Section):
    name: str = Field(..., min_length=3, max_length=63, description="The S3 bucket packages are uploaded to.")
    prefix: str = Field("edgesight/models", description="Packages go to <prefix>/<name>/<version>.espkg.")
    region: str | None = None
    endpoint_url: str | None = Field(None, description="For MinIO and other S3-compatible stores.")


class FleetSite(Section):
    thing: str | None = Field(None, pattern=f"^{THING_PATTERN}$", description="Its IoT thing; default its name.")
    console: HttpUrl | None = Field(None, description="Its console's URL, for the fleet table.")


class FleetFile(Section):
    """``fleet.yaml``. Site names are the names of ``sites:``; a job's targets are sites or groups."""

    broker: MqttSink = Field(..., description="The broker every site's fleet service reaches (as uplink.mqtt).")
    topic_root: str = Field(DEFAULT_ROOT, description="As the sites' fleet.topic_root.")
    jobs: Literal["auto", "aws", "retained"] = Field("auto", description="As the sites' fleet.jobs.")
    bucket: BucketConfig | None = Field(None, description="Where `edgesight fleet` uploads model packages.")
    operator_key: Path | None = Field(
        None,
        description="This operator's ed25519 private key (`edgesight fleet keygen`), which signs jobs; "
        "relative to the fleet file's folder.",
    )
    sites: dict[Name, FleetSite] = Field(default_factory=dict)
    groups: dict[Name, list[Name]] = Field(default_factory=dict, description="Named lists of sites.")
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        return self._source

    @property
    def jobs_mode(self) -> Literal["aws", "retained"]:
        return jobs_mode(self.jobs, self.broker.host)

    def thing(self, site: str) -> str:
        return self.sites[site].thing or site

    def things(self) -> dict[str, str]:
        """Thing -> site, for every site (what :func:`common.fleet.roster.roster` expects)."""
        return {self.thing(site): site for site in self.sites}

    def topics(self, site: str) -> FleetTopics:
        return FleetTopics(self.topic_root, self.thing(site))

    def targets(self, names: Iterable[str]) -> list[str]:
        """The thing names of sites and groups named, each once, in order; ValueError for an unknown name."""
        things: list[str] = []
        for name in names:
            if name in self.sites:
                members = [name]
            elif name in self.groups:
                members = self.groups[name]
            else:
                known = sorted({*self.sites, *self.groups})
                raise ValueError(f"{name!r} is no site or group of {self.source} (known: {', '.join(known) or 'none'})")
            things += [self.thing(site) for site in members if self.thing(site) not in things]
        return things

    @field_validator("topic_root")
    @classmethod
    def _root(cls, root: str) -> str:
        return check_root(root)

    @model_validator(mode="after")
    def _consistent(self) -> FleetFile:
        problems: list[InitErrorDetails] = []
        for group, members in self.groups.items():
            if group in self.sites:
                problems.append(_problem(("groups", group), f"{group!r} names a site too; a target must mean one"))
            for index, site in enumerate(members):
                if site not in self.sites:
                    problems.append(_problem(("groups", group, index), f"{site!r} is not under sites:"))
        owners: dict[str, str] = {}
        for site in self.sites:
            thing = self.thing(site)
            if thing in owners:
                problems.append(_problem(("sites", site), f"thing {thing!r} is also site {owners[thing]!r}'s thing"))
            owners[thing] = site
            if self.jobs_mode == "aws" and not re.fullmatch(AWS_THING_PATTERN, thing):
                problems.append(_problem(("sites", site), f"{thing!r} is no AWS IoT thing name; give it a thing:"))
        if self.jobs_mode == "aws" and self.topic_root != DEFAULT_ROOT:
            problems.append(_problem(("topic_root",), "jobs: aws needs topic_root $aws (AWS IoT answers only there)"))
        if problems:
            raise ValidationError.from_exception_data("FleetFile", problems)
        return self


def _problem(loc: tuple[str | int, ...], message: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("fleet_file", message), loc=loc, input=None)


def _resolve_paths(data: dict[str, Any], folder: Path) -> None:
    """``operator_key`` and the broker's TLS files, when relative, made relative to ``folder`` (``~`` expanded).

    >>> data = {"operator_key": "keys/op.key", "broker": {"tls": {"ca_file": "/etc/ca.pem", "cert_file": "c.pem"}}}
    >>> _resolve_paths(data, Path("/home/me/fleet"))
    >>> data["operator_key"], data["broker"]["tls"]
    ('/home/me/fleet/keys/op.key', {'ca_file': '/etc/ca.pem', 'cert_file': '/home/me/fleet/c.pem'})
    """
    broker = data.get("broker")
    tls = broker.get("tls") if isinstance(broker, dict) else None
    for holder, key in [(data, "operator_key"), *((tls, key) for key in _TLS_FILES if isinstance(tls, dict))]:
        value = holder.get(key) if isinstance(holder, dict) else None
        if isinstance(value, str) and value:
            holder[key] = str(folder / Path(value).expanduser())  # an absolute one stays as it is


_TLS_FILES = ("ca_file", "cert_file", "key_file")


def parse_fleet_file(
    text: str, source: str = "<string>", environ: Mapping[str, str] | None = None, folder: Path | None = None
) -> FleetFile:
    """Validate YAML text as a fleet file; every problem is reported at once (:class:`ConfigError`).
    ``folder``: where its relative paths start (the file's own folder); None leaves them as they are."""
    data, lines = load_yaml(text, source, environ)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: (top): expected a mapping (broker, sites, ...), got {type(data).__name__}"])
    if folder is not None:
        _resolve_paths(data, folder)
    fleet: FleetFile | None = None
    try:
        fleet = FleetFile.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            message = error["msg"].removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (check its spelling)"
            lines.error(tuple(error["loc"]), message)
    if lines.problems or fleet is None:
        raise ConfigError(lines.problems)
    fleet._source = source
    return fleet


def load_fleet_file(path: str | Path, environ: Mapping[str, str] | None = None) -> FleetFile:
    """Read and validate a fleet file; :class:`ConfigError` names file, line and key."""
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{file}: (file): not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    return parse_fleet_file(text, str(file), environ, file.absolute().parent)

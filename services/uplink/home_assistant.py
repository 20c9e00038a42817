"""Home Assistant MQTT discovery, the vocabulary: which entities a site has, where their configs and
values go, and what each config says. Pure; :mod:`services.uplink.home_assistant_feed` keeps Home
Assistant told.

The site is one device (``edgesight_<site>``). Its sensors:

- each line rule's running totals per label, ``in`` and ``out`` (``state_class: total_increasing``);
- each zone rule's occupancy per label (``state_class: measurement``);
- each camera's state (``device_class: enum``: connecting, streaming, stalled, backoff, stopped).

A config is retained on ``<discovery prefix>/sensor/edgesight_<site>/<object id>/config``; its value,
retained too and a plain number or word, on ``<prefix>/<site>/<camera>/<rule>/<label>/in|out|occupancy``
or ``<prefix>/<site>/<camera>/state``. Availability is the uplink's own: ``<prefix>/<site>/available``,
``online`` while connected, ``offline`` as its last will and when it stops. A camera's state is sent
again with each status ingest repeats (every ``bus.health_interval_s``) and expires (``expire_after``)
when those stop: a dead ingest leaves no camera ``streaming`` in Home Assistant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import typing
from collections.abc import Mapping
from typing import Any, Literal

from common.config.cameras import CameraConfig
from common.config.rules import LineRule, ZoneRule
from contracts import CameraState

__all__ = ["Availability", "Discovery", "EntityKey", "Kind", "allowed", "site_entities", "slug"]

Kind = Literal["in", "out", "occupancy", "camera"]
KINDS: tuple[Kind, ...] = typing.get_args(Kind)
CAMERA_STATES: list[str] = list(typing.get_args(CameraState))


@dataclasses.dataclass(frozen=True, order=True)
class EntityKey:
    """One sensor: ``kind`` of ``camera`` (and its ``rule`` and ``label``; empty for a camera's state)."""

    kind: Kind
    camera: str
    rule: str = ""
    label: str = ""

    def as_list(self) -> list[str]:
        return [self.kind, self.camera, self.rule, self.label]

    @classmethod
    def from_list(cls, fields: object) -> EntityKey:
        """The key written by :meth:`as_list`; ValueError for anything else (a file edited by hand)."""
        if not (isinstance(fields, list) and len(fields) == 4 and all(isinstance(f, str) for f in fields)):
            raise ValueError(f"expected [kind, camera, rule, label], got {fields!r}")
        if fields[0] not in KINDS:
            raise ValueError(f"expected a kind of {KINDS}, got {fields[0]!r}")
        return cls(typing.cast(Kind, fields[0]), fields[1], fields[2], fields[3])


@dataclasses.dataclass(frozen=True)
class Availability:
    """Where and how the uplink says it is up: Home Assistant shows every entity unavailable otherwise."""

    topic: str
    online: str
    offline: str


def slug(text: str) -> str:
    """``text`` as Home Assistant's ids want it: lower case letters, digits and ``_``.

    >>> slug("Dock-1 traffic light.in")
    'dock_1_traffic_light_in'
    """
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "_"


def allowed(cameras: Mapping[str, CameraConfig], key: EntityKey) -> bool:
    """Whether the site file has ``key``: an enabled camera, a rule of the kind that makes the value
    (a line for in/out, a zone for occupancy), and the label among the rule's classes (any, if none).

    >>> from common.config.cameras import CameraConfig
    >>> dock = CameraConfig.model_validate({"url": "rtsp://h/1", "rules": {
    ...     "door": {"type": "line", "line": [[0, 0.5], [1, 0.5]], "classes": ["person"]},
    ...     "bay": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]]}}})
    >>> [allowed({"dock": dock}, key) for key in (EntityKey("in", "dock", "door", "person"),
    ...     EntityKey("in", "dock", "door", "car"), EntityKey("occupancy", "dock", "bay", "car"),
    ...     EntityKey("occupancy", "dock", "door", "person"), EntityKey("camera", "dock"))]
    [True, False, True, False, True]
    """
    camera = cameras.get(key.camera)
    if camera is None or not camera.enabled:
        return False
    if key.kind == "camera":
        return True
    rule = camera.rules.get(key.rule)
    kind = LineRule if key.kind in ("in", "out") else ZoneRule
    return isinstance(rule, kind) and (not rule.classes or key.label in rule.classes)


def site_entities(cameras: Mapping[str, CameraConfig]) -> set[EntityKey]:
    """The entities the site file names: every enabled camera's state, and every label a line or zone
    rule lists in ``classes``. (A rule without classes gains a label's entities when an event names it.)"""
    keys: set[EntityKey] = set()
    for name, camera in cameras.items():
        if not camera.enabled:
            continue
        keys.add(EntityKey("camera", name))
        for rule_name, rule in camera.rules.items():
            kinds: tuple[Kind, ...] = ("in", "out") if isinstance(rule, LineRule) else ("occupancy",)
            if isinstance(rule, LineRule | ZoneRule):
                keys.update(EntityKey(kind, name, rule_name, label) for kind in kinds for label in rule.classes)
    return keys


class Discovery:
    """Topics and discovery configs of one site's entities.

    >>> discovery = Discovery("homeassistant", "hq", "edgesight/hq",
    ...     Availability("edgesight/hq/available", "online", "offline"), "0.1.0")
    >>> key = EntityKey("in", "dock", "door", "person")
    >>> discovery.state_topic(key)
    'edgesight/hq/dock/door/person/in'
    >>> discovery.config_topic(key)
    'homeassistant/sensor/edgesight_hq/dock_door_person_in_...'
    >>> config = discovery.config(key)
    >>> config["state_class"], config["default_entity_id"], config["unique_id"]
    ('total_increasing', 'sensor.edgesight_hq_dock_door_person_in', 'edgesight/hq/dock/door/person/in')
    """

    def __init__(
        self,
        prefix: str,
        site: str,
        base: str,
        availability: Availability,
        version: str,
        camera_expire_after_s: int | None = None,
    ) -> None:
        self.prefix = prefix
        self.site = site
        self.base = base
        self.availability = availability
        self.version = version
        self.camera_expire_after_s = camera_expire_after_s
        self.node_id = f"edgesight_{slug(site)}"

    def unique_id(self, key: EntityKey) -> str:
        """Stable for as long as the site, camera, rule and label keep their names; ``/`` is in none of them."""
        return "/".join(["edgesight", self.site, *(part for part in key.as_list()[1:] if part), key.kind])

    def object_id(self, key: EntityKey) -> str:
        """The topic's object id: readable, and made unique by a hash of the unique id (two names may slug alike)."""
        digest = hashlib.sha256(self.unique_id(key).encode()).hexdigest()[:8]
        readable = slug(" ".join(part for part in key.as_list()[1:] if part) + f" {key.kind}")
        return f"{readable[:80]}_{digest}"

    def config_topic(self, key: EntityKey) -> str:
        return f"{self.prefix}/sensor/{self.node_id}/{self.object_id(key)}/config"

    def state_topic(self, key: EntityKey) -> str:
        if key.kind == "camera":
            return f"{self.base}/{key.camera}/state"
        return f"{self.base}/{key.camera}/{key.rule}/{key.label}/{key.kind}"

    def config(self, key: EntityKey) -> dict[str, Any]:
        """The discovery config of ``key``: full key names (no abbreviations), values as plain payloads."""
        words = [part for part in key.as_list()[1:] if part]
        config: dict[str, Any] = {
            "name": " ".join([*words, "state" if key.kind == "camera" else key.kind]),
            "unique_id": self.unique_id(key),
            "default_entity_id": f"sensor.{self.node_id}_{slug(' '.join(words))}_{key.kind}",
            "state_topic": self.state_topic(key),
            "availability": [
                {
                    "topic": self.availability.topic,
                    "payload_available": self.availability.online,
                    "payload_not_available": self.availability.offline,
                }
            ],
            "device": {
                "identifiers": [self.node_id],
                "name": f"EdgeSight {self.site}",
                "manufacturer": "EdgeSight",
                "model": "EdgeSight site",
                "sw_version": self.version,
            },
            "origin": {"name": "EdgeSight", "sw_version": self.version},
        }
        if key.kind == "camera" and self.camera_expire_after_s:  # counts stay put for hours: they never expire
            config["expire_after"] = self.camera_expire_after_s
        return config | _KIND_OPTIONS[key.kind]


_KIND_OPTIONS: dict[Kind, dict[str, Any]] = {
    "in": {"state_class": "total_increasing", "unit_of_measurement": "crossings", "icon": "mdi:arrow-right-bold"},
    "out": {"state_class": "total_increasing", "unit_of_measurement": "crossings", "icon": "mdi:arrow-left-bold"},
    "occupancy": {"state_class": "measurement", "unit_of_measurement": "objects", "icon": "mdi:account-group"},
    "camera": {
        "device_class": "enum",
        "options": CAMERA_STATES,
        "entity_category": "diagnostic",
        "icon": "mdi:cctv",
    },
}

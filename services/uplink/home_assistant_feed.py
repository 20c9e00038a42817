"""Home Assistant kept told: the discovery configs of the site's entities and their latest values, as
retained MQTT messages (the vocabulary is :mod:`services.uplink.home_assistant`).

- Values come from what the uplink delivers: a ``line_cross`` carries its label's running ``in``/``out``
  totals, a ``zone_enter``/``zone_exit`` the zone's occupancy per label, a ``count_report`` each label's
  totals; the ``cameras`` stream each camera's state. An older value (a resent event, the report of an
  earlier interval) never replaces a newer one, so a ``total_increasing`` sensor never steps back (Home
  Assistant would take that for a meter reset).
- Entities come from the site file (cameras, and the labels a rule's ``classes`` list) and, for a rule
  without classes, from the first value of a label. What was announced is kept in
  ``state_dir/uplink-home-assistant.json``, so that a rule, label or camera gone from the site file has
  its config deleted (an empty retained message) at the next start, or when rules apply a reload of the
  site file (the uplink reads it again on that audit record). Switched off, the feature deletes all.
- The sink's own retained topics, each line rule's ``<prefix>/<site>/<camera>/<rule>/count`` and each
  rule's latest report at ``<prefix>/<site>/reports/<camera>/<rule>``, are remembered in the same file
  (``retained``; Home Assistant on or off) before they are published, and cleared the same way at the
  same moments once their rule is gone (renamed, removed, its camera removed; a count once its rule is
  no longer a line). A file from before that is read with the count and report topics of the rules it
  announced entities of.
- Each message is retained and published until its PUBACK: what a broken connection left is sent again,
  and after a reconnect everything is (a broker that lost its retained messages gets them back).

Nothing arriving over MQTT is read: the uplink subscribes to no topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal, cast, get_args

from common.config import SiteConfig, load_config
from common.config.cameras import CameraConfig
from common.config.rules import LineRule
from common.errors import EdgeSightError
from common.files import write_private
from contracts import CameraStatus, Event
from services.uplink.home_assistant import Availability, Discovery, EntityKey, Kind, allowed, site_entities

__all__ = ["STATE_FILE", "HomeAssistantFeed", "Retained", "retained_topic"]

log = logging.getLogger(__name__)

STATE_FILE = "uplink-home-assistant.json"
ZONE_EVENTS = ("zone_enter", "zone_exit")
REPORT_TOTALS: dict[str, Kind] = {"total_in": "in", "total_out": "out"}  # a count_report's attributes

Retained = Literal["count", "report"]  # the sink's own retained topics per rule
RETAINED: tuple[Retained, ...] = get_args(Retained)


def retained_topic(base: str, what: Retained, camera: str, rule: str) -> str:
    """Where the MQTT sink retains a line rule's counts, or a rule's latest ``count_report``.

    >>> [retained_topic("edgesight/hq", what, "dock", "door") for what in ("count", "report")]
    ['edgesight/hq/dock/door/count', 'edgesight/hq/reports/dock/door']
    """
    return f"{base}/{camera}/{rule}/count" if what == "count" else f"{base}/reports/{camera}/{rule}"


def _version() -> str:
    try:
        return version("edgesight")
    except PackageNotFoundError:
        return "unknown"


class HomeAssistantFeed:
    """The retained messages Home Assistant should hold, and which of them the broker has confirmed."""

    def __init__(
        self, discovery: Discovery, cameras: Mapping[str, CameraConfig], state_path: Path, *, enabled: bool
    ) -> None:
        self.discovery = discovery
        self.state_path = state_path
        self.enabled = enabled
        self.site_file: str | None = None
        self.cameras: Mapping[str, CameraConfig] = {}
        self.entities: set[EntityKey] = set()
        self.values: dict[EntityKey, tuple[int, str]] = {}  # key -> (wall clock ns of the value, payload)
        self.wanted: dict[str, bytes] = {}  # topic -> retained payload (b"": delete the retained message)
        self.confirmed: dict[str, bytes] = {}  # topic -> the payload the broker acknowledged
        # config topic -> its entity; the sink's retained topic -> (what, camera, rule): as on disk
        self.announced, self.retained = self._load()
        self._saved: dict[str, Any] | None = None  # what the file holds, once written
        self.changed = asyncio.Event()
        self._publishing = asyncio.Lock()
        self.apply_site(cameras)

    @classmethod
    def for_site(cls, config: SiteConfig, base: str, availability: Availability) -> HomeAssistantFeed:
        """The feed of ``config``'s site; with the feature off it deletes what it announced, and keeps the
        sink's retained count and report topics of rules gone cleared."""
        mqtt = config.uplink.mqtt
        assert mqtt is not None
        state_path = Path(config.site.state_dir) / STATE_FILE
        expire_after = max(60, math.ceil(6 * config.bus.health_interval_s))  # ingest repeats each camera's status
        discovery = Discovery(
            mqtt.home_assistant_prefix, config.site.name, base, availability, _version(), expire_after
        )
        feed = cls(discovery, config.cameras, state_path, enabled=mqtt.home_assistant)
        feed.site_file = config.source if Path(config.source).is_file() else None
        return feed

    # --- entities ---------------------------------------------------------------------------------

    def apply_site(self, cameras: Mapping[str, CameraConfig]) -> None:
        """Announces what the site file names and deletes what it no longer has (all of it when off)."""
        self.cameras = cameras
        wanted = {key for key in self.entities | set(self.announced.values()) if self._allowed(key)}
        for topic, key in list(self.announced.items()):
            if topic != self.discovery.config_topic(key) or key not in wanted:  # gone, or moved (a new prefix)
                self._delete(topic, key, forget=key not in wanted)
        if self.enabled:
            wanted |= site_entities(cameras)
        for key in wanted:
            self._announce(key)
        for topic, (what, camera, rule) in list(self.retained.items()):
            moved = topic != retained_topic(self.discovery.base, what, camera, rule)  # a new topic prefix or site
            if moved or not self._rule_has(what, camera, rule):
                self._want(topic, b"")
        self._save()

    def _rule_has(self, what: Retained, camera: str, rule: str) -> bool:
        """Whether the site file still has the rule that retains ``what`` (a count: a line rule)."""
        config = self.cameras.get(camera)
        found = config.rules.get(rule) if config is not None else None
        return found is not None and (what == "report" or isinstance(found, LineRule))

    def track(self, what: Retained, camera: str, rule: str) -> None:
        """The sink retains ``what`` of ``rule``: remembered (on disk, before it is published) so that it is
        cleared once the rule is gone; a deletion of that topic not yet sent is dropped (the new value wins)."""
        topic = retained_topic(self.discovery.base, what, camera, rule)
        if self.wanted.get(topic) == b"":
            del self.wanted[topic]
            self.confirmed.pop(topic, None)
        if self.retained.get(topic) != (what, camera, rule):
            self.retained[topic] = (what, camera, rule)
            try:
                self._save()
            except OSError as exc:  # the value still goes out; the file is written with the next change
                log.warning("retained topic not remembered", extra={"topic": topic, "error": str(exc)[:200]})

    def _allowed(self, key: EntityKey) -> bool:
        """Whether ``key`` is to be announced: a label with an MQTT wildcard (or NUL) in it makes no state
        topic that can be published to (paho would refuse it on every try), so it has no entity."""
        return self.enabled and allowed(self.cameras, key) and not any(c in key.label for c in "+#\0")

    def _announce(self, key: EntityKey) -> None:
        topic = self.discovery.config_topic(key)
        self.entities.add(key)
        self.announced[topic] = key
        self._want(topic, json.dumps(self.discovery.config(key), separators=(",", ":")).encode())
        if key in self.values:
            self._want(self.discovery.state_topic(key), self.values[key][1].encode())

    def _delete(self, config_topic: str, key: EntityKey, *, forget: bool) -> None:
        """An empty retained config removes the entity from Home Assistant; with ``forget``, an empty
        retained state clears its value too."""
        self._want(config_topic, b"")
        if forget:
            self.entities.discard(key)
            self.values.pop(key, None)
            self._want(self.discovery.state_topic(key), b"")

    def _want(self, topic: str, payload: bytes) -> None:
        self.wanted[topic] = payload
        if self.confirmed.get(topic) != payload:
            self.changed.set()

    # --- values -----------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        """The values ``event`` carries (delivered events only: Home Assistant sees what upstream saw)."""
        if not self.enabled:
            return
        if event.event_type == "line_cross" and event.object is not None:
            for direction in ("in", "out"):
                if direction in event.counts:
                    key = EntityKey(direction, event.camera, event.rule, event.object.label)
                    self._value(key, event.ts_ns, event.counts[direction])
        elif event.event_type in ZONE_EVENTS:
            # the zone's occupancy after the change: a label not counted has nobody left inside
            labels = self._labels(event.camera, event.rule, "occupancy")
            labels |= set(event.counts) | ({event.object.label} if event.object is not None else set())
            for label in labels:
                key = EntityKey("occupancy", event.camera, event.rule, label)
                self._value(key, event.ts_ns, event.counts.get(label, 0))
        elif event.event_type == "count_report":
            self._observe_report(event)

    def _observe_report(self, event: Event) -> None:
        """A report's totals (``<label>.total_in``, ``<label>.total_out``) as of its interval's end; a
        zone's labels (``<label>.occupancy_mean``) are announced, their value waits for a zone event."""
        at = event.end_ns or event.ts_ns
        for name, value in event.attributes.items():
            label, _, metric = name.rpartition(".")
            if not label or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            label = self._known_label(event, label)
            if metric in REPORT_TOTALS:
                self._value(EntityKey(REPORT_TOTALS[metric], event.camera, event.rule, label), at, int(value))
            elif metric == "occupancy_mean":
                self._ensure(EntityKey("occupancy", event.camera, event.rule, label))

    def _known_label(self, event: Event, name: str) -> str:
        """The label an attribute's name stands for: attribute names hold no space (``traffic_light``)."""
        camera = self.cameras.get(event.camera)
        rule = camera.rules.get(event.rule) if camera is not None else None
        known = set(event.counts) | self._labels(event.camera, event.rule) | set(rule.classes if rule else [])
        return next((label for label in sorted(known) if label.replace(" ", "_") == name), name)

    def _labels(self, camera: str, rule: str, kind: str | None = None) -> set[str]:
        return {
            key.label for key in self.entities if (key.camera, key.rule) == (camera, rule) and kind in (None, key.kind)
        }

    def camera(self, status: CameraStatus) -> None:
        """A camera's status, also one that repeats its state: sent again, so that ``expire_after`` starts over."""
        if not self.enabled:
            return
        key = EntityKey("camera", status.camera)
        self._value(key, status.ts_ns, status.state)
        if self.values.get(key, (None,))[0] == status.ts_ns:
            self.confirmed.pop(self.discovery.state_topic(key), None)
            self.changed.set()

    def _ensure(self, key: EntityKey) -> bool:
        """Whether ``key`` is an entity, announcing it first if the site file allows it."""
        if key not in self.entities:
            if not self._allowed(key):
                return False
            self._announce(key)
            self._save()
        return True

    def _value(self, key: EntityKey, at_ns: int, value: object) -> None:
        if not self._ensure(key):
            return
        latest = self.values.get(key)
        if latest is not None and latest[0] > at_ns:
            return  # older than what Home Assistant has
        self.values[key] = (at_ns, str(value))
        self._want(self.discovery.state_topic(key), str(value).encode())

    # --- publishing -------------------------------------------------------------------------------

    def pending(self) -> list[tuple[str, bytes]]:
        return [(topic, payload) for topic, payload in self.wanted.items() if self.confirmed.get(topic) != payload]

    def reconnected(self) -> None:
        """A new connection: everything is published again (the broker may have lost its retained messages)."""
        self.confirmed.clear()
        if self.wanted:
            self.changed.set()

    async def take(self, events: Iterable[Event]) -> None:
        """What delivered events change; a reload that rules applied makes the site file read again."""
        for event in events:
            if event.event_type == "audit" and event.rule == "rules.reload":
                if event.attributes.get("result") == "applied":
                    await self.reload_site()
            else:
                self.observe(event)

    async def reload_site(self) -> None:
        if self.site_file is None:
            return
        try:
            config: SiteConfig = await asyncio.to_thread(load_config, self.site_file)
        except EdgeSightError as exc:
            log.warning("site file not read again; Home Assistant keeps its entities", extra={"error": str(exc)})
            return
        self.apply_site(config.cameras)

    async def publish(self, client: Any, qos: int) -> None:
        """Publishes what the broker has not confirmed, all at once (each message's latest payload, in
        one go: no older payload can overtake a newer one); raises the first failure after the rest."""
        async with self._publishing:
            messages = self.pending()
            if not messages:
                return
            results = await asyncio.gather(
                *(client.publish(topic, payload, qos=qos, retain=True, timeout=10) for topic, payload in messages),
                return_exceptions=True,
            )
            failure: BaseException | None = None
            for (topic, payload), result in zip(messages, results, strict=True):
                if isinstance(result, ValueError):  # paho refuses the topic or payload: on every try, so never again
                    log.warning("not published to Home Assistant", extra={"topic": topic[:200], "error": str(result)})
                    self.wanted.pop(topic, None)
                    continue
                if isinstance(result, BaseException):
                    failure = failure or result
                    continue
                self.confirmed[topic] = payload
                if not payload and self.wanted.get(topic) == b"":  # deleted for good: forget the topic
                    del self.wanted[topic], self.confirmed[topic]
                    self.announced.pop(topic, None)
                    self.retained.pop(topic, None)
            self._save()
            if failure is not None:
                raise failure

    # --- what was announced, on disk --------------------------------------------------------------

    def _load(self) -> tuple[dict[str, EntityKey], dict[str, tuple[Retained, str, str]]]:
        try:
            document = json.loads(self.state_path.read_text())
            announced = {str(topic): EntityKey.from_list(key) for topic, key in document["announced"].items()}
        except FileNotFoundError:
            return {}, {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "Home Assistant state unreadable: entities removed meanwhile stay in Home Assistant",
                extra={"path": str(self.state_path), "error": str(exc)[:200]},
            )
            return {}, {}
        if "retained" not in document:  # written before retained topics were kept: those of its line and zone rules
            return announced, self._retained_of(announced.values())
        try:
            retained = {str(topic): _retained_entry(entry) for topic, entry in document["retained"].items()}
        except (ValueError, TypeError, AttributeError) as exc:
            log.warning(
                "retained topics unreadable: those of rules removed meanwhile stay on the broker",
                extra={"path": str(self.state_path), "error": str(exc)[:200]},
            )
            return announced, {}
        return announced, retained

    def _retained_of(self, keys: Iterable[EntityKey]) -> dict[str, tuple[Retained, str, str]]:
        """The retained topics the rules of ``keys`` may have: a line's count, a line's or zone's report."""
        entries: set[tuple[Retained, str, str]] = set()
        for key in keys:
            if key.kind in ("in", "out"):
                entries.add(("count", key.camera, key.rule))
            if key.kind != "camera":
                entries.add(("report", key.camera, key.rule))
        return {retained_topic(self.discovery.base, *entry): entry for entry in entries}

    def _save(self) -> None:
        """When what was announced or retained changed: written whole and renamed into place (a crash leaves
        the old file or the new one); removed once the feature is off and nothing is left to delete."""
        document: dict[str, Any] = {
            "announced": {topic: key.as_list() for topic, key in sorted(self.announced.items())},
            "retained": {topic: list(entry) for topic, entry in sorted(self.retained.items())},
        }
        if document == self._saved:
            return
        if not self.enabled and not document["announced"] and not document["retained"]:
            self.state_path.unlink(missing_ok=True)
        else:
            temporary = self.state_path.with_name(self.state_path.name + ".tmp")
            write_private(temporary, json.dumps(document, indent=1).encode())
            os.replace(temporary, self.state_path)
        self._saved = document


def _retained_entry(fields: object) -> tuple[Retained, str, str]:
    """``[what, camera, rule]`` as :meth:`HomeAssistantFeed._save` writes it; ValueError for anything else."""
    if not (isinstance(fields, list) and len(fields) == 3 and all(isinstance(f, str) for f in fields)):
        raise ValueError(f"expected [what, camera, rule], got {fields!r}")
    if fields[0] not in RETAINED:
        raise ValueError(f"expected one of {RETAINED}, got {fields[0]!r}")
    return cast(Retained, fields[0]), fields[1], fields[2]

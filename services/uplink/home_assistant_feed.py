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
- Each message is retained and published until its PUBACK: what a broken connection left is sent again,
  and after a reconnect everything is (a broker that lost its retained messages gets them back).

Nothing arriving over MQTT is read: the uplink subscribes to no topic.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Iterable, Mapping
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from common.config import SiteConfig, load_config
from common.config.cameras import CameraConfig
from common.errors import EdgeSightError
from common.files import write_private
from contracts import CameraStatus, Event
from services.uplink.home_assistant import Availability, Discovery, EntityKey, Kind, allowed, site_entities

__all__ = ["STATE_FILE", "HomeAssistantFeed"]

log = logging.getLogger(__name__)

STATE_FILE = "uplink-home-assistant.json"
ZONE_EVENTS = ("zone_enter", "zone_exit")
REPORT_TOTALS: dict[str, Kind] = {"total_in": "in", "total_out": "out"}  # a count_report's attributes


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
        self.announced: dict[str, EntityKey] = self._load()  # config topic -> its entity, as on disk
        self._saved: dict[str, list[str]] | None = None  # what the file holds, once written
        self.changed = asyncio.Event()
        self._publishing = asyncio.Lock()
        self.apply_site(cameras)

    @classmethod
    def for_site(cls, config: SiteConfig, base: str, availability: Availability) -> HomeAssistantFeed | None:
        """The feed of ``config``'s site; None when the feature is off and nothing is left to delete."""
        mqtt = config.uplink.mqtt
        assert mqtt is not None
        state_path = Path(config.site.state_dir) / STATE_FILE
        if not mqtt.home_assistant and not state_path.exists():
            return None
        discovery = Discovery(mqtt.home_assistant_prefix, config.site.name, base, availability, _version())
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
        self._save()

    def _allowed(self, key: EntityKey) -> bool:
        return self.enabled and allowed(self.cameras, key)

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
        if self.enabled:
            self._value(EntityKey("camera", status.camera), status.ts_ns, status.state)

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
            for (topic, payload), result in zip(messages, results, strict=True):
                if isinstance(result, BaseException):
                    continue
                self.confirmed[topic] = payload
                if not payload and self.wanted.get(topic) == b"":  # deleted for good: forget the topic
                    del self.wanted[topic], self.confirmed[topic]
                    self.announced.pop(topic, None)
            self._save()
            failure = next((result for result in results if isinstance(result, BaseException)), None)
            if failure is not None:
                raise failure

    # --- what was announced, on disk --------------------------------------------------------------

    def _load(self) -> dict[str, EntityKey]:
        try:
            document = json.loads(self.state_path.read_text())
            return {str(topic): EntityKey.from_list(key) for topic, key in document["announced"].items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning(
                "Home Assistant state unreadable: entities removed meanwhile stay in Home Assistant",
                extra={"path": str(self.state_path), "error": str(exc)[:200]},
            )
            return {}

    def _save(self) -> None:
        """When what was announced changed: written whole and renamed into place (a crash leaves the old
        file or the new one); removed once the feature is off and nothing is left to delete."""
        announced = {topic: key.as_list() for topic, key in sorted(self.announced.items())}
        if announced == self._saved:
            return
        if not self.enabled and not announced:
            self.state_path.unlink(missing_ok=True)
        else:
            temporary = self.state_path.with_name(self.state_path.name + ".tmp")
            write_private(temporary, json.dumps({"announced": announced}, indent=1).encode())
            os.replace(temporary, self.state_path)
        self._saved = announced

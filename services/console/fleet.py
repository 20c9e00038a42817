"""What the console knows of the fleet: every site's newest reported state, heard on the fleet's MQTT broker.

With ``console.fleet: true`` the console subscribes to ``<topic_root>/things/+/shadow/name/edgesight/update``
(each site's fleet service publishes its REPORTED state there: retained on a plain broker, so a console that
starts late sees every site at once) and keeps the newest message per thing. Everything heard is untrusted:
a payload over ``MAX_PAYLOAD`` bytes, one that does not parse (numbers included: no count or time of ours is
beyond 1e15) and one naming another thing than its topic are dropped and counted (``dropped``, and
``edgesight_console_fleet_messages_dropped_total{reason}``; one log line a minute with the counts). A report
stamped after it arrived counts as made when it arrived, and an ``interval_s`` over a day as a day
(:func:`common.fleet.shapes.parse_reported`), so a silent site goes offline. With ``MAX_THINGS`` sites kept, a
new one takes the place of the stalest (oldest report; counted as ``too_many_things``): a flood of made-up
things hides a real new site only while it keeps coming, never for good. Memory is bounded by those two
numbers. A site's console_url is kept only as an http(s) link without credentials (:func:`safe_link`); the
page escapes every other string it shows.

The broker is ``fleet.mqtt`` (else ``uplink.mqtt``), connected as every MQTT client of ours (common/mqtt.py);
the client id is the broker's own with ``-console-fleet`` instead of ``-fleet``, so that it never takes over
the fleet service's or the uplink's connection. A lost connection is made again after a backoff.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import urllib.parse
from typing import Any

import aiomqtt

from common.backoff import RestartBackoff
from common.config import SiteConfig
from common.config.uplink import MqttSink
from common.fleet.roster import SiteRow, roster
from common.fleet.shapes import MalformedMessage, parse_reported
from common.fleet.topics import FleetTopics, thing_of
from common.fleet.untrusted import number
from common.logging import DropTally
from common.mqtt import client_options, keep_connected
from services.console import metrics

__all__ = [
    "DROP_REASONS",
    "MAX_PAYLOAD",
    "MAX_THINGS",
    "FleetBroker",
    "FleetFollower",
    "fleet_broker",
    "fleet_problems",
    "safe_link",
]

log = logging.getLogger(__name__)

MAX_THINGS = 1000  # sites kept; a new one beyond this evicts the stalest (a real fleet this large wants its own tool)
MAX_PAYLOAD = 16 * 1024  # bytes of one reported state; a site sends at most 8 kB
MAX_LINK = 256  # characters of a console_url (a site cuts it there: common.fleet.shapes.fit_reported)
DROP_REASONS = ("too_large", "malformed", "wrong_thing", "too_many_things")
FIRST_BACKOFF_S, MAX_BACKOFF_S = 1.0, 30.0  # between connection attempts: doubling, capped


@dataclasses.dataclass(frozen=True)
class FleetBroker:
    """Where the console hears the fleet: the broker's settings, its own client id, the topic root."""

    mqtt: MqttSink
    client_id: str
    topic_root: str
    key: str  # the site-file key the settings come from, for messages: fleet.mqtt or uplink.mqtt


def fleet_broker(config: SiteConfig) -> FleetBroker | None:
    """The broker the fleet page listens on (``fleet.mqtt``, else ``uplink.mqtt``), or None without one."""
    fleet = config.fleet
    topic_root = fleet.topic_root if fleet is not None else "$aws"
    if fleet is not None and fleet.mqtt is not None:
        mqtt, key = fleet.mqtt, "fleet.mqtt"
    elif config.uplink.mqtt is not None:
        mqtt, key = config.uplink.mqtt, "uplink.mqtt"
    else:
        return None
    base = mqtt.client_id or f"edgesight-{config.site.name}"
    base = base.removesuffix("-fleet")  # the fleet service's id: ours is its sibling, not its child
    return FleetBroker(mqtt=mqtt, client_id=f"{base}-console-fleet", topic_root=topic_root, key=key)


def fleet_problems(config: SiteConfig) -> list[str]:
    """``console.fleet: true`` needs a broker (``fleet.mqtt`` or ``uplink.mqtt``): what is wrong, if anything."""
    if config.console is None or not config.console.fleet or fleet_broker(config) is not None:
        return []
    return [
        f"{config.where('console', 'fleet')}: the fleet page listens on an MQTT broker, and this site file "
        "has none: add fleet.mqtt (or uplink.mqtt) with the fleet's broker, or set console.fleet: false"
    ]


def safe_link(value: object) -> str | None:
    """``value`` when it is an http(s) URL with a host and no credentials, else None: what a site reports
    becomes a link on the page, and a ``javascript:`` or ``https://bank@evil`` link must not.

    >>> safe_link("https://site-a.example:8080/")
    'https://site-a.example:8080/'
    >>> [safe_link(v) for v in ("javascript:alert(1)", "https://user@evil.example/", "http:///x", 7)]
    [None, None, None, None]
    """
    if not isinstance(value, str) or len(value) > MAX_LINK or any(c.isspace() or ord(c) < 32 for c in value):
        return None
    try:
        parts = urllib.parse.urlsplit(value)
        host = parts.hostname
    except ValueError:  # an unbalanced "[" in the host, a bad port
        return None
    if parts.scheme.lower() not in ("http", "https") or not host or "@" in parts.netloc:
        return None
    return value


class FleetFollower:
    """The newest reported state of every site heard, and the connection that hears them.

    ``on_message`` keeps or drops one message (no I/O: a test feeds it directly); ``run`` connects,
    subscribes and feeds it until cancelled; ``rows`` is the fleet table now.
    """

    def __init__(self, broker: FleetBroker, *, max_things: int = MAX_THINGS, max_payload: int = MAX_PAYLOAD) -> None:
        self.broker = broker
        self.topic = FleetTopics.all_reported(broker.topic_root)
        self.max_things = max_things
        self.max_payload = max_payload
        self.reported: dict[str, dict[str, Any]] = {}  # thing -> its newest REPORTED
        self.dropped = dict.fromkeys(DROP_REASONS, 0)  # since the console started
        self.connected = False
        self.error: str | None = None  # why the last connection failed or was lost
        self.heard = 0  # messages kept since the console started
        self._drops = DropTally(log, "fleet messages dropped", DROP_REASONS, topic=self.topic)
        self._dropped_counters = {reason: metrics.FLEET_DROPPED.labels(reason) for reason in DROP_REASONS}

    def on_message(self, topic: str, payload: bytes, *, now: float | None = None) -> bool:
        """Keeps ``payload`` as the thing's newest state (an empty one forgets the thing: its retained state
        was cleared); False when it was dropped."""
        thing = self._thing_of(topic)
        if thing is None:
            return self._drop("wrong_thing")
        if not payload:
            self.reported.pop(thing, None)
            metrics.FLEET_SITES.set(len(self.reported))
            return True
        if len(payload) > self.max_payload:
            return self._drop("too_large")
        reported = self._parsed(thing, payload, now if now is not None else time.time())
        if reported is None:
            return self._drop("malformed")
        if reported.get("thing", thing) != thing:
            return self._drop("wrong_thing")  # a site speaking for another on a broker that lets it
        if thing not in self.reported and self.reported and len(self.reported) >= self.max_things:
            self._evict_stalest()
        self.reported[thing] = reported
        self.heard += 1
        metrics.FLEET_SITES.set(len(self.reported))
        return True

    def _thing_of(self, topic: str) -> str | None:
        """The thing whose reported state ``topic`` is; None for another topic or a name no thing has."""
        thing = thing_of(topic, self.broker.topic_root)
        if thing is None or topic != FleetTopics(self.broker.topic_root, thing).reported:
            return None
        return thing

    def _parsed(self, thing: str, payload: bytes, now: float) -> dict[str, Any] | None:
        """The REPORTED of ``payload``, made safe to show, or None: it must parse, and the roster must make
        a row of it (a shape that parses but breaks the table is no better than one that does not). A
        report from after ``now`` reads as from ``now``: a clock ahead of ours does not keep a silent site
        online."""
        try:
            reported = parse_reported(payload, read_at=now)
        except (MalformedMessage, ValueError, TypeError, ArithmeticError, RecursionError):
            return None
        if not isinstance(reported, dict):
            return None
        reported["console_url"] = safe_link(reported.get("console_url"))
        try:
            roster({thing: reported}, now)
        except (TypeError, ValueError, KeyError, AttributeError, ArithmeticError, RecursionError):
            return None
        return reported

    def _evict_stalest(self) -> None:
        """Makes room for a new thing: the one whose report is oldest goes (made-up things that stop
        coming go first; a real site that keeps reporting stays), counted as ``too_many_things``."""
        stalest = min(self.reported, key=lambda thing: number(self.reported[thing].get("reported_at")) or 0.0)
        del self.reported[stalest]
        self._drop("too_many_things")

    def _drop(self, reason: str) -> bool:
        self.dropped[reason] += 1
        self._dropped_counters[reason].inc()
        self._drops.add(reason)
        self._drops.flush()
        return False

    def rows(self, now: float | None = None) -> list[dict[str, Any]]:
        """The fleet table: a row per site (see common.fleet.roster), with its console's link if safe."""
        now = time.time() if now is None else now
        return [_row(row) for row in roster(self.reported, now)]

    async def run(self) -> None:
        """Hears the fleet until cancelled: connects, subscribes, keeps what comes; after a lost or refused
        connection, tries again after a backoff (doubling up to MAX_BACKOFF_S, afresh after a stable one)."""
        backoff = RestartBackoff(FIRST_BACKOFF_S, MAX_BACKOFF_S, stable_after_s=MAX_BACKOFF_S)
        await keep_connected(self._follow, backoff, self._lost)

    def _lost(self, exc: BaseException | None, wait_s: float) -> None:
        if exc is None:
            self.error = "the broker closed the connection"
        elif isinstance(exc, OSError):  # a CA file that cannot be read, a refused TLS handshake (ssl.SSLError)
            self.error = f"{type(exc).__name__}: {exc}"
        else:
            self.error = str(exc) or type(exc).__name__
        self.connected = False
        metrics.FLEET_CONNECTED.set(0)
        mqtt = self.broker.mqtt
        log.warning(
            "fleet broker: not connected; trying again",
            extra={"host": mqtt.host, "port": mqtt.port, "error": self.error, "retry_s": round(wait_s, 1)},
        )

    async def _follow(self) -> None:
        mqtt = self.broker.mqtt
        # clean session: the retained states come again with each subscription, nothing to resume
        # MQTT v5 with a Maximum Packet Size: a larger message is dropped by the broker, never read whole here
        options = client_options(mqtt, self.broker.client_id, clean_session=True, max_packet_bytes=2 * self.max_payload)
        client = aiomqtt.Client(**options)
        async with client:
            await client.subscribe(self.topic, qos=1)
            self.connected, self.error = True, None
            metrics.FLEET_CONNECTED.set(1)
            log.info("fleet broker connected", extra={"host": mqtt.host, "port": mqtt.port, "topic": self.topic})
            async for message in client.messages:
                payload = message.payload  # bytes off the network; anything else is no reported state
                raw = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
                self.on_message(message.topic.value, raw)

    def summary(self, now: float | None = None) -> dict[str, Any]:
        """``/api/fleet``'s answer: the rows, how many are online, the connection, what was dropped."""
        rows = self.rows(now)
        online = sum(1 for row in rows if row["online"])
        return {
            "enabled": True,
            "connected": self.connected,
            "error": self.error,
            "broker": f"{self.broker.mqtt.host}:{self.broker.mqtt.port}",
            "topic": self.topic,
            "topic_root": self.broker.topic_root,
            "online": online,
            "offline": len(rows) - online,
            "sites": rows,
            "dropped": dict(self.dropped),
        }


def _row(row: SiteRow) -> dict[str, Any]:
    """A roster row as JSON, its console link checked once more (checked as it came in, too)."""
    return {**dataclasses.asdict(row), "console_url": safe_link(row.console_url)}

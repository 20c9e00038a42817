"""Does an event agree with its topic and with the site file? The uplink's checks before it spools one.

An event on the acknowledged path is refused (``contracts.Refusal``) when its topic frame is not
``events/<camera>/``, its ``site`` is not this site, its camera is not in the site file (``_site``
never is: audit events come from the audit trail, so none can be forged over the bus) or its rule is
not a rule of that camera, or a rule the rules service decides whose kind never makes that event type
(an integrator's events name an ``external`` rule, which takes any).

The names are those of the site file as read at start *or at any time since*: an event decided just
before a reload removed its rule is still taken. On a name not known, the file is read again (on a
worker thread, at most once every ``REREAD_S``) before the event is refused, so a rule added by the
console or the fleet is taken without a restart. Only names the file holds are kept: what senders
name is never remembered, so a flood of made-up names costs a read every ``REREAD_S`` and no memory.

On a Curve bus the uplink knows which key sent an event (``Delivery.sender``): an event naming a rule
the rules service decides (any rule but ``type: external``, its count reports included) is refused
(``wrong_sender``) unless it came with the ``rules`` key; any key may send events of an external rule.
A rule's kind is the one the site file gave it when last read (the file is read again before a refusal,
so a rule just made external is taken). Without Curve (ipc, plain tcp) nobody is told apart.

An event of an external rule must have an id that starts with ``<rule>:`` (else ``invalid``): the
rules service's ids never hold a colon (keyed UUIDs, ``report.…``), so an id it will use (a count
report's is predictable, and its events are on ``events/`` before the uplink stores them) cannot be
taken first by any key sending external events, and the real event refused as a ``conflict``.

A refusal's detail repeats only what the sender sent (never the site file's names, nor anything else
in it): it is written for the sender's log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from common.bus import Delivery
from common.config import SiteConfig, load_config
from contracts import EdgeSightError, Event, Refusal, topic
from services.uplink.audit import AUDIT_CAMERA, AUDIT_EVENT_TYPE

__all__ = ["REREAD_S", "SiteNames"]

log = logging.getLogger(__name__)

REREAD_S = 2.0  # a miss reads the site file again at most this often: a flood of misses costs little
DECIDER = "rules"  # the key name (clients/rules.key) of the service that decides every rule but external ones


class SiteNames:
    """The site, camera and rule names an event may carry: every name the site file has held since start.

    >>> import asyncio
    >>> from common.bus import Delivery
    >>> from common.config import parse_config
    >>> from contracts import Event
    >>> config = parse_config("site: {name: s}\\ncameras: {dock: {url: 'rtsp://h/1', rules: {bay: {type: presence}}}}")
    >>> names = SiteNames(config)
    >>> event = Event(id="e1", event_type="zone_enter", site="s", camera="dock", rule="gate", ts_ns=1)
    >>> asyncio.run(names.check(Delivery(event, b"peer", b"events/dock/"))).reason
    'unknown_rule'
    """

    def __init__(
        self,
        config: SiteConfig,
        *,
        load: Callable[[str], Any] = load_config,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = config.source  # "<memory>", "<string>": not read from a file, so nothing to read again
        self.load = load
        self.clock = clock
        self.latest = config  # the site file as last read: what the privacy guard asks about snapshots
        self.sites: set[str] = set()
        self.rules: dict[str, set[str]] = {}  # camera -> the names of its rules, ever
        # (camera, rule) -> the event types rules makes for it, ever (a rule's kind may change); None: any
        self.event_types: dict[tuple[str, str], set[str] | None] = {}
        self.external: dict[tuple[str, str], bool] = {}  # (camera, rule) -> type: external, as last read
        self.read_at = float("-inf")  # the first miss reads at once: the file may have changed since start
        self.learn(config)

    def learn(self, config: SiteConfig) -> None:
        """Adds the names of ``config`` (names are never forgotten while the uplink runs)."""
        self.latest = config
        self.sites.add(config.site.name)
        for name, camera in config.cameras.items():
            self.rules.setdefault(name, set()).update(camera.rules)
            for rule_name, rule in camera.rules.items():
                known = self.event_types.get((name, rule_name), set())
                kinds = rule.EVENT_TYPES
                self.event_types[name, rule_name] = None if known is None or kinds is None else known | kinds
                self.external[name, rule_name] = rule.type == "external"

    async def check(self, delivery: Delivery) -> Refusal | None:
        """Why ``delivery`` is refused, or None when it agrees (the site file read again on a miss)."""
        refusal = self.disagreement(delivery)
        if refusal is None or refusal.reason == "wrong_topic" or delivery.event.camera == AUDIT_CAMERA:
            return refusal
        if await self.reread():
            return self.disagreement(delivery)
        return refusal

    def disagreement(self, delivery: Delivery) -> Refusal | None:
        """The first check ``delivery`` fails against the names known now, or None."""
        event = delivery.event
        expected = topic("events", event.camera)
        if delivery.topic != expected:
            shown = delivery.topic[:80].decode("utf-8", "replace")
            detail = f"topic {shown!r} does not match the body's camera: expected {expected.decode()!r}"
            return Refusal(id=event.id, reason="wrong_topic", detail=detail)
        if event.site not in self.sites:
            return Refusal(id=event.id, reason="wrong_site", detail=f"site {event.site!r} is not this site")
        if event.camera == AUDIT_CAMERA:
            detail = f"camera {AUDIT_CAMERA!r}: audit events are the uplink's own, from the site's audit trail"
            return Refusal(id=event.id, reason="unknown_camera", detail=detail)
        if event.event_type == AUDIT_EVENT_TYPE:  # on a real camera too: the audit trail is never written over the bus
            detail = f"event_type {AUDIT_EVENT_TYPE!r}: audit events are the uplink's own, from the site's audit trail"
            return Refusal(id=event.id, reason="invalid", detail=detail)
        rules = self.rules.get(event.camera)
        if rules is None:
            detail = f"camera {event.camera!r} is not in the site file"
            return Refusal(id=event.id, reason="unknown_camera", detail=detail)
        if event.rule not in rules:
            detail = f"rule {event.rule!r} is not a rule of camera {event.camera!r} in the site file"
            return Refusal(id=event.id, reason="unknown_rule", detail=detail)
        made = self.event_types.get((event.camera, event.rule))
        if made is not None and event.event_type not in made:
            detail = (
                f"rule {event.rule!r} of camera {event.camera!r} does not make {event.event_type!r} events "
                "(events of a service of your own name a rule of type external)"
            )
            return Refusal(id=event.id, reason="wrong_event_type", detail=detail)
        if delivery.sender not in (None, DECIDER) and not self.external[event.camera, event.rule]:
            detail = (
                f"rule {event.rule!r} of camera {event.camera!r} is decided by the rules service: only its bus key "
                "may send its events (events of a service of your own name a rule of type external)"
            )
            return Refusal(id=event.id, reason="wrong_sender", detail=detail)
        if self.external[event.camera, event.rule] and not event.id.startswith(f"{event.rule}:"):
            detail = (
                f"rule {event.rule!r} of camera {event.camera!r} is of type external: its events' ids must start "
                f"with {event.rule + ':'!r} (the rule's name, then a colon)"
            )
            return Refusal(id=event.id, reason="invalid", detail=detail)
        return None

    def is_external(self, event: Event) -> bool:
        """Whether ``event`` names a rule of type external (as the site file was last read): the spool
        drops those first when full, so no sender of external events can push out the rules service's."""
        return self.external.get((event.camera, event.rule), False)

    async def reread(self) -> bool:
        """Reads the site file again unless it was read less than ``REREAD_S`` ago; True when it was."""
        now = self.clock()
        if self.source.startswith("<") or now - self.read_at < REREAD_S:
            return False
        self.read_at = now  # a file that fails to load is not retried sooner either
        try:
            config = await asyncio.to_thread(self.load, self.source)
        except EdgeSightError as exc:  # mid-edit, say: the names known stay, and this event is refused
            log.warning("site file not read again", extra={"error": " | ".join(str(exc).splitlines())[:500]})
            return False
        self.learn(config)
        return True

"""What an operator should hear before a rollout: which sites go first and why; and, from what the sites
left on the broker (or in AWS IoT), which targets are offline (their jobs wait for them, silently
otherwise) and which desire a model at another version than the job leaves them with (their desired state
would undo the job). Best effort: what cannot be read in a moment is not said, and never stops the rollout."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from common.cli.fleet_broker import FleetLink, MqttLink
from common.errors import EdgeSightError
from common.fleet.roster import roster, span
from common.fleet.untrusted import printable

__all__ = ["CANARY_GROUP", "SURVEY_S", "canary_note", "desired_notes", "offline_notes", "survey"]

CANARY_GROUP = "canary"  # the fleet.yaml group whose sites go first, unless --canary N says otherwise
SURVEY_S = 2.0  # the most a rollout waits for the retained states before its first job


def canary_note(
    sites: Mapping[str, str],
    groups: Mapping[str, list[str]],
    things: list[str],
    canary: int | None,
    canaries: list[str],
) -> str | None:
    """Which sites go first and why (the canary split's choice: ``canaries``), or why none does; None for one
    target. ``sites``: thing -> site, ``groups``: fleet.yaml's.

    >>> canary_note({"t-a": "a", "t-b": "b"}, {"canary": ["a"]}, ["t-b", "t-a"], None, ["t-a"])
    'canary: a (the fleet.yaml group canary)'
    >>> canary_note({"t-a": "a", "t-b": "b"}, {}, ["t-b", "t-a"], 1, ["t-b"])
    'canary: the first 1 of --to/--group in order: b'
    """
    names = ", ".join(sites.get(thing, thing) for thing in canaries)
    if canary is not None and canaries:
        return f"canary: the first {canary} of --to/--group in order: {names}"
    if canary is None and canaries:
        return f"canary: {names} (the fleet.yaml group {CANARY_GROUP})"
    if len(things) < 2:
        return None
    if canary is not None and canary > 0:
        return f"no canary: --canary {canary} covers all {len(things)} sites; they get the job at once"
    if canary is None and CANARY_GROUP in groups:
        some = any(sites.get(thing) in groups[CANARY_GROUP] for thing in things)
        holds = "all" if some else "none"
        return f"no canary: the fleet.yaml group {CANARY_GROUP} holds {holds} of the {len(things)} sites"
    return None


def offline_notes(reported: Mapping[str, Mapping[str, Any]], sites: Mapping[str, str], now: float) -> list[str]:
    """A line per site of ``sites`` (thing -> site) that is not online now, in their order.

    >>> now = 10_000.0
    >>> for note in offline_notes({"t-a": {"reported_at": now - 600, "interval_s": 60}}, {"t-a": "a", "t-b": "b"}, now):
    ...     print(note)
    site a last heard 10 min ago: its job waits until it is back
    site b has never reported: its job waits until it is back
    """
    rows = {row.thing: row for row in roster({thing: reported[thing] for thing in sites if thing in reported}, now)}
    notes = []
    for thing, site in sites.items():  # in the targets' order
        row = rows.get(thing)
        if row is not None and row.online:
            continue
        when = (
            "has never reported"
            if row is None or row.last_seen_s is None
            else f"last heard {span(row.last_seen_s)} ago"
        )
        notes.append(f"site {site} {when}: its job waits until it is back")
    return notes


def desired_notes(
    desired: Mapping[str, Mapping[str, str]], sites: Mapping[str, str], model: str, version: str | None
) -> list[str]:
    """A line per site whose desired models name ``model`` at another version than ``version`` (None: the
    version a rollback goes back to, unknown here: any desired version of it undoes the rollback).

    >>> print(*desired_notes({"t-a": {"people": "2"}, "t-b": {"people": "3"}}, {"t-a": "a", "t-b": "b"}, "people", "3"))
    site a desires people 2: it will go back to it; `edgesight fleet desire model people none --to a` to stop
    """
    notes = []
    for thing, site in sites.items():
        wanted = desired.get(thing, {}).get(model)
        if wanted is not None and wanted != version:
            notes.append(
                f"site {site} desires {model} {printable(wanted, 64) or '?'}: it will go back to it; "
                f"`edgesight fleet desire model {model} none --to {site}` to stop"
            )
    return notes


async def survey(link: FleetLink, sites: Mapping[str, str], model: str | None, version: str | None) -> list[str]:
    """The lines above for the targets ``sites`` (thing -> site); the desired state's only with ``model``."""
    notes: list[str] = []
    try:
        if isinstance(link, MqttLink):  # one burst of retained messages for both, not one after the other
            await link.subscribe(link.all_reported, link.all_desired, seconds=SURVEY_S)
        notes += offline_notes(await link.reported(sites, SURVEY_S), sites, time.time())
        if model is not None:
            desired = {thing: await link.desired(thing, SURVEY_S) for thing in sites}
            notes += desired_notes(desired, sites, model, version)
    except EdgeSightError:  # the broker or AWS: the rollout itself says what is wrong
        pass
    return notes

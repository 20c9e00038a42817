"""What a rule editor on the network may change in a camera's rules, and what it may not.

A console login, an API token or a fleet operator's signed ``update_rules`` job is not root on the
appliance. Through the console's editor, ``PUT /api/cameras/<name>/rules`` and the fleet, a client may
change geometry, names, classes, thresholds, the in-side, schedules and cooldowns. It may not add or
change what executes or sends:

- ``command`` and ``gpio`` actions stay as the site file on disk has them (an identical action of one
  of the camera's rules on disk may be kept, also under a renamed rule);
- a webhook is kept as written on disk, or (the console only) points at a host the site file allows in
  ``console.webhook_hosts`` (with no credentials in its URL); ``allow_new_webhooks=False`` (the fleet)
  allows no webhook URL the camera's rules on disk do not already have, whatever the hosts;
- ``${...}`` placeholders are text from the network, never expanded: a value holding one is refused
  unless the same rule key on disk already holds exactly that value (an unchanged round trip).

Refusals raise :class:`RulesRefused` (HTTP 403 in the console, REJECTED in the fleet; audited); shapes
and sizes a request cannot have raise :class:`~common.config.site_file.RulesRejected` (HTTP 422) before
the site file is touched.

>>> on_disk = {"door": {"type": "line", "actions": [{"type": "webhook", "url": "https://hooks.example/a"}]}}
>>> check_rules("lobby", on_disk, {"entry": on_disk["door"]}, [], allow_new_webhooks=False)  # renamed: kept
>>> moved = {"door": {"type": "line", "actions": [{"type": "webhook", "url": "https://hooks.example/b"}]}}
>>> try:
...     check_rules("lobby", on_disk, moved, ["hooks.example"], allow_new_webhooks=False)
... except RulesRefused as refused:
...     print(refused.key)
cameras.lobby.rules.door.actions[0].url
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import Any

from common.config.loader import MAX_RULES_PER_CAMERA
from common.config.site_file import RulesRejected

__all__ = ["MAX_DEPTH", "RulesRefused", "check_rules", "check_shape"]

MAX_DEPTH = 8  # rules -> rule -> actions -> action -> ... : a rule is never deeper than this
_PROTECTED = ("command", "gpio")


class RulesRefused(Exception):
    """The request asks for something an editor on the network may not do; ``key`` names where."""

    def __init__(self, key: str, message: str) -> None:
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}")


def check_shape(camera: str, rules: Any) -> None:
    """Depth and count, checked before anything else looks at the request."""
    if _depth(rules) > MAX_DEPTH:
        raise RulesRejected([_problem(camera, "", f"nested deeper than a rule can be ({MAX_DEPTH} levels)")])
    if isinstance(rules, dict) and len(rules) > MAX_RULES_PER_CAMERA:
        message = f"{len(rules)} rules; a camera may have at most {MAX_RULES_PER_CAMERA}"
        raise RulesRejected([_problem(camera, "", message)])


def check_rules(
    camera: str,
    on_disk: dict[str, Any],
    wanted: dict[str, Any],
    webhook_hosts: list[str],
    *,
    allow_new_webhooks: bool = True,
) -> None:
    """Raises RulesRefused when ``wanted`` adds or changes anything an editor may not (see the module).
    ``allow_new_webhooks=False``: a webhook's URL must be one the camera's rules on disk already send to."""
    written = {(path, value) for rule in on_disk.values() for path, value in _strings(rule, ())}
    disk_actions = {_canonical(action) for rule in on_disk.values() for action in _actions(rule)}
    disk_urls = {
        action.get("url") for rule in on_disk.values() for action in _actions(rule) if isinstance(action, dict)
    }
    for name, rule in wanted.items():
        key = f"cameras.{camera}.rules.{name}"
        if "${" in str(name):
            raise RulesRefused(key, "placeholders (${...}) are not accepted from the network")
        for path, value in _strings(rule, ()):
            if "${" in value and (path, value) not in written:
                where = ".".join(map(str, (key, *path)))
                raise RulesRefused(
                    where, "placeholders (${...}) are not accepted from the network; put them in the site file itself"
                )
        for index, action in enumerate(_actions(rule)):
            if not isinstance(action, dict) or _canonical(action) in disk_actions:
                continue  # unchanged (or not an action at all: validation says so)
            where = f"{key}.actions[{index}]"
            kind = action.get("type")
            if kind in _PROTECTED:
                raise RulesRefused(where, f"a {kind} action can only be added or changed in the site file itself")
            if kind == "webhook" and not allow_new_webhooks:
                _check_known_webhook(where, action.get("url"), disk_urls)
            elif kind == "webhook":
                _check_webhook(where, action.get("url"), webhook_hosts)


def _check_known_webhook(where: str, url: Any, disk_urls: set[Any]) -> None:
    """The stricter mode: the URL exactly as the camera's rules on disk already have it (placeholders too)."""
    if isinstance(url, str) and url not in disk_urls:
        raise RulesRefused(
            f"{where}.url", "a webhook URL the camera's rules do not already send to can only be added in the site file"
        )


def _check_webhook(where: str, url: Any, webhook_hosts: list[str]) -> None:
    if not isinstance(url, str):
        return  # validation says what is wrong
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
        netloc_host = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        raise RulesRefused(f"{where}.url", "not a URL the console can send to") from None
    if parts.username is not None or parts.password is not None:
        raise RulesRefused(f"{where}.url", "a webhook added in the console may not carry credentials")
    if host and (host in webhook_hosts or netloc_host in webhook_hosts):
        return
    allowed = ", ".join(webhook_hosts) if webhook_hosts else "none (console.webhook_hosts is empty)"
    raise RulesRefused(
        f"{where}.url", f"webhooks from the console may only go to the site's console.webhook_hosts: {allowed}"
    )


def _actions(rule: Any) -> list[Any]:
    """A rule's ``actions`` list, or none where the rule or the list has another shape (validation says so)."""
    actions = rule.get("actions") if isinstance(rule, dict) else None
    return actions if isinstance(actions, list) else []


def _canonical(action: Any) -> str:
    return json.dumps(action, sort_keys=True)


def _strings(value: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    """Every string (keys too) under ``value`` with its path; lists by index."""
    stack = [(path, value)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            yield path, value
        elif isinstance(value, dict):
            for key, item in value.items():
                yield (*path, "<key>"), str(key)
                stack.append(((*path, key), item))
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))


def _depth(value: Any) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        value, depth = stack.pop()
        deepest = max(deepest, depth)
        if depth > MAX_DEPTH:
            break
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
    return deepest


def _problem(camera: str, rule: str, message: str) -> dict[str, Any]:
    return {"key": f"cameras.{camera}.rules" + (f".{rule}" if rule else ""), "line": None, "message": message}

"""The rule editor's API: a camera's rules as the site file writes them, and replacing them.

What an edit may change is decided in common/config/rule_policy.py (refusals are audited), the file
is rewritten in place by common/config/site_file.py, and a save is audited and makes rules reload.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from common.config import rule_policy
from common.config.rules import LineRule, ZoneRule
from common.config.site_file import RulesRejected, SiteFileError, save_record
from services.console import metrics
from services.console.context import CONSOLE, ConsoleContext, client, error, listed_camera

__all__ = ["ROUTES"]


async def get_rules(request: web.Request) -> web.Response:
    console = request.app[CONSOLE]
    name = listed_camera(request)
    try:
        rules = await asyncio.to_thread(console.site_file.rules, name)
    except SiteFileError as exc:
        return error(500, str(exc))
    except KeyError:
        return error(404, f"camera {name!r} is not in the site file itself (defined elsewhere?)")
    return web.json_response({"camera": name, "rules": rules, "geometry": _geometry(console, name)})


def _geometry(console: ConsoleContext, camera: str) -> dict[str, Any]:
    """The rules in force (validated, variables substituted) as drawn: kinds and points only."""
    shapes: dict[str, Any] = {}
    for rule_name, rule in console.config.cameras[camera].rules.items():
        if isinstance(rule, LineRule):
            shapes[rule_name] = {"type": "line", "line": [list(p) for p in rule.line], "in_side": rule.in_side}
        elif isinstance(rule, ZoneRule):
            shapes[rule_name] = {"type": "zone", "polygon": [list(p) for p in rule.polygon]}
    return shapes


async def put_rules(request: web.Request) -> web.Response:
    """Replaces one camera's rules. What may change is in rule_policy; refusals are audited too."""
    console = request.app[CONSOLE]
    name = listed_camera(request)
    actor = f"console:{'admin' if request['auth'] == 'session' else 'api-token'}@{client(request)}"
    try:
        body = await request.json()
    except (ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return error(400, 'send {"rules": {...}} as JSON')
    rules = body.get("rules") if isinstance(body, dict) else None
    if not isinstance(rules, dict):
        return error(400, 'send {"rules": {<name>: {<settings>}, ...}}')
    hosts = console.config.console.webhook_hosts if console.config.console else []

    def policy(on_disk: dict[str, Any], wanted: dict[str, Any]) -> None:
        rule_policy.check_rules(name, on_disk, wanted, hosts)

    try:
        rule_policy.check_shape(name, rules)
        saved = await asyncio.to_thread(console.site_file.replace_rules, name, rules, policy)
    except rule_policy.RulesRefused as exc:
        metrics.RULE_SAVES.labels("refused").inc()
        await console.audit(
            "config.save_refused", f"cameras.{name}.rules", actor=actor, key=exc.key, reason=exc.message
        )
        return error(403, f"{exc.key}: {exc.message}", key=exc.key)
    except RulesRejected as exc:
        metrics.RULE_SAVES.labels("rejected").inc()
        return web.json_response(
            {"error": "the rules do not validate; nothing was saved", "errors": exc.problems}, status=422
        )
    except SiteFileError as exc:
        metrics.RULE_SAVES.labels("failed").inc()
        return error(409, str(exc))
    except KeyError:
        return error(404, f"camera {name!r} is not in the site file itself")
    metrics.RULE_SAVES.labels("saved").inc()
    detail = save_record(name, saved)
    await console.audit("config.save", f"cameras.{name}.rules", actor=actor, file=console.config.source, **detail)
    await console.rules_saved(saved.config, name)
    written = await asyncio.to_thread(console.site_file.rules, name)
    return web.json_response({"camera": name, "rules": written, "geometry": _geometry(console, name), "reloaded": True})


ROUTES = [
    ("GET", "/api/cameras/{name}/rules", get_rules),
    ("PUT", "/api/cameras/{name}/rules", put_rules),
]

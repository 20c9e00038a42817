"""``update_rules``: change cameras' rules in the site file within the console editor's limits, and have
rules apply them.

By default the job's rules are merged into each camera's rules on disk: a rule of the same name is
replaced, the camera's other rules are kept (a file holding one new line must not delete the rest).
With ``replace: true`` the camera's rules become exactly the job's, and only then can rules go.

A signed job is no more root on the appliance than a console login: the same checks refuse it
(:mod:`common.config.rule_policy`: no new or changed ``command``/``gpio`` action, no ``${...}``), and
stricter on webhooks: no webhook URL the camera's rules on disk do not already send to
(``allow_new_webhooks=False``); they apply to the rules the camera would have. Each camera is saved as
the console saves it (comments and order kept, the whole file validated first, audited as
``config.save``). Then rules reloads, and answers in its Health detail ``reload`` (``"<control id>
applied"`` or ``"<control id> refused: <why>"``); a refusal or no answer puts every camera's rules
back as they were, and rules reloads those. On success, ``step`` says per camera what was added,
changed and removed (``hall: added door; changed -; removed -``).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from common.config.rule_policy import RulesRefused, check_rules, check_shape
from common.config.site_file import RulesRejected, SavedRules, SiteFile, SiteFileError, save_record
from contracts.messages import NAME_PATTERN
from services.fleet.context import JobContext, JobFailed, reason_of
from services.fleet.operations.arguments import argument, flag_argument
from services.fleet.operations.model_live import Step

__all__ = ["update_rules"]

RELOAD_WAIT_S = 30.0  # rules reads the site file and rebuilds its cameras' rules: seconds at most


async def update_rules(args: dict[str, Any], context: JobContext, step: Step) -> dict[str, str]:
    wanted = _cameras(argument(args, "cameras", dict))
    replace = flag_argument(args, "replace")
    site_file = SiteFile(context.site_file)
    saved: list[tuple[str, SavedRules]] = []
    await step("saving" if replace else "saving (merged into the rules on disk)")
    for camera, rules in wanted.items():
        try:
            saved.append((camera, await asyncio.to_thread(_save, site_file, camera, rules, replace=replace)))
        except (RulesRefused, RulesRejected, SiteFileError, KeyError) as exc:
            if isinstance(exc, RulesRefused):
                await context.record("config.save_refused", f"cameras.{camera}.rules", key=exc.key, reason=exc.message)
            reason = _refusal(camera, exc)
            raise JobFailed(reason + await _put_back(context, site_file, saved)) from None
    for camera, done in saved:
        await _audit_saved(context, camera, done)
    await step("reloading rules")
    refused = await _reload(context)
    if refused is not None:
        await step("putting the previous rules back")
        put_back = await _put_back(context, site_file, saved)
        reload_again = await _reload(context)
        raise JobFailed(refused + put_back + (f"; reloading those: {reload_again}" if reload_again else ""))
    how = "replaced" if replace else "merged"
    return {"step": " | ".join(_summary(camera, done) for camera, done in saved), "note": f"rules {how}, applied"}


def _cameras(value: dict[Any, Any]) -> dict[str, dict[str, Any]]:
    for camera, rules in value.items():
        if not isinstance(camera, str) or not re.search(NAME_PATTERN, camera):
            raise JobFailed("malformed: args.cameras: a camera is a plain name")
        if not isinstance(rules, dict):
            raise JobFailed(f"malformed: args.cameras.{camera} maps each rule's name to its settings")
    return value


def _save(site_file: SiteFile, camera: str, rules: dict[str, Any], *, replace: bool) -> SavedRules:
    """The console's save of the camera's resulting rules (the job's, or the job's merged into those on
    disk), with the fleet's stricter webhook rule (see the module)."""
    check_shape(camera, rules)
    on_disk = site_file.rules(camera)
    result = dict(rules) if replace else {**on_disk, **rules}
    check_shape(camera, result)

    def policy(now_on_disk: dict[str, Any], wanted: dict[str, Any]) -> None:
        if now_on_disk != on_disk:  # edited meanwhile (the console): merging into the old would undo that
            raise SiteFileError(f"the rules of {camera} changed on disk while the job saved them; run it again")
        check_rules(camera, now_on_disk, wanted, [], allow_new_webhooks=False)

    return site_file.replace_rules(camera, result, policy)


def _summary(camera: str, saved: SavedRules) -> str:
    """What the save changed, short, for the operator's CLI: ``hall: added door; changed -; removed -``."""
    record = save_record(camera, saved)
    return f"{camera}: " + "; ".join(f"{what} {record[what] or '-'}" for what in ("added", "changed", "removed"))


def _refusal(camera: str, exc: Exception) -> str:
    if isinstance(exc, RulesRefused):
        return f"refused: {exc.key}: {exc.message}"
    if isinstance(exc, RulesRejected):
        return f"the rules of {camera} do not validate: {exc}"
    if isinstance(exc, KeyError):
        return f"camera {camera!r} is not in the site file itself"
    return str(exc)


async def _put_back(context: JobContext, site_file: SiteFile, saved: list[tuple[str, SavedRules]]) -> str:
    """Writes each saved camera's rules back as they were on disk (no policy: it is what was there);
    returns what to add to the job's reason."""
    problems = []
    for camera, done in reversed(saved):
        try:
            back = await asyncio.to_thread(site_file.replace_rules, camera, done.before)
        except (RulesRejected, SiteFileError, KeyError) as exc:
            problems.append(f"{camera}: {exc}")
            continue
        await _audit_saved(context, camera, back, reason="put back: the job failed")
    if not saved:
        return "; nothing was changed"
    if problems:
        return "; putting the previous rules back failed for " + "; ".join(problems)
    return "; the previous rules are back"


async def _reload(context: JobContext) -> str | None:
    """``reload`` to rules; None once it answers ``applied``, else why not (never raises: what was saved
    must be put back whatever went wrong)."""
    try:
        return await _reload_once(context)
    except Exception as exc:
        return reason_of(exc)


async def _reload_once(context: JobContext) -> str | None:
    watch = context.watch
    asked = watch.clock()
    sent = await context.control("rules", "reload")
    prefix = f"{sent.id} "

    def answer() -> str | None:
        for health in watch.healths("rules", since=asked):
            reply = health.message.detail.get("reload", "")
            if reply.startswith(prefix):
                return reply[len(prefix) :]
        return None

    timeout_s = max(context.bounded(RELOAD_WAIT_S), 2 * context.health_interval_s)
    await watch.wait_for(lambda: answer() is not None, timeout_s)
    reply = answer()
    if reply is None:
        return f"rules did not answer the reload within {timeout_s:.0f} s"
    return None if reply == "applied" else f"rules {reply}"


async def _audit_saved(context: JobContext, camera: str, saved: SavedRules, *, reason: str | None = None) -> None:
    """As the console audits a save (common/config/site_file.py: save_record), and why when it is put back."""
    detail = save_record(camera, saved)
    await context.record("config.save", f"cameras.{camera}.rules", file=str(context.site_file), reason=reason, **detail)

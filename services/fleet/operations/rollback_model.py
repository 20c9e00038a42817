"""``rollback_model``: make an installed earlier version current again (the one before the current, or the
one named), as ``edgesight models rollback`` does, and confirm it is live; if it is not, the version
that was current is made current again. As for ``install_model``, a site whose ``models.<name>`` runs
another file fails the job and leaves the store as it is."""

from __future__ import annotations

import asyncio
from typing import Any

from common.errors import PackageError
from services.fleet.context import JobContext, JobFailed, reason_of
from services.fleet.operations.arguments import name_argument, optional_argument
from services.fleet.operations.install_model import roll_back_to
from services.fleet.operations.model_live import (
    Step,
    confirm_live,
    current_version,
    loads,
    make_current,
    model_store,
    must_be_used,
    trust_policy,
)

__all__ = ["rollback_model"]


async def rollback_model(args: dict[str, Any], context: JobContext, step: Step) -> dict[str, str]:
    name, version = name_argument(args, "name"), optional_argument(args, "version", str)
    site = await context.load_site()
    must_be_used(site, name)  # a version made current that no model runs would change nothing
    policy = trust_policy(site)
    store = model_store(context)
    current = await asyncio.to_thread(current_version, store, name)
    if current is None:
        raise JobFailed(f"no model {name!r} is installed here")
    if version == current:
        await step("already current; confirming it is live")
        return {"version": version, **await confirm_live(context, site, name, version, step)}
    await step("rolling back")
    try:
        if version is None:
            done = await asyncio.to_thread(store.rollback, name, policy, check=loads)
        else:
            done = await asyncio.to_thread(make_current, store, name, version, policy)
    except PackageError as exc:
        raise JobFailed(f"refused: {exc}") from None
    await context.record("model.rollback", done.name, version=done.version, previous=done.previous, sha256=done.sha256)
    try:
        details = await confirm_live(context, site, name, done.version, step)
    except Exception as failed:  # whatever stopped it (a bug, the bus), the version before comes back
        await step("going back")
        raise JobFailed(await roll_back_to(context, site, store, policy, done, reason_of(failed))) from None
    return {"version": done.version, "previous": current, **details}

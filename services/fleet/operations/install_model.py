"""``install_model``: download a signed package, install it as ``edgesight models install`` does, make it live.

The package is downloaded (its SHA-256 must be the one the signed job names; no larger than
``site.max_package_mb``), then installed into the site's ``ModelStore`` under the site's own trust:
signed by one of ``site.trusted_keys``, loading as inference loads it, and being the name and version
the job names. A refusal leaves the store as it was, and so does a site whose ``models.<name>`` runs
another file (``path: yolox_nano.onnx``): the package would not be used, and the job fails saying so
before downloading. Once installed, inference reloads it and the job waits until it is live
(:mod:`services.fleet.operations.model_live`); if it is not, the version that was current before is
made current again and inference reloads that one.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from common.config import SiteConfig
from common.errors import PackageError
from common.trust import Installed, ModelStore, Package, Refused, TrustPolicy
from services.fleet.context import JobContext, JobFailed, reason_of
from services.fleet.operations.arguments import argument, name_argument, optional_argument
from services.fleet.operations.model_live import (
    Step,
    confirm_live,
    current_version,
    loads,
    make_current,
    model_store,
    must_be_used,
    site_models,
    trust_policy,
    wait_loaded,
)

__all__ = ["install_model", "roll_back_to"]

ROLLBACK_WAIT_S = 60.0  # putting the previous version back is given its own time, past the job's deadline


async def install_model(args: dict[str, Any], context: JobContext, step: Step) -> dict[str, str]:
    url, sha256 = argument(args, "url", str), optional_argument(args, "sha256", str)
    name, version = name_argument(args, "name"), argument(args, "version", str)
    site = await context.load_site()
    must_be_used(site, name)  # before anything is downloaded or installed: the store stays as it is
    policy = trust_policy(site)
    store = model_store(context)
    if await asyncio.to_thread(current_version, store, name) == version:
        await step("already installed; confirming it is live")
        return {"version": version, **await confirm_live(context, site, name, version, step)}
    await step("downloading")
    path = await context.download(url, sha256, site.site.max_package_mb << 20)
    await step("installing")
    try:
        done = await _install(context, store, path, policy, name, version)
    finally:
        path.unlink(missing_ok=True)  # the store keeps its own copy
    try:
        details = await confirm_live(context, site, name, version, step)
    except Exception as failed:  # whatever stopped it (a bug, the bus), the version before comes back
        await step("rolling back")
        raise JobFailed(await roll_back_to(context, site, store, policy, done, reason_of(failed))) from None
    return {"version": version, **({"previous": done.previous} if done.previous else {}), **details}


async def _install(
    context: JobContext, store: ModelStore, path: Path, policy: TrustPolicy, name: str, version: str
) -> Installed:
    """The store's install, audited as the CLI audits it; a refusal (nothing changed) fails the job."""

    def check(package: Package, checked: Path) -> None:
        if (package.name, package.version) != (name, version):
            raise PackageError(f"the package is {package.name} {package.version}, the job names {name} {version}")
        loads(package, checked)

    try:
        done = await asyncio.to_thread(store.install, path, policy, check=check)
    except PackageError as exc:  # a refusal is a security event: someone tried to install this
        refused = exc if isinstance(exc, Refused) else None
        await context.record(
            "model.install_refused",
            refused.name if refused else name,
            version=refused.version if refused else version,
            file=None if refused else path.name,
            error=str(exc),
        )
        raise JobFailed(_refusal(exc, path)) from None
    await context.record("model.install", done.name, **done.audit_detail())
    return done


async def roll_back_to(
    context: JobContext, site: SiteConfig, store: ModelStore, policy: TrustPolicy, done: Installed, reason: str
) -> str:
    """Makes ``done.previous`` current again after ``done`` failed to go live, and has inference load it;
    returns the job's reason, with how the rollback went."""
    if done.previous is None or done.previous == done.version:
        return f"{reason}; no earlier version of {done.name} to go back to: {done.version} stays installed"
    try:
        back = await asyncio.to_thread(make_current, store, done.name, done.previous, policy)
    except (PackageError, JobFailed) as exc:
        return f"{reason}; going back to {done.name} {done.previous} failed too: {exc}"
    await context.record("model.rollback", back.name, version=back.version, previous=done.version, sha256=back.sha256)
    for model in site_models(site, done.name):
        try:
            await wait_loaded(context, model, back.version, ROLLBACK_WAIT_S)
        except Exception as exc:
            return f"{reason}; rolled back to {done.name} {back.version}, which did not load either: {reason_of(exc)}"
    return f"{reason}; rolled back to {done.name} {back.version}"


def _refusal(exc: PackageError, path: Path) -> str:
    """The store's refusal, without the download's own file name (which means nothing to an operator)."""
    text = str(exc).replace(f"{path}: ", "")
    unsigned = "trusted key" in text or "bad signature" in text or "not an EdgeSight model package" in text
    return f"not signed by a trusted key: {text}" if unsigned else f"refused: {text}"

"""Whether an installed model version is live: inference loaded it, and its detections keep coming.

Shared by ``install_model`` and ``rollback_model``. After the store points ``NAME.espkg`` at a version,
the fleet asks inference to ``reload`` each model of the site that uses that package and waits for
every running inference replica to answer (its Health detail ``reload``: ``"<control id> done"``).
A replica that has the model must then say the new version in the model's own detail entry; one still
on the old version refused it, and why is in the audit trail (``model.load_failed``). Then, where a
camera of that model is streaming, Detections of exactly that model version must keep arriving for
``fleet.healthy_s``; where none streams, loaded is all that can be known, and the job says so.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from common.audit import audit_path, read_audit_tail
from common.config import SiteConfig
from common.errors import EdgeSightError
from common.models.loading import package_spec
from common.trust import PACKAGE_SUFFIX, Installed, ModelStore, Package, TrustPolicy, site_trust
from services.fleet.context import JobContext, JobFailed
from services.fleet.watch import HealthSeen

__all__ = [
    "Step",
    "confirm_live",
    "current_version",
    "loads",
    "make_current",
    "model_store",
    "must_be_used",
    "serving",
    "site_models",
    "streaming_cameras",
    "trust_policy",
    "wait_loaded",
]

Step = Callable[[str], Awaitable[None]]

ALIVE_WITHIN_HEALTHS = 3  # an inference replica heard within this many health intervals is running
RELOAD_WAIT_S = 60.0  # a reload answers within seconds; a large model on a slow device loads in tens
AUDIT_TAIL_BYTES = 256 << 10


def model_store(context: JobContext) -> ModelStore:
    return ModelStore(context.state_dir / "models")


def trust_policy(site: SiteConfig) -> TrustPolicy:
    """The site's trust policy, which must enforce: a fleet never installs what nobody signed."""
    try:
        policy = site_trust(site)
    except EdgeSightError as exc:
        raise JobFailed(str(exc)) from None
    if not policy.enforcing:
        raise JobFailed(f"{site.where('site', 'trusted_keys')}: empty; set the keys packages must be signed by")
    return policy


def loads(package: Package, path: Path) -> None:
    """What inference checks when it loads a package (as ``edgesight models install`` checks it)."""
    package_spec(package, path)


def make_current(store: ModelStore, name: str, version: str, policy: TrustPolicy) -> Installed:
    """Makes the kept ``version`` of ``name`` current again, verified under ``policy`` first: installing
    the store's own copy changes nothing stored, only which version is current (older ones allowed)."""
    kept = store.root / name / f"{version}{PACKAGE_SUFFIX}"
    if not kept.is_file():
        raise JobFailed(f"{name} {version} is not kept in {store.root}")
    return store.install(kept, policy, check=loads, allow_downgrade=True)


def current_version(store: ModelStore, name: str) -> str | None:
    return next((row["current"] for row in store.list() if row["name"] == name), None)


def site_models(site: SiteConfig, package: str) -> list[str]:
    """The site's models that run the package ``package`` (``models.<m>.path`` is ``<package>.espkg``)."""
    wanted = f"{package}{PACKAGE_SUFFIX}"
    return [name for name, model in site.models.items() if Path(model.path).name == wanted]


def must_be_used(site: SiteConfig, package: str) -> None:
    """JobFailed where the site has a model named ``package`` that runs another file and no model runs the
    package: installing it would change nothing that runs, and a job must not say it did. A name no
    ``models:`` entry has is fine (installed for later; :func:`confirm_live` notes it)."""
    model = site.models.get(package)
    if model is None or site_models(site, package):
        return
    wanted = f"{package}{PACKAGE_SUFFIX}"
    raise JobFailed(
        f"models.{package}.path is {model.path}, not {wanted}: the package would not be used; "
        f"set models.{package}.path: {wanted}"
    )


async def confirm_live(context: JobContext, site: SiteConfig, package: str, version: str, step: Step) -> dict[str, str]:
    """Reloads every model of the site that runs ``package`` and waits until ``version`` is live (see the
    module); statusDetails to add, or JobFailed with what went wrong."""
    models = site_models(site, package)
    if not models:
        return {"note": f"no model of this site uses {package}{PACKAGE_SUFFIX}: installed, not loaded"}
    for model in models:
        await step(f"loading {model}")
        await wait_loaded(context, model, version, context.bounded(RELOAD_WAIT_S))
    notes = []
    for model in models:
        if not streaming_cameras(context, site, model):
            notes.append(f"{model} {version} loaded; no camera of it is streaming, so no detections were awaited")
            continue
        await step(f"watching {model}")
        await _keeps_detecting(context, site, model, version)
    return {"note": "; ".join(notes)} if notes else {}


def streaming_cameras(context: JobContext, site: SiteConfig, model: str) -> list[str]:
    return [
        name
        for name, camera in site.cameras.items()
        if camera.enabled
        and (not camera.models or model in camera.models)
        and (seen := context.watch.cameras.get(name)) is not None
        and seen.state == "streaming"
    ]


async def wait_loaded(context: JobContext, model: str, version: str, timeout_s: float) -> None:
    """``reload`` to inference for ``model``; returns once the replicas that run it serve ``version``."""
    watch = context.watch
    alive = {
        seen.message.instance
        for seen in watch.healths("inference", since=watch.clock() - ALIVE_WITHIN_HEALTHS * context.health_interval_s)
    }
    asked, asked_ns = watch.clock(), time.time_ns()
    sent = await context.control("inference", "reload", model=model)

    def answers() -> list[HealthSeen]:
        done = f"{sent.id} done"
        return [h for h in watch.healths("inference", since=asked) if h.message.detail.get("reload") == done]

    def all_answered() -> bool:
        answered = {h.message.instance for h in answers()}
        return bool(answered) and alive <= answered

    await watch.wait_for(all_answered, timeout_s)
    running = [h for h in answers() if model in h.message.detail]
    if not answers():
        raise JobFailed(f"inference did not answer the reload of {model} within {timeout_s:.0f} s")
    if not running:
        raise JobFailed(f"no inference replica runs {model} (is it a model of a camera?)")
    behind = [h for h in running if serving(h, model) != version]
    if behind:
        refusal = await asyncio.to_thread(_load_refusal, context, model, asked_ns)
        served = serving(behind[0], model)
        reason = f"inference refused {model} {version}: {refusal}" if refusal else f"inference still serves {served}"
        raise JobFailed(f"{reason} (it keeps serving {model} {served})")


def serving(health: HealthSeen, model: str) -> str:
    """The version an inference replica serves ``model`` at: its detail is ``"<version> <backend>/..."``."""
    return health.message.detail.get(model, "").split(" ", 1)[0]


def _load_refusal(context: JobContext, model: str, since_ns: int) -> str | None:
    """Why inference refused ``model`` since ``since_ns``, as it wrote in the audit trail."""
    chunk = read_audit_tail(audit_path(context.state_dir), AUDIT_TAIL_BYTES)
    for line in chunk.lines(newest_first=True) if chunk is not None else ():
        record = line.record
        if record is None or record.get("ts_ns", 0) < since_ns:
            continue
        if record.get("action") == "model.load_failed" and record.get("target") == model:
            return str(record.get("detail", {}).get("error", "")) or None
    return None


async def _keeps_detecting(context: JobContext, site: SiteConfig, model: str, version: str) -> None:
    """Detections of ``model`` ``version`` arrive, and keep arriving for ``healthy_s``, while every replica
    that runs the model stays on that version."""
    watch, key = context.watch, (model, version)
    loaded_at = watch.clock()
    stale_s = _stale_after_s(context, site, model)

    def arrived() -> bool:
        seen = watch.detections.get(key)
        return seen is not None and seen.last >= loaded_at

    if not await watch.wait_for(arrived, context.bounded(max(RELOAD_WAIT_S / 2, 2 * stale_s))):
        raise JobFailed(f"{model} {version} loaded, but no detections of it arrived although its cameras stream")
    since = watch.clock()

    def broken() -> str | None:
        seen = watch.detections.get(key)
        if seen is None or watch.clock() - seen.last > stale_s:
            return f"detections of {model} {version} stopped for over {stale_s:.0f} s"
        for health in watch.healths("inference", since=since):
            if model in health.message.detail and serving(health, model) != version:
                return f"inference went from {model} {version} to {serving(health, model)}"
        return None

    if await watch.wait_for(lambda: broken() is not None, context.bounded(context.healthy_s)):
        raise JobFailed(broken() or f"{model} {version} did not stay healthy")
    if watch.clock() - since < context.healthy_s - 0.01:
        raise JobFailed(f"the job's time ran out before {model} {version} was healthy for {context.healthy_s:g} s")


def _stale_after_s(context: JobContext, site: SiteConfig, model: str) -> float:
    """How long without a Detections of the model is a stop: still frames are skipped up to recheck_s."""
    config = site.models[model]
    rechecks = config.recheck_s * 1.5 if config.skip_still_frames else 0.0
    return max(3.0, context.healthy_s / 2, rechecks)

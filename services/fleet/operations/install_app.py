"""``install_app``: download an AWS Panorama project, add it to the site file, have the apps service run it.

Only where the site allows it (``fleet.allow_apps``): an app is code the site runs (in its sandbox).
The archive (its SHA-256 the one the signed job names) is unpacked under
``state_dir/fleet/apps/<app>/<sha256>`` (:mod:`.archive`: nothing outside that folder, no links), then
``edgesight panorama import`` translates it, as a process of its own (``python -m
services.apps.panorama import DIR --camera NODE=@CAMERA ... --base SITE --out NEW``: the fleet never
imports another service), onto the site's cameras. The new site file is validated, the old one kept
in ``state_dir/fleet/backups/``, and the new one written over it (as the rule editor writes it). The
apps service is asked to shut down; its supervisor starts it again on the new file. The job succeeds
once the app is ``running`` for ``fleet.healthy_s``; otherwise the old site file is put back and the
apps service restarted on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common._compat import timeout
from common.config import SiteConfig, parse_config
from common.config.site_file import SiteFile, SiteFileError
from common.errors import ConfigError
from common.files import private_dir, write_private
from contracts import AppStatus
from services.fleet.context import JobContext, JobFailed, reason_of
from services.fleet.operations.archive import UnsafeArchive, unpack
from services.fleet.operations.arguments import argument, name_argument, names_map
from services.fleet.operations.model_live import Step
from services.fleet.watch import HealthSeen

__all__ = ["install_app"]

IMPORT_WAIT_S = 600.0  # the import builds the app's own environment where it has requirements
START_WAIT_S = 120.0
ALIVE_WITHIN_HEALTHS = 3
KEEP_BACKUPS = 10
# where ``services`` is importable from, for the import's own process
SOURCE_ROOT = Path(__file__).resolve().parents[3]


async def install_app(args: dict[str, Any], context: JobContext, step: Step) -> dict[str, str]:
    site = await context.load_site()
    if site.fleet is None or not site.fleet.allow_apps:
        raise JobFailed("install_app is not allowed on this site (fleet.allow_apps is false)")
    url, sha256 = argument(args, "url", str), argument(args, "sha256", str)
    app, cameras = name_argument(args, "app"), names_map(args, "cameras")
    models = names_map(args, "models") if args.get("models") is not None else {}
    if not _apps_running(context):
        raise JobFailed("the apps service is not running here (it starts only where the site file has apps:)")
    await step("downloading")
    max_bytes = site.site.max_package_mb << 20
    archive = await context.download(url, sha256, max_bytes)
    await step("unpacking")
    folder = context.fleet_dir / "apps" / app / sha256
    try:
        project = await asyncio.to_thread(_unpacked, archive, folder, max_bytes)
    finally:
        archive.unlink(missing_ok=True)
    await step("importing")
    text = await _import(context, project, app, cameras, models)
    backup = await asyncio.to_thread(_replace_site_file, context, text)
    await context.record("config.save", "apps", file=str(context.site_file), app=app, sha256=sha256, backup=str(backup))
    await step("restarting apps")
    failure = await _restart_and_watch(context, app)
    if failure is None:
        await asyncio.to_thread(_forget_unpacked, folder.parent, {folder, _code_folder(site, app)})
        return {"step": "running", "note": f"app {app} running for {context.healthy_s:g} s"}
    await step("putting the previous site file back")
    await asyncio.to_thread(_write_site_file, context, backup.read_text())
    await context.record("config.save", "apps", file=str(context.site_file), app=app, reason="put back: " + failure)
    again = await _restart_and_watch(context, None)
    raise JobFailed(failure + "; the previous site file is back" + (f" (apps: {again})" if again else ""))


def _apps_running(context: JobContext) -> bool:
    since = context.watch.clock() - ALIVE_WITHIN_HEALTHS * context.health_interval_s
    return bool(context.watch.healths("apps", since=since))


def _unpacked(archive: Path, folder: Path, max_bytes: int) -> Path:
    """The project unpacked in ``folder`` (reused when there: the folder is named by the archive's digest)."""
    private_dir(folder.parent)
    if not folder.is_dir():
        try:
            return unpack(archive, folder, max_bytes=max_bytes)
        except UnsafeArchive as exc:
            raise JobFailed(f"the archive is refused: {exc}") from None
    entries = list(folder.iterdir())
    single = len(entries) == 1 and entries[0].is_dir() and not (folder / "graphs").exists()
    return entries[0] if single else folder


async def _import(context: JobContext, project: Path, app: str, cameras: dict[str, str], models: dict[str, str]) -> str:
    """``edgesight panorama import`` in its own process; the new site file's text, validated."""
    out = context.fleet_dir / "apps" / app / "site.new.yaml"
    out.unlink(missing_ok=True)
    command = [sys.executable, "-m", "services.apps.panorama", "import", str(project)]
    command += [f"--camera={node}=@{camera}" for node, camera in cameras.items()]
    command += [f"--model={node}={model}" for node, model in models.items()]  # names on the asset path
    command += ["--base", str(context.site_file), "--out", str(out)]
    paths = [str(SOURCE_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    # an empty working folder: neither a --model name nor ``-m services`` may find a file of the project
    with tempfile.TemporaryDirectory(prefix="edgesight-import-") as empty:
        returncode, said = await _run(command, environment, empty, context.bounded(IMPORT_WAIT_S))
    if returncode != 0 or not out.is_file():
        raise JobFailed(f"the project does not import: {said[-800:]}")
    return await asyncio.to_thread(_imported, out, context.site_file, app, project)


def _imported(out: Path, site_file: Path, app: str, project: Path) -> str:
    """The import's site file, once it validates where it goes and runs ``app`` from ``project``."""
    text = out.read_text()
    out.unlink(missing_ok=True)
    try:
        config = parse_config(text, str(site_file))
    except ConfigError as exc:
        raise JobFailed(f"the imported site file does not validate: {exc}") from None
    code = Path(config.apps[app].code).resolve() if app in config.apps else None
    if code is None or not code.is_relative_to(project.resolve()):
        raise JobFailed(f"the project holds no app named {app!r} (the site file would run {sorted(config.apps)})")
    return text


async def _run(command: list[str], environment: dict[str, str], folder: str, timeout_s: float) -> tuple[int, str]:
    """A process's exit code and output (one line); killed at ``timeout_s``, or when the job is cancelled."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=environment, cwd=folder
    )
    try:
        async with timeout(timeout_s):
            output, _ = await process.communicate()
    except (TimeoutError, asyncio.TimeoutError):
        raise JobFailed(f"the import did not finish within {timeout_s:.0f} s") from None
    finally:
        if process.returncode is None:
            process.kill()
            await asyncio.shield(process.wait())
    said = " | ".join(line.strip() for line in output.decode(errors="replace").splitlines() if line.strip())
    return process.returncode or 0, said


def _replace_site_file(context: JobContext, text: str) -> Path:
    """Keeps the site file as it is in ``state_dir/fleet/backups`` and writes ``text`` over it."""
    backups = private_dir(context.fleet_dir / "backups")
    backup = backups / f"site-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 1_000_000_000:09d}.yaml"
    write_private(backup, context.site_file.read_bytes())
    for old in sorted(backups.glob("site-*.yaml"))[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)
    _write_site_file(context, text)
    return backup


def _write_site_file(context: JobContext, text: str) -> None:
    """As the rule editor writes it: atomically where the folder allows, in place on a single-file mount."""
    try:
        SiteFile(context.site_file).write_text(text)  # the site file's one writer (common/config/site_file.py)
    except (SiteFileError, OSError) as exc:
        raise JobFailed(f"cannot write the site file: {exc}") from None


async def _restart_and_watch(context: JobContext, app: str | None) -> str | None:
    """Restarts the apps service; None once it is back (and ``app``, if given, ran ``healthy_s``), else why
    not (never raises: a new site file must be put back whatever went wrong)."""
    try:
        return await _restart_once(context, app)
    except Exception as exc:
        return reason_of(exc)


async def _restart_once(context: JobContext, app: str | None) -> str | None:
    watch = context.watch
    asked = watch.clock()
    await context.control("apps", "shutdown")

    def restarted() -> HealthSeen | None:
        return next((h for h in watch.healths("apps", since=asked) if h.started >= asked), None)

    if not await watch.wait_for(lambda: restarted() is not None, max(context.bounded(START_WAIT_S), 10.0)):
        return "the apps service did not start again"
    if app is None:
        return None
    return await _runs(context, app, restarted_at=watch.clock())


async def _runs(context: JobContext, app: str, restarted_at: float) -> str | None:
    """None once ``app`` has been ``running`` for ``healthy_s`` without a restart, else why not."""
    watch = context.watch
    restarts: int | None = None  # the app's restart count when first seen running
    failure: str | None = None

    def settled() -> bool:
        nonlocal restarts, failure
        seen = watch.apps.get(app)
        status = seen.message if seen is not None and seen.arrived >= restarted_at else None
        if seen is None or not isinstance(status, AppStatus):
            return False
        if status.state in ("failed", "hung") or (restarts is not None and status.restarts > restarts):
            what = status.state if status.state in ("failed", "hung") else f"restarted ({status.last_restart})"
            failure = f"app {app} {what}" + (f": {status.error}" if status.error else "")
            return True
        if status.state != "running":
            return False
        restarts = status.restarts if restarts is None else restarts
        return watch.clock() - max(seen.state_since, restarted_at) >= context.healthy_s

    timeout_s = context.bounded(START_WAIT_S + context.healthy_s)
    if not await watch.wait_for(settled, timeout_s):
        seen = watch.apps.get(app)
        heard = f"it is {seen.state}" if seen is not None and seen.arrived >= restarted_at else "no status of it"
        return f"app {app} did not run for {context.healthy_s:g} s within {timeout_s:.0f} s ({heard})"
    return failure


def _code_folder(site: SiteConfig, app: str) -> Path | None:
    """The unpacked folder the site file ran ``app`` from before (kept: the backup names it)."""
    if app not in site.apps:
        return None
    code = Path(site.apps[app].code).resolve()
    return next((parent for parent in (code, *code.parents) if parent.name and len(parent.name) == 64), None)


def _forget_unpacked(folder: Path, keep: set[Path | None]) -> None:
    """Drops the app's unpacked projects but the one running and the one the backup runs."""
    kept = {path.resolve() for path in keep if path is not None}
    for unpacked in folder.iterdir():
        if unpacked.is_dir() and len(unpacked.name) == 64 and unpacked.resolve() not in kept:
            with contextlib.suppress(OSError):
                shutil.rmtree(unpacked)

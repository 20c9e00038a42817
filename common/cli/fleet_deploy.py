"""``edgesight fleet deploy|rollback|restart|desire``: one signed job per site, canaries first.

A rollout sends its job to the canaries (``--canary N``: the first N sites of the target; else the target's
sites in the group ``canary`` of fleet.yaml) and waits for their final statuses, each confirmed by the site's
own reported state (:mod:`common.cli.fleet_follow`); a canary that fails, is refused, does not answer or whose
report does not confirm its status stops the rollout before any other site gets a job. Then the rest, with the
same wait. Exit 0 only when every site succeeded; 1 when one failed; 3 when every answer was a success but
some site did not answer in time, or its report did not confirm the status heard: its job stays queued
(retained, or in AWS IoT Jobs) and runs when it is back.
Before the first job, the operator hears which canaries were chosen and why, which targets are offline, and
(model jobs) which desire another version of the model: their desired state would undo the job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import os
import re
import secrets
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.cli.fleet_broker import FleetLink, LinkError, open_link
from common.cli.fleet_follow import Answer, Progress, follow, outcome_line
from common.cli.fleet_rules import read_rules
from common.cli.fleet_survey import CANARY_GROUP, canary_note, survey
from common.errors import ConfigError, EdgeSightError, PackageError
from common.fleet.fleet_file import BucketConfig, FleetFile, load_fleet_file
from common.fleet.signing import MAX_TTL_S, JobRefused, sign_document
from common.trust.keys import load_signing_key
from common.trust.package import read_index

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "EXIT_QUEUED", "Change", "FleetUsageError", "fleet_command", "roll_out"]

EXIT_FAILED, EXIT_CONFIG, EXIT_QUEUED = 1, 2, 3
FLEET_FILE_VARIABLE = "EDGESIGHT_FLEET_FILE"
NOT_DESIRED = "none"  # `desire model NAME none`: NAME is no longer desired
KINDS = ("succeeded", "failed", "unconfirmed", "queued")  # of a site's answer (fleet_follow.Answer.kind)


class FleetUsageError(EdgeSightError):
    """A command that cannot be carried out as asked (a file, a key, an argument): exit 2, nothing sent."""


@dataclasses.dataclass(frozen=True)
class Change:
    """What a rollout asks of each site: a signed document's operation and args; ``label`` goes into job ids."""

    operation: str
    args: dict[str, Any]
    label: str


def fleet_file_path(given: str | None) -> str:
    return given or os.environ.get(FLEET_FILE_VARIABLE) or "fleet.yaml"


def missing_fleet_file(given: str | None) -> str | None:
    """Why there is no fleet file to read, and how to name one; None when the file is there."""
    path = fleet_file_path(given)
    if Path(path).exists():
        return None
    if given:
        return f"no fleet file at {path} (--file)"
    if os.environ.get(FLEET_FILE_VARIABLE):
        return f"no fleet file at {path} (${FLEET_FILE_VARIABLE})"
    return f"no fleet file at ./{path}: pass --file FILE or set {FLEET_FILE_VARIABLE}"


def fleet_command(body: Callable[[Any, FleetFile], Coroutine[Any, Any, int]]) -> Callable[[Any], int]:
    """A command on ``--file``'s fleet: its problems as one line each on stderr and an exit code
    (2: the fleet file or the arguments, 1: the broker, AWS or a site)."""

    @functools.wraps(body)
    def command(args: Any) -> int:
        missing = missing_fleet_file(args.file)
        if missing is not None:
            print(f"edgesight fleet: {missing}", file=sys.stderr)
            return EXIT_CONFIG
        try:
            fleet = load_fleet_file(fleet_file_path(args.file))
            return asyncio.run(body(args, fleet))
        except ConfigError as exc:
            print(f"{fleet_file_path(args.file)}: invalid\n{exc}", file=sys.stderr)
            return EXIT_CONFIG
        except (FleetUsageError, JobRefused) as exc:
            print(f"edgesight fleet: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        except EdgeSightError as exc:  # LinkError: the broker, AWS or S3
            print(f"edgesight fleet: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except KeyboardInterrupt:
            print("edgesight fleet: interrupted; jobs already queued stay queued", file=sys.stderr)
            return 130

    return command


def operator_key(fleet: FleetFile) -> Ed25519PrivateKey:
    if fleet.operator_key is None:
        raise FleetUsageError(
            f"{fleet.source} has no operator_key: make one with `edgesight fleet keygen --out DIR` and name "
            "its .key file there"
        )
    try:
        return load_signing_key(Path(fleet.operator_key))
    except PackageError as exc:
        raise FleetUsageError(f"{fleet.source}: operator_key: {exc}") from None


def targets(fleet: FleetFile, args: Any) -> list[str]:
    """The thing names of ``--to`` sites and groups and ``--group`` groups, in order, each once."""
    names = [*(args.to or []), *(args.group or [])]
    if not names:
        raise FleetUsageError("say which sites: --to SITE, --to GROUP or --group GROUP (fleet.yaml sites:, groups:)")
    for group in args.group or []:
        if group not in fleet.groups:
            raise FleetUsageError(
                f"--group {group!r}: no such group in {fleet.source} (groups: {', '.join(fleet.groups) or 'none'})"
            )
    try:
        return fleet.targets(names)
    except ValueError as exc:
        raise FleetUsageError(str(exc)) from None


def canary_split(fleet: FleetFile, things: list[str], canary: int | None) -> tuple[list[str], list[str]]:
    """(canaries, the rest): the first ``canary`` things, else those of the group ``canary``."""
    if canary is None:
        group = set(fleet.targets([CANARY_GROUP])) if CANARY_GROUP in fleet.groups else set()
        first = [thing for thing in things if thing in group]
    else:
        first = things[: max(canary, 0)]
    rest = [thing for thing in things if thing not in first]
    return (first, rest) if first and rest else ([], things)


def job_id_for(operation: str, label: str, thing: str) -> str:
    """``<op>-<label>-<site>-<random>`` within AWS's 64 characters of ``[A-Za-z0-9_-]``.

    >>> job_id_for("install_model", "people-1.2+cuda", "plant-7")[:-6]
    'install_model-people-1-2-cuda-plant-7-'
    """
    readable = re.sub(r"[^A-Za-z0-9_-]", "-", f"{operation}-{label}-{thing}")[:57]
    return f"{readable}-{secrets.token_hex(3)}"


async def roll_out(
    link: FleetLink,
    fleet: FleetFile,
    change: Change,
    phases: tuple[list[str], list[str]],
    *,
    timeout_s: float,
    ttl_s: float,
) -> int:
    """Sends ``change`` to the canaries, then (all succeeded) to the rest; each phase waits ``timeout_s``."""
    key = operator_key(fleet)
    progress = Progress(fleet)
    canaries, rest = phases
    outcome: dict[str, Answer] = {}
    for phase, things in (("canary", canaries), ("rollout", rest)):
        if not things:
            continue
        jobs = {job_id_for(change.operation, change.label, thing): thing for thing in things}
        # every document of a phase signed before any is sent: signing checks the args, a malformed one stops all
        documents = {
            job_id: sign_document(change.operation, change.args, [thing], key, ttl_s=ttl_s, job_id=job_id)
            for job_id, thing in jobs.items()
        }
        for job_id, thing in jobs.items():
            await link.submit(thing, job_id, documents[job_id])
            progress.say(f"{progress.site(thing)}: queued {job_id}" + ("  (canary)" if phase == "canary" else ""))
        answers = await follow(link, jobs, time.monotonic() + timeout_s, progress)
        outcome.update((thing, answers[job_id]) for job_id, thing in jobs.items())
        failed = [thing for thing in things if outcome[thing].kind != "succeeded"]  # confirmed by its report
        if phase == "canary" and failed:
            why = "; ".join(outcome_line(progress.site(thing), outcome[thing], timeout_s) for thing in failed)
            progress.say(f"canary failed ({why}): stopped, the other {len(rest)} site(s) get no job")
            return EXIT_FAILED
    return _summary(progress, outcome, timeout_s)


def _summary(progress: Progress, outcome: dict[str, Answer], timeout_s: float) -> int:
    kinds = {kind: [thing for thing, answer in outcome.items() if answer.kind == kind] for kind in KINDS}
    for kind in ("failed", "unconfirmed", "queued"):
        for thing in kinds[kind]:
            progress.say(outcome_line(progress.site(thing), outcome[thing], timeout_s))
    parts = [f"{len(kinds['succeeded'])} succeeded"] + [f"{len(kinds['failed'])} failed"] * bool(kinds["failed"])
    unconfirmed, queued = len(kinds["unconfirmed"]), len(kinds["queued"])
    parts += [f"{unconfirmed} not confirmed by their own report: their jobs stay queued"] * bool(unconfirmed)
    parts += [f"{queued} queued (offline?): their jobs run when they are back"] * bool(queued)
    progress.say(f"{len(outcome)} site(s): {', '.join(parts)}")
    return EXIT_FAILED if kinds["failed"] else EXIT_QUEUED if unconfirmed or queued else 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise FleetUsageError(f"{path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def package_identity(path: Path) -> tuple[str, str]:
    """(name, version) from a package's index, unverified: the sites verify it (under site.trusted_keys)."""
    try:
        index = read_index(path)
    except PackageError as exc:
        raise FleetUsageError(f"{exc} (make a model package with `edgesight models package`)") from None
    return str(index["name"]), str(index["version"])


def upload(bucket: BucketConfig, path: Path, key: str, sha256: str, say: Callable[[str], None]) -> str:
    """``s3://bucket/key`` holding ``path``: uploaded unless there already (same sha256); another file
    there is refused (a site keeps a version once: a changed one under the same name would never arrive)."""
    import boto3  # type: ignore[import-untyped]
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    url = f"s3://{bucket.name}/{key}"
    s3 = boto3.client("s3", region_name=bucket.region, endpoint_url=bucket.endpoint_url)
    try:
        try:
            metadata = s3.head_object(Bucket=bucket.name, Key=key).get("Metadata", {})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
            metadata = None
        if metadata is not None and metadata.get("sha256") == sha256:
            say(f"{url}: uploaded already")
            return url
        if metadata is not None:
            raise FleetUsageError(f"{url} holds another file; give the package a new version, or pass --url")
        say(f"uploading {path} to {url}")
        s3.upload_file(str(path), bucket.name, key, ExtraArgs={"Metadata": {"sha256": sha256}})
    except (BotoCoreError, ClientError) as exc:
        raise LinkError(f"S3 upload to {url}: {exc}") from None
    finally:
        s3.close()
    return url


def bucket_key(fleet: FleetFile, *parts: str) -> str:
    prefix = fleet.bucket.prefix.strip("/") if fleet.bucket is not None else ""
    return "/".join(part for part in (prefix, *parts) if part)


async def package_url(
    fleet: FleetFile, path: Path, url: str | None, key: str, sha256: str, say: Callable[[str], None]
) -> str:
    if url is not None:
        return url
    if fleet.bucket is None:
        raise FleetUsageError(
            f"{fleet.source} has no bucket: upload {path} to an HTTPS URL (or s3://) the sites can read and "
            "pass --url URL"
        )
    return await asyncio.to_thread(upload, fleet.bucket, path, key, sha256, say)


def desired_ttl(valid_for: float | None) -> float:
    return MAX_TTL_S if valid_for is None else valid_for


async def desire_models(
    link: FleetLink, fleet: FleetFile, things: list[str], models: dict[str, str], ttl_s: float
) -> int:
    """Publishes each site's desired models (what it already desired, with ``models`` over it; a model
    desired at version ``none`` taken out), signed."""
    key = operator_key(fleet)
    progress = Progress(fleet)
    for thing in things:
        wanted = {**await link.desired(thing, 3.0), **models}
        wanted = {name: version for name, version in wanted.items() if version != NOT_DESIRED}
        document = sign_document("set_desired", {"models": wanted}, [thing], key, ttl_s=ttl_s)
        await link.set_desired(thing, wanted, document)
        shown = ", ".join(f"{name} {version}" for name, version in sorted(wanted.items())) or "none"
        progress.say(f"{progress.site(thing)}: desired models {shown}")
    return 0


async def _rollout(
    args: Any, fleet: FleetFile, change: Change, things: list[str], model: tuple[str, str | None] | None = None
) -> int:
    """``change`` to ``things``, after what the operator should know; ``model``: (name, version) the job
    leaves the sites with (version None: unknown here), for the desired state that would undo it."""
    operator_key(fleet)  # a missing key stops here, before the broker is asked anything
    phases = canary_split(fleet, things, args.canary)
    note = canary_note(fleet.things(), fleet.groups, things, args.canary, phases[0])
    if note is not None:
        print(note)
    async with open_link(fleet) as link:
        sites = {thing: fleet.things().get(thing, thing) for thing in things}
        for line in await survey(link, sites, *(model or (None, None))):
            print(line, flush=True)
        return await roll_out(link, fleet, change, phases, timeout_s=args.timeout, ttl_s=args.valid_for)


@fleet_command
async def cmd_deploy_model(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    path = Path(args.package)
    name, version = package_identity(path)
    sha256 = file_sha256(path)
    url = await package_url(fleet, path, args.url, bucket_key(fleet, name, f"{version}.espkg"), sha256, print)
    change = Change(
        "install_model", {"url": url, "sha256": sha256, "name": name, "version": version}, f"{name}-{version}"
    )
    return await _rollout(args, fleet, change, things, (name, version))


@fleet_command
async def cmd_deploy_app(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    cameras: dict[str, str] = {}
    for pair in args.camera or []:
        node, _, camera = pair.partition("=")
        if not node or not camera:
            raise FleetUsageError(f"--camera {pair!r}: expected NODE=CAMERA (the app's camera node, a site's camera)")
        cameras[node] = camera
    path = Path(args.archive)
    sha256 = file_sha256(path)
    suffix = re.sub(r"[^A-Za-z0-9.]", "", "".join(path.suffixes))[-16:]
    key = bucket_key(fleet, args.app, f"app-{sha256[:16]}{suffix}")
    url = await package_url(fleet, path, args.url, key, sha256, print)
    args_ = {"url": url, "sha256": sha256, "app": args.app, "cameras": cameras}
    return await _rollout(args, fleet, Change("install_app", args_, f"{args.app}-{sha256[:8]}"), things)


@fleet_command
async def cmd_deploy_rules(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    path = Path(args.rules)
    try:
        cameras = read_rules(path, replace=args.replace)
    except ConfigError as exc:  # not the fleet file's: said here, as the rules file's
        raise FleetUsageError(f"{path}: invalid (nothing was sent)\n{exc}") from None
    # without --replace the key is left out: each site merges these rules into the camera's own
    change = Change("update_rules", {"cameras": cameras} | ({"replace": True} if args.replace else {}), path.stem)
    return await _rollout(args, fleet, change, things)


@fleet_command
async def cmd_rollback(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    change = Change(
        "rollback_model", {"name": args.model, "version": args.version}, f"{args.model}-{args.version or 'previous'}"
    )
    return await _rollout(args, fleet, change, things, (args.model, args.version))


@fleet_command
async def cmd_restart(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    return await _rollout(args, fleet, Change("restart_service", {"service": args.service}, args.service), things)


@fleet_command
async def cmd_desire_model(args: Any, fleet: FleetFile) -> int:
    things = targets(fleet, args)
    async with open_link(fleet) as link:
        return await desire_models(link, fleet, things, {args.name: args.version}, desired_ttl(args.valid_for))

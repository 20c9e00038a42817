"""``edgesight fleet``: many sites from one command line — their state at a glance, signed jobs rolled out
canaries first, the jobs the broker (or AWS IoT) holds, desired models.

Every command but ``keygen`` reads the operator's ``fleet.yaml`` (``--file``, else ``$EDGESIGHT_FLEET_FILE``,
else ``./fleet.yaml``: :mod:`common.fleet.fleet_file`). Exit codes: 0 done, 1 a site, the broker or AWS
failed, 2 the fleet file or the arguments are wrong (nothing was sent), 3 some site did not answer in time
(its job stays queued).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.cli import fleet_deploy as deploy
from common.cli.fleet_broker import JobRecord, open_link
from common.errors import EdgeSightError
from common.fleet.fleet_file import FleetFile
from common.fleet.roster import SiteRow, roster
from common.fleet.signing import MAX_TTL_S
from common.fleet.untrusted import printable
from common.trust.keys import generate_key_pair, key_id, load_signing_key

__all__ = ["add_commands"]

Commands = Any  # argparse's _SubParsersAction (private): what main's helpers make and take
REASON_WIDTH = 80  # the jobs table's REASON column; --json has it whole
MAX_CELL = 1000  # characters of any table cell (they are cut before, each to its own width)


def _ago(seconds: float | None) -> str:
    """A short age: ``12s``, ``5m``, ``3h``, ``2d``; ``-`` when unknown.

    >>> _ago(12.4), _ago(300), _ago(3 * 3600 + 5), _ago(None)
    ('12s', '5m', '3h', '-')
    """
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; every cell made printable (most came off the network)."""
    lines = [[printable(str(cell), MAX_CELL) or "" for cell in line] for line in [header, *rows]]
    widths = [max(len(cell) for cell in column) for column in zip(*lines, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def cmd_keygen(args: argparse.Namespace) -> int:
    try:
        private, public = generate_key_pair(Path(args.out).expanduser().absolute(), args.name)
        identity = key_id(load_signing_key(private).public_key())
    except EdgeSightError as exc:
        print(f"edgesight fleet keygen: {exc}", file=sys.stderr)
        return deploy.EXIT_FAILED
    print(f"operator key {private}: keep it secret; in fleet.yaml:\n  operator_key: {private}")
    print(f"public key {public}: copy it to each site and name it in its site file:")
    print(f"  fleet:\n    trusted_operators: [{public.name}]")
    print(
        f'key id {identity}: how sites name this operator in audit records and refusals ("unknown operator {identity}")'
    )
    return 0


def _site_rows(fleet: FleetFile, reported: dict[str, dict[str, Any]]) -> list[SiteRow]:
    """A row per site of fleet.yaml and per other thing heard; fleet.yaml's console where none is reported."""
    rows = roster(reported, time.time(), expected=fleet.things())
    consoles = {fleet.thing(site): entry.console for site, entry in fleet.sites.items() if entry.console}
    return [
        row
        if row.console_url or row.thing not in consoles
        else dataclasses.replace(row, console_url=consoles[row.thing])
        for row in rows
    ]


def _state(row: SiteRow) -> str:
    if row.last_seen_s is None:
        return "never seen"
    return f"{'online' if row.online else 'offline'} {_ago(row.last_seen_s)} ago"


@deploy.fleet_command
async def cmd_status(args: argparse.Namespace, fleet: FleetFile) -> int:
    async with open_link(fleet) as link:
        reported = await link.reported(fleet.things(), args.wait)
    rows = _site_rows(fleet, reported)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
        return 0
    if not rows:
        print(f"no sites: none in {fleet.source}, none reported on the broker")
        return 0
    header = ["SITE", "STATE", "VERSION", "MODELS", "CAMERAS", "EVENTS/H", "PROBLEMS"]
    consoles = any(row.console_url for row in rows)
    cells = [
        [row.site, _state(row), row.version or "-", row.models or "-", row.cameras or "-", str(row.events_per_hour)]
        + ["; ".join(row.problems) or "ok"]
        + ([row.console_url or "-"] if consoles else [])
        for row in rows
    ]
    print(_table(header + ["CONSOLE"] * consoles, cells))
    return 0


def _job_row(fleet: FleetFile, record: JobRecord, now: float) -> dict[str, Any]:
    sites = fleet.things()
    status = record.status
    details = status.details if status is not None else {}
    return {
        "job_id": record.job_id,
        "site": sites.get(record.thing, record.thing),
        "thing": record.thing,
        "operation": record.operation,
        "status": status.status if status is not None else "QUEUED",
        "reason": details.get("reason") or details.get("step"),
        "age_s": None if record.queued_at is None else max(0.0, now - record.queued_at),
        "queued": status is None or not status.final,
    }


def _oldest_first(record: JobRecord) -> tuple[bool, float, str]:
    """By queuedAt; a job whose document is gone (finished, in retained mode) has none: those first, by job id."""
    return (record.queued_at is not None, record.queued_at or 0.0, record.job_id)


def _cut(text: str, width: int) -> str:
    """
    >>> _cut("rules did not answer", 12)
    'rules did n…'
    """
    return text if len(text) <= width else text[: width - 1] + "…"


@deploy.fleet_command
async def cmd_jobs(args: argparse.Namespace, fleet: FleetFile) -> int:
    async with open_link(fleet) as link:
        records = await link.jobs(fleet.things(), args.wait)
        if args.site:
            thing = fleet.thing(args.site) if args.site in fleet.sites else args.site
            records = [record for record in records if record.thing == thing]
        pruned, kept = await link.prune(records) if args.prune else (0, 0)
    records = sorted(records, key=_oldest_first)
    rows = [_job_row(fleet, record, time.time()) for record in records]
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        header = ["JOB", "SITE", "OPERATION", "STATUS", "REASON", "AGE"]
        cells = [
            [
                row["job_id"],
                row["site"],
                row["operation"] or "?",
                row["status"],
                _cut(row["reason"] or "", REASON_WIDTH),
                _ago(row["age_s"]),
            ]
            for row in rows
        ]
        print(_table(header, cells))
    else:
        print("no jobs on the broker" if fleet.jobs_mode == "retained" else "no jobs in AWS IoT")
    if args.prune:
        said = sys.stderr if args.json else sys.stdout
        print(f"pruned {pruned} finished job(s)", file=said)
        if kept:  # a final status alone may be anyone's: clearing the document would take the job from the site
            print(
                f"kept {kept} finished job(s) whose site's own report does not confirm the status: still queued",
                file=said,
            )
    return 0


MakeCommand = Callable[..., argparse.ArgumentParser]


def _options() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser, argparse.ArgumentParser]:
    """(--file; --file and the sites; those and a rollout's options): parents of the commands that take them."""
    file = argparse.ArgumentParser(add_help=False)
    file.add_argument(
        "--file",
        metavar="FLEET_YAML",
        help=f"the fleet file (default: ${deploy.FLEET_FILE_VARIABLE}, else ./fleet.yaml)",
    )
    sites = argparse.ArgumentParser(add_help=False, parents=[file])
    sites.add_argument("--to", action="append", metavar="SITE", help="a site or group of fleet.yaml (repeatable)")
    sites.add_argument("--group", action="append", metavar="NAME", help="a group of fleet.yaml (repeatable)")
    rollout = argparse.ArgumentParser(add_help=False, parents=[sites])
    rollout.add_argument(
        "--canary",
        type=int,
        metavar="N",
        help="the first N sites go first, the rest only once all N succeeded (default: the group canary, if any)",
    )
    rollout.add_argument(
        "--timeout", type=float, default=600.0, metavar="SECONDS", help="wait this long for each phase (default 600)"
    )
    rollout.add_argument(
        "--valid-for",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="a site that gets the job later refuses it as expired (default one day)",
    )
    return file, sites, rollout


def add_commands(fleet: argparse.ArgumentParser, commands_of: Callable[..., Commands], command: MakeCommand) -> None:
    """``edgesight fleet ...`` under ``fleet``, made with main's helpers (a line atop each --help)."""
    file, sites, rollout = _options()
    commands = commands_of(fleet, "fleet_command")
    keygen = command(commands, "keygen", "make an operator's key pair: the .key signs jobs, sites trust the .pub")
    keygen.add_argument("--out", type=Path, required=True, help="the folder to write NAME.key and NAME.pub to")
    keygen.add_argument("--name", default="operator", help="the files' name (default: operator)")
    keygen.set_defaults(func=cmd_keygen)

    status = command(
        commands, "status", "every site: online, version, models, cameras, events, problems", parents=[file]
    )
    status.add_argument("--json", action="store_true", help="print the rows as JSON")
    status.add_argument(
        "--wait", type=float, default=5.0, metavar="SECONDS", help="listen at most this long for reports (default 5)"
    )
    status.set_defaults(func=cmd_status)

    jobs = command(
        commands, "jobs", "the jobs the broker or AWS IoT holds: site, operation, status, age", parents=[file]
    )
    jobs.add_argument("--json", action="store_true", help="print the rows as JSON")
    jobs.add_argument("--site", help="only this site's jobs")
    jobs.add_argument("--prune", action="store_true", help="clear the finished jobs (documents and statuses)")
    jobs.add_argument(
        "--wait", type=float, default=5.0, metavar="SECONDS", help="listen at most this long for jobs (default 5)"
    )
    jobs.set_defaults(func=cmd_jobs)

    _add_rollouts(commands, commands_of, command, rollout)
    desire = commands_of(command(commands, "desire", "set the models sites should run, kept until changed"), "what")
    model = command(desire, "model", "sites should run this model version (one offline gets it later)", parents=[sites])
    model.add_argument("name", help="the model's name")
    model.add_argument(
        "version",
        help=f"its version (the sites fetch it through their fleet.packages); {deploy.NOT_DESIRED}: no longer desired",
    )
    model.add_argument(
        "--valid-for",
        type=float,
        default=float(MAX_TTL_S),
        metavar="SECONDS",
        help="signed for this long (default 30 days)",
    )
    model.set_defaults(func=deploy.cmd_desire_model)


def _add_rollouts(
    commands: Commands, commands_of: Callable[..., Commands], command: MakeCommand, rollout: argparse.ArgumentParser
) -> None:
    deploys = commands_of(command(commands, "deploy", "send a model, an app or rules to sites, canaries first"), "what")
    model = command(deploys, "model", "install a signed model package (.espkg) on sites", parents=[rollout])
    model.add_argument("package", help="the .espkg file (`edgesight models package`)")
    model.add_argument("--url", help="where the sites download it (default: upload to fleet.yaml's bucket)")
    model.set_defaults(func=deploy.cmd_deploy_model)
    rules = command(deploys, "rules", "add or change rules of cameras on sites (checked here first)", parents=[rollout])
    rules.add_argument("rules", help="a YAML file: {camera: {rule name: {rule settings}}}")
    rules.add_argument(
        "--replace",
        action="store_true",
        help="each camera's rules become exactly the file's (default: merged into them; others are kept)",
    )
    rules.set_defaults(func=deploy.cmd_deploy_rules)
    app = command(
        deploys, "app", "install a Panorama app on sites (their fleet.allow_apps must be true)", parents=[rollout]
    )
    app.add_argument("archive", help="the app's archive")
    app.add_argument("--app", required=True, help="the app's name on the sites")
    app.add_argument("--camera", action="append", metavar="NODE=CAMERA", help="feed this camera to this app node")
    app.add_argument("--url", help="where the sites download it (default: upload to fleet.yaml's bucket)")
    app.set_defaults(func=deploy.cmd_deploy_app)

    rollback = command(commands, "rollback", "go back to a model's earlier version on sites", parents=[rollout])
    rollback.add_argument("model", help="the model's name")
    rollback.add_argument("--version", help="this version (default: the one before the current)")
    rollback.set_defaults(func=deploy.cmd_rollback)
    restart = command(commands, "restart", "restart a service on sites", parents=[rollout])
    restart.add_argument("service", help="a service (rules, inference@1, ingest@group, ...)")
    restart.set_defaults(func=deploy.cmd_restart)

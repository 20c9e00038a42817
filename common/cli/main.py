"""``edgesight``: version, config check|schema, run, bus tail|keygen, fleet (``common/cli/fleet.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from common import files
from common import logging as eslogging
from common.bus import Subscriber, security
from common.cli import fleet as fleet_cli
from common.cli.supervisor import Supervisor, child_environment, installed_services
from common.config import SiteConfig, load_config
from common.errors import EdgeSightError, StartupError
from common.registry import BY_NAME, PEERS, SERVICES
from common.version import edgesight_version
from contracts import PROTOCOL_VERSION, NDArray, topic
from contracts.topics import STREAMS

__all__ = ["main"]

EXIT_CONFIG = 2


def _load(path: str) -> SiteConfig | None:
    try:
        config: SiteConfig = load_config(path)
    except EdgeSightError as exc:
        print(f"{path}: invalid\n{exc}", file=sys.stderr)
        return None
    return config


def cmd_version(_: argparse.Namespace) -> int:
    print(f"edgesight {edgesight_version()} (bus protocol v{PROTOCOL_VERSION}, python {sys.version.split()[0]})")
    return 0


# Services whose part of the site file can be checked deeper than its schema (files exist, models load).
DEEP_CHECKS = tuple(service.name for service in SERVICES if service.deep_check)


def _section(config: SiteConfig, service: str) -> object:
    """The site file's section a service needs (common/registry.py: needs_section), or True if it needs none."""
    section = BY_NAME[service].needs_section
    return True if section is None else getattr(config, section)


def _running(config: SiteConfig, available: list[str]) -> list[str]:
    """The services ``edgesight run`` starts without ``--services``: ``run.services``, else each installed
    one whose section the site file has (an optional service runs only where its section is)."""
    if config.run.services:
        return list(config.run.services)
    return [name for name in available if _section(config, name)]


def model_overlaps(config: SiteConfig) -> list[str]:
    """Warnings (not errors) for the rules that would count each object once per model: a camera runs two
    or more of the site's models and one of its rules has no ``model:`` (an external rule sees no tracks)."""
    warnings = []
    for name, camera in config.cameras.items():
        models = camera.models or list(config.models)
        if len(models) < 2:
            continue
        for rule_name, rule in camera.rules.items():
            if rule.model is None and rule.type != "external":
                where = config.where("cameras", name, "rules", rule_name)
                warnings.append(
                    f"{where}: the camera runs models {', '.join(models)} and the rule "
                    "has no model: it sees every model's objects, so an object two models detect is counted once "
                    "per model; set `model:` on the rule"
                )
    return warnings


def cmd_config_check(args: argparse.Namespace) -> int:
    config = _load(args.file)
    if config is None:
        return EXIT_CONFIG
    for warning in model_overlaps(config):
        print(f"warning: {warning}", file=sys.stderr)
    peers = [peer.name for peer in PEERS if peer.curve_client]
    # the bus keys of the services that will run: a site without fleet: needs no fleet key
    problems: list[str] = security.check_curve(config, [*_running(config, installed_services()), *peers])
    # a service checked unless its section is absent (None): an empty apps: is checked
    checked = [s for s in DEEP_CHECKS if s in installed_services() and _section(config, s) is not None]
    for service in checked:  # handed over: never imported here
        result = subprocess.run(
            [sys.executable, "-m", BY_NAME[service].module, "--config", args.file, "--check"],
            env=child_environment(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode:
            problems += result.stderr.strip().splitlines() or [f"{service}: check failed ({result.returncode})"]
    if problems:
        print(f"{args.file}: invalid\n" + "\n".join(problems), file=sys.stderr)
        return EXIT_CONFIG
    rules = sum(len(camera.rules) for camera in config.cameras.values())
    sinks = [name for name in ("mqtt", "s3", "cloudwatch", "jsonl", "webhook") if getattr(config.uplink, name)]
    counts = f"{_count(len(config.cameras), 'camera')}, {_count(len(config.models), 'model')}, {_count(rules, 'rule')}"
    print(f"{args.file}: ok — site {config.site.name}: {counts}, sinks: {', '.join(sinks) or 'none'}")
    return 0


def cmd_config_schema(_: argparse.Namespace) -> int:
    schema = SiteConfig.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "EdgeSight site configuration"
    print(json.dumps(schema, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    eslogging.configure("run", config.logging.level, config.logging.format)
    files.restrict_umask()  # inherited by every service it starts (each sets it again itself)
    available = installed_services()
    wanted: list[str] = args.services.split(",") if args.services else _running(config, available)
    missing = sorted(set(wanted) - set(available))
    if missing:
        print(f"not installed: {', '.join(missing)} (installed: {', '.join(available)})", file=sys.stderr)
        return EXIT_CONFIG
    supervisor = Supervisor(config, Path(args.config).resolve(), wanted, status_interval_s=args.status_interval)
    try:
        return asyncio.run(supervisor.run(args.duration))
    except StartupError as exc:
        print(f"edgesight run: {exc}", file=sys.stderr)
        return 1


def _count(number: int, what: str) -> str:
    return f"{number} {what}" + ("" if number == 1 else "s")


def _printable(value: object) -> object:
    if isinstance(value, NDArray):
        return {"dtype": value.dtype, "shape": list(value.shape), "values": value.to_numpy().tolist()}
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


async def _tail(config: SiteConfig, stream: str, key: str, count: int | None) -> None:
    prefix = topic(stream, key) if stream else b""  # type: ignore[arg-type]
    security.configure_curve(config.bus.curve, "cli")
    async with Subscriber(config.bus.subscribe, "cli", [prefix], hwm=1000) as subscriber:
        seen = 0
        async for received in subscriber:
            body = msgspec.to_builtins(received.message, enc_hook=_printable)
            print(json.dumps({"topic": f"{received.stream}/{received.key}/", **body}), flush=True)
            seen += 1
            if count is not None and seen >= count:
                return


def cmd_bus_tail(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        asyncio.run(_tail(config, args.stream or "", args.key, args.count))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_bus_keygen(args: argparse.Namespace) -> int:
    try:
        made = security.generate_bus_keys(args.out, args.clients or list(security.DEFAULT_CLIENTS))
    except EdgeSightError as exc:
        print(f"edgesight bus keygen: {exc}", file=sys.stderr)
        return 1
    print(f"{len(made)} key files in {args.out}; site file:")
    print(f"  bus:\n    curve:\n      server_key: {args.out / 'server.key'}")
    print(f"      server_secret_key: {args.out / 'server.key_secret'}   # broker and uplink only")
    print(f"      client_key: {args.out / '{service}.key_secret'}\n      authorized_keys: {args.out / 'clients'}")
    return 0


# Commands that belong to a service: the CLI hands over to the service's module, never imports it.
HANDED_OVER = {
    "cameras": ("services.ingest.cameras", []),
    "detect": ("services.inference.tools", ["detect"]),
    "models": ("services.inference.tools", ["models"]),
    "panorama": ("services.apps.panorama", []),
}


def cmd_handed_over(command: str, arguments: list[str]) -> int:
    module, prefix = HANDED_OVER[command]
    if command == "models":
        files.restrict_umask()  # `models install` writes the model store under state_dir
    return subprocess.call([sys.executable, "-m", module, *prefix, *arguments], env=child_environment())


def _commands(parser: argparse.ArgumentParser, dest: str) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    return parser.add_subparsers(
        dest=dest, required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )


def _command(commands: argparse._SubParsersAction, name: str, text: str, **options: Any) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """A subcommand whose one line shows both in its parent's list and atop its own --help."""
    parser: argparse.ArgumentParser = commands.add_parser(name, help=text, description=text, **options)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesight", description="On-site computer vision: cameras in, metadata out.")
    commands = _commands(parser, "command")
    _command(commands, "version", "print the version").set_defaults(func=cmd_version)

    config = _command(commands, "config", "check a site file or print its JSON Schema")
    config_commands = _commands(config, "config_command")
    check = _command(
        config_commands,
        "check",
        "validate a site file, load its models, find its media: exit 0, or 2 with file:line: key: message",
    )
    check.add_argument("file", help="the site file (YAML)")
    check.set_defaults(func=cmd_config_check)
    _command(config_commands, "schema", "print the JSON Schema of site files").set_defaults(func=cmd_config_schema)

    run = _command(commands, "run", "run the services as processes, restart any that die")
    run.add_argument("config", help="the site file (YAML)")
    run.add_argument("--for", dest="duration", type=float, metavar="SECONDS", help="stop by itself after this long")
    run.add_argument("--services", help="comma-separated subset (default: run.services, else all installed)")
    run.add_argument("--status-interval", type=float, default=5.0, metavar="SECONDS", help="status table period")
    run.set_defaults(func=cmd_run)

    for command, help_text in (
        ("cameras", "check a camera's stream (probe URL), find ONVIF cameras on the LAN (discover)"),
        ("detect", "run a model on a file or stream, detections as JSON lines"),
        ("models", "inspect a model; keygen, package, verify, install, list, rollback signed packages"),
        ("panorama", "import an AWS Panorama application project as a site file; build its apps' own environments"),
    ):
        _command(commands, command, help_text, add_help=False)  # handed over before parsing, --help included

    bus = _command(commands, "bus", "look at the bus, make its keys")
    bus_commands = _commands(bus, "bus_command")
    tail = _command(bus_commands, "tail", "print bus messages as JSON lines")
    tail.add_argument("config", help="the site file (YAML): where the bus is")
    tail.add_argument("--stream", choices=sorted(STREAMS), help="only this stream's messages (default: every stream)")
    tail.add_argument("--key", default="", help="with --stream: only this camera's or service's messages")
    tail.add_argument("--count", type=int, help="stop after this many messages")
    tail.set_defaults(func=cmd_bus_tail)
    keygen = _command(
        bus_commands,
        "keygen",
        "make CurveZMQ key pairs: server.key(_secret), NAME.key_secret, clients/NAME.key (see bus.curve)",
    )
    keygen.add_argument("--out", type=Path, required=True, help="the folder to write them to")
    keygen.add_argument("clients", nargs="*", help=f"client names (default: {' '.join(security.DEFAULT_CLIENTS)})")
    keygen.set_defaults(func=cmd_bus_keygen)

    fleet = _command(commands, "fleet", "many sites at once: status, signed deployments canaries first, jobs, keys")
    fleet_cli.add_commands(fleet, _commands, _command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments and arguments[0] in HANDED_OVER:  # everything after it, --help included, is the service's
        return cmd_handed_over(arguments[0], arguments[1:])
    args = build_parser().parse_args(arguments)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

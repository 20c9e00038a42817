"""``edgesight panorama``: ``import`` (a project -> a site file, then the app's environment) and ``env``.

``import`` reads the project, reports every problem at once and writes nothing where there is one
(exit 2); what it writes must be a site file EdgeSight accepts. ``env`` builds the apps' own
environments (``environment_build.py``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError, EdgeSightError
from services.apps.environment_build import build_environments
from services.apps.panorama.project import translate
from services.apps.panorama.site_file import site_document
from services.apps.panorama.translation import NotTranslatable, Translation

__all__ = ["build_parser", "main"]


def _pairs(values: Sequence[str], flag: str, problems: list[str], *, empty: bool = False) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict, in the order given; ``empty``: ``NAME=`` is allowed (an empty
    value)."""
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not (rest or empty):
            problems.append(f"{flag} {value!r}: expected NAME=VALUE")
        else:
            pairs[name] = rest
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesight panorama", description="Run AWS Panorama applications unchanged on EdgeSight."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )
    what = (
        "translate an AWS Panorama application project (or a v0 app: a folder with a panoramasdk.base class) "
        "into a site file: its cameras and an apps.<app> section, then build the app's own environment where "
        "it has requirements; what cannot be translated is reported (exit 2) and nothing is written"
    )
    run = commands.add_parser("import", help="an AWS Panorama application project -> a site file", description=what)
    run.add_argument("app_dir", type=Path, help="the application project (with graphs/ and packages/), or a v0 app")
    run.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="NODE=URL",
        help="the camera for a camera node (repeatable); a v0 app takes any names, in the order given",
    )
    run.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NODE=FILE.onnx",
        help="the ONNX file for a model node, or for a v0 app's model parameter's value (repeatable)",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for an input parameter (repeatable); NAME= sets a string parameter to an empty string",
    )
    run.add_argument("--graph", type=Path, help="graphs/<app>/graph.json (default: the only one)")
    run.add_argument("--override", type=Path, help="a deployment override (nodeGraphOverrides)")
    run.add_argument("--base", type=Path, help="a site file to add the app to (everything in it is kept)")
    run.add_argument("--out", type=Path, required=True, help="the site file to write")
    run.add_argument(
        "--no-env", action="store_true", help="do not build the app's own environment now (edgesight panorama env)"
    )
    _add_env_command(commands)
    return parser


def _add_env_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = (
        "build each app's own virtual environment (its requirements, on its python) with uv, in "
        "state_dir/apps/APP/env; an app with neither runs on EdgeSight's shared environment"
    )
    env = commands.add_parser("env", help="build the apps' own environments (their requirements)", description=text)
    env.add_argument("--config", required=True, type=Path, help="the site file (YAML)")
    env.add_argument("apps", nargs="*", metavar="APP", help="only these apps (default: every app with requirements)")


def _env(args: argparse.Namespace) -> int:
    """``edgesight panorama env``: builds each named app's environment (every app that needs one by
    default); exit 2 for a site file or app name that is wrong, 1 for a build that failed."""
    from common.config import load_config

    try:
        config = load_config(str(args.config))
    except EdgeSightError as exc:
        print(f"{args.config}: invalid\n{exc}", file=sys.stderr)
        return 2
    return build_environments(config, args.apps)


def _build_after_import(out: Path, app: str) -> int:
    from common.config import load_config  # the state_dir, as the written site file says

    config = load_config(str(out))
    status = build_environments(config, [app])
    if status:
        print(f"{out} is written; build the app's environment again with "
              f"`edgesight panorama env --config {out} {app}`", file=sys.stderr)  # fmt: skip
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "env":
        return _env(args)
    problems: list[str] = []
    cameras = _pairs(args.camera, "--camera", problems)
    models = {  # a file here is meant as a file here, not a name on the asset search path
        node: str(Path(value).resolve()) if Path(value).is_file() else value
        for node, value in _pairs(args.model, "--model", problems).items()
    }
    params = _pairs(args.param, "--param", problems, empty=True)
    base = None
    try:
        if args.base is not None:
            base = yaml.safe_load(args.base.read_text()) or {}
        translation = translate(
            args.app_dir, cameras=cameras, models=models, params=params, graph=args.graph, override=args.override
        )
        document = site_document(translation, base)
    except NotTranslatable as exc:
        problems += exc.problems
    except OSError as exc:
        problems.append(f"{exc.filename}: {exc.strerror}")
    if problems:
        print("edgesight panorama import: cannot translate\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    return _write(args, translation, document)


def _write(args: argparse.Namespace, translation: Translation, document: dict[str, Any]) -> int:
    """Writes the site file once EdgeSight accepts it, says what it holds, and builds the app's
    environment where it has requirements (unless ``--no-env``)."""
    from common.config import parse_config  # the result must be a site file EdgeSight accepts

    text = yaml.safe_dump(document, sort_keys=False)
    try:
        parse_config(text, str(args.out))
    except ConfigError as exc:
        print("edgesight panorama import: the result does not validate\n" + str(exc), file=sys.stderr)
        return 2
    args.out.write_text(text)
    app = translation.section
    print(
        f"{args.out}: app {translation.app!r} with cameras {app['cameras']}, models {sorted(app['models'])}, "
        f"parameters {sorted(app['parameters'])}, {len(app.get('requirements', []))} requirement(s), "
        f"ports {[p['host_port'] for p in app.get('ports', [])]}; check it with `edgesight config check {args.out}`"
    )
    for note in translation.notes:
        print(f"  note: {note}")
    if app.get("requirements"):
        if args.no_env:
            build = f"edgesight panorama env --config {args.out} {translation.app}"
            print(f"  its own environment is not built yet: build it with `{build}`")
            return 0
        return _build_after_import(args.out, translation.app)
    return 0

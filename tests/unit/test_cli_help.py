"""`edgesight ... --help`: every command and argument says what it is, in plain words."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

from common.cli.main import HANDED_OVER, build_parser


def _walk(parser: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{path} {name}")


def _handed_over(command: str) -> argparse.ArgumentParser:
    """The parser of the service module `edgesight COMMAND` hands over to (a test may import a service)."""
    module, prefix = HANDED_OVER[command]
    parser: argparse.ArgumentParser = importlib.import_module(module).build_parser()
    for step in prefix:
        [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        parser = commands.choices[step]
    return parser


def every_command() -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for path, parser in _walk(build_parser(), "edgesight"):
        command = path.split()[1:]
        if len(command) == 1 and command[0] in HANDED_OVER:
            yield from _walk(_handed_over(command[0]), path)
        else:
            yield path, parser


COMMANDS = dict(every_command())


def test_the_walk_reaches_the_handed_over_commands() -> None:
    for path in ("edgesight config check", "edgesight bus tail", "edgesight cameras probe", "edgesight detect",
                 "edgesight models install", "edgesight panorama import"):  # fmt: skip
        assert path in COMMANDS, sorted(COMMANDS)


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_argument_and_subcommand_has_plain_help(path: str) -> None:
    """`config check file`, `run config`, `panorama import app_dir`, `--camera NODE=URL`, `--out` had none;
    `bus tail --stream` offered an empty choice; `cameras` and `panorama` showed docstrings' ``markup``."""
    parser = COMMANDS[path]
    text = parser.format_help()
    assert text.startswith(f"usage: {path} "), text  # the name a user types, also where a module answers
    for action in parser._actions:
        name = "/".join(action.option_strings) or action.dest
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), f"{path}: {name}"
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                assert choice.help and choice.help.strip(), f"{path} {choice.dest}: no help"
        elif action.choices is not None:
            assert all(str(choice).strip() for choice in action.choices), f"{path}: {name}: an empty choice"
    for jargon in ("``", "python -m", "never imports", "hands over", "Runnable as"):
        assert jargon not in text, f"{path}: {jargon!r} in its help:\n{text}"


@pytest.mark.parametrize("command", sorted(HANDED_OVER))
def test_handed_over_help_answers_as_edgesight(command: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "common.cli.main", command, "--help"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: edgesight {command} "), result.stdout
    assert "``" not in result.stdout and "never imports" not in result.stdout, result.stdout

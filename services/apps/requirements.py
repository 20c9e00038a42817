"""Where an app's requirements come from: the ``pip install`` lines of its Dockerfile and its
``requirements.txt``, read as pip would, never run.

A Panorama app's container got its packages from ``RUN pip install ...`` lines of its Dockerfile;
``edgesight panorama import`` makes them ``apps.<app>.requirements`` (pip requirement lines), which
``environment_build.py`` installs in the app's own environment.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence
from pathlib import Path

__all__ = ["bare_name", "canonical_name", "dockerfile_requirements", "requirement_name", "requirements_file"]

PANORAMA = "/panorama"  # where a Dockerfile's `COPY src /panorama` put the code package
_BARE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
# pip install options: those whose value is a requirement source are kept, the others dropped
_KEPT_OPTIONS = {
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "-e": "-e",
    "--editable": "-e",
}
_VALUE_OPTIONS = {
    *("-t", "--target", "--prefix", "--root", "--src", "--platform", "--python-version", "--implementation"),
    *("--abi", "--upgrade-strategy", "--progress-bar", "--log", "--log-file", "--cache-dir", "--timeout"),
    *("--retries", "--proxy", "--cert", "--client-cert", "--trusted-host", "--global-option", "--install-option"),
    *("-C", "--config-settings", "--no-binary", "--only-binary", "--exists-action", "--use-feature"),
    *("--use-deprecated", "--python", "--report", "--root-user-action", "--keyring-provider"),
}


def canonical_name(name: str) -> str:
    """A distribution's name as pip compares it (PEP 503): ``Opencv_Python`` is ``opencv-python``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(line: str) -> str | None:
    """The canonical name a requirement line installs; None for an option (``-c``, ``--index-url``)."""
    match = _BARE_NAME.match(line)
    return canonical_name(match.group()) if match and not line.startswith("-") else None


def bare_name(line: str) -> str | None:
    """The canonical name of a requirement that is a name alone (no version, extras or marker), else None."""
    return canonical_name(line) if _BARE_NAME.fullmatch(line) else None


def requirements_file(path: Path, problems: list[str], *, _seen: frozenset[Path] = frozenset()) -> list[str]:
    """The requirement lines of a pip requirements file: comments and blank lines dropped, ``\\``
    continuations joined, ``-r`` files read in place (relative to the file), ``-c`` files made absolute;
    ``pip`` itself is dropped (a requirement of pip's own upgrade, not of the app)."""
    if path.resolve() in _seen:
        problems.append(f"{path}: includes itself")
        return []
    try:
        text = path.read_text()
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror or exc}")
        return []
    lines: list[str] = []
    for raw in re.sub(r"\\\n", "", text).splitlines():
        line = re.sub(r"(^|\s)#.*$", "", raw).strip()
        option, _, value = line.partition(" ")
        option, _, inline = option.partition("=")
        value = (inline or value).strip()
        if option in ("-r", "--requirement") and value:
            lines += requirements_file(path.parent / value, problems, _seen=_seen | {path.resolve()})
        elif option in ("-c", "--constraint") and value:
            lines.append(f"-c {(path.parent / value).resolve()}")
        elif line and requirement_name(line) != "pip":
            lines.append(line)
    return lines


def _instructions(text: str) -> list[tuple[int, str]]:
    """A Dockerfile's instructions as ``(first line, text)``: continuations joined, comments dropped."""
    instructions: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("#") or (not parts and not line):
            continue  # a comment, also one inside a continued instruction
        if not parts:
            start = number
        parts.append(line[:-1] if line.endswith("\\") else line)
        if not line.endswith("\\"):
            instructions.append((start, " ".join(parts)))
            parts = []
    if parts:
        instructions.append((start, " ".join(parts)))
    return instructions


def _commands(shell: str) -> list[list[str]]:
    """A ``RUN`` line's simple commands as word lists: split at ``&&``, ``||``, ``;`` and ``|``,
    redirections (``> /dev/null``, ``2>&1``) left out."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    skip = False
    for token in lexer:
        if skip:
            skip = False
        elif token and all(c in "();<>|&" for c in token):
            if "<" in token or ">" in token:
                skip = True  # the file (or the 1 of 2>&1)
                if commands[-1] and commands[-1][-1].isdigit():
                    commands[-1].pop()  # the 2 of 2>&1
            else:
                commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def _pip_install_arguments(words: Sequence[str]) -> list[str] | None:
    """The arguments of ``[VAR=x] [sudo] pip|pip3|python3 -m pip [options] install ARGS``, else None."""
    index = 0
    while index < len(words) and (_ASSIGNMENT.match(words[index]) or words[index] in ("sudo", "env", "exec")):
        index += 1
    if index == len(words):
        return None
    program = words[index].rsplit("/", 1)[-1]
    rest = list(words[index + 1 :])
    if re.fullmatch(r"python(\d(\.\d+)?)?", program):
        while rest and rest[0].startswith("-") and rest[0] != "-m":
            rest.pop(0)  # python3 -u -m pip
        if rest[:2] != ["-m", "pip"]:
            return None
        rest = rest[2:]
    elif not re.fullmatch(r"pip(\d(\.\d+)?)?", program):
        return None
    while rest and rest[0].startswith("-"):
        rest.pop(0)  # pip's own options: --no-cache-dir, -q, --disable-pip-version-check
    return rest[1:] if rest[:1] == ["install"] else None


def _define(keyword: str, rest: str, variables: dict[str, str]) -> None:
    """``ARG NAME=default``, ``ENV NAME=value ...`` and ``ENV NAME value``: values a RUN line may use."""
    try:
        words = shlex.split(rest)
    except ValueError:
        return
    if keyword == "ENV" and words and "=" not in words[0]:
        variables[words[0]] = " ".join(words[1:])
        return
    for word in words:
        name, equals, value = word.partition("=")
        if equals:
            variables[name] = value


def _find(name: str, folders: Sequence[Path], code: Path) -> Path | None:
    """A file a Dockerfile names, in the project: ``/panorama/x`` is ``code/x``; a relative name is looked
    for in each folder (the Docker build context first); anything else by its base name."""
    if name.startswith(PANORAMA + "/"):
        candidates = [code / name[len(PANORAMA) + 1 :]]
    elif name.startswith("/"):
        candidates = [folder / Path(name).name for folder in (code, *folders)]
    else:
        candidates = [folder / name for folder in folders] + [folder / Path(name).name for folder in folders]
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def _install_lines(
    arguments: Sequence[str], where: str, folders: Sequence[Path], code: Path, problems: list[str]
) -> list[str]:
    lines: list[str] = []
    values = iter(arguments)
    for argument in values:
        option, equals, inline = argument.partition("=")
        if "$" in argument:
            problems.append(f"{where}: pip install {argument}: a variable neither ARG nor ENV gives a value")
            continue
        if not argument.startswith("-"):
            if requirement_name(argument) != "pip":
                lines.append(argument)
            continue
        if option not in (*_KEPT_OPTIONS, *_VALUE_OPTIONS, "-r", "--requirement", "-c", "--constraint"):
            continue  # a flag: --no-cache-dir, -U, --upgrade, --ignore-installed, --user, -q
        value = inline if equals else next(values, "")
        if option in _KEPT_OPTIONS:
            lines.append(f"{_KEPT_OPTIONS[option]} {value}")
        elif option in ("-r", "--requirement", "-c", "--constraint"):
            found = _find(value, folders, code)
            if found is None:
                places = ", ".join(str(folder) for folder in folders)
                problems.append(f"{where}: pip install {option} {value}: no such file in {places}")
            elif option in ("-r", "--requirement"):
                lines += requirements_file(found, problems)
            else:
                lines.append(f"-c {found.resolve()}")
    return lines


def dockerfile_requirements(dockerfile: Path, folders: Sequence[Path], code: Path, problems: list[str]) -> list[str]:
    """The requirement lines of every ``pip install`` in a Dockerfile's ``RUN`` instructions (shell or
    exec form, ``pip``, ``pip3``, ``python3 -m pip``, commands joined with ``&&``, ``$VARIABLES`` of
    ``ARG``/``ENV`` filled in); ``-r FILE`` read from the project (``folders``: the build context first;
    ``/panorama/...`` is ``code``); flags dropped."""
    try:
        text = dockerfile.read_text()
    except OSError as exc:
        problems.append(f"{dockerfile}: {exc.strerror or exc}")
        return []
    lines: list[str] = []
    variables: dict[str, str] = {}
    for number, instruction in _instructions(text):
        keyword, _, rest = instruction.partition(" ")
        if keyword.upper() in ("ARG", "ENV"):
            _define(keyword.upper(), rest, variables)
        if keyword.upper() != "RUN":
            continue
        rest = re.sub(r"\$(?:\{(\w+)\}|(\w+))", lambda m: variables.get(m[1] or m[2], m[0]), rest.strip())
        while rest.startswith("--"):  # RUN --mount=type=cache,target=/root/.cache/pip pip install ...
            rest = rest.partition(" ")[2].lstrip()
        where = f"{dockerfile}:{number}"
        try:
            commands = [json.loads(rest)] if rest.startswith("[") else _commands(rest)
        except ValueError as exc:
            problems.append(f"{where}: cannot read this RUN line ({exc})")
            continue
        for words in commands:
            arguments = _pip_install_arguments([str(word) for word in words])
            if arguments is not None:
                lines += _install_lines(arguments, where, folders, code, problems)
    return lines

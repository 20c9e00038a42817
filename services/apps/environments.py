"""An app's own packages: read from its project (Dockerfile, requirements.txt), installed in its own
virtual environment, built ahead of time by ``edgesight panorama env`` (never when the service runs).

A Panorama app's container got its packages from ``RUN pip install ...`` lines of its Dockerfile. Here
they become ``apps.<app>.requirements`` (pip requirement lines), and the app gets a virtual
environment of its own at ``state_dir/apps/<app>/env``, built with uv:

* ``uv venv --python <apps.<app>.python, else the Python EdgeSight's environment is built on>``;
* where that Python has EdgeSight's major.minor version, a ``.pth`` file puts EdgeSight's own
  site-packages at the *end* of the environment's ``sys.path``: numpy, OpenCV and the SDK's own
  dependencies come from EdgeSight, and whatever the app installs itself comes first. A requirement
  that names numpy or OpenCV without a version (``numpy``, ``opencv-python``) is left to EdgeSight's
  copy; pin a version to get the app's own. On another Python, numpy is installed too;
* ``uv pip install --python <env>/bin/python -r <the requirements>``;
* everything readable, nothing writable, by other users (the app runs as its own uid);
* a stamp (a hash of the Python and the requirements) written last: an environment whose build was
  interrupted, or whose requirements changed since, is "stale" to :func:`environment_problems`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from importlib import metadata
from pathlib import Path

from common.config import AppConfig, SiteConfig
from common.errors import EdgeSightError

__all__ = [
    "EnvironmentBuildError",
    "add_command",
    "build_environment",
    "build_environments",
    "dockerfile_requirements",
    "environment_dir",
    "environment_problems",
    "environment_python",
    "requirements_file",
    "run_command",
]

STAMP = "edgesight-env.json"  # in the environment's folder; its absence means "not built to the end"
REQUIREMENTS = "edgesight-requirements.txt"  # what was handed to uv, kept for whoever looks
SHARED_PTH = "zz_edgesight_shared.pth"  # "zz": after any .pth of the app's own packages
STAMP_FORMAT = 1
# an unpinned requirement of one of these is met by EdgeSight's own package (the right side): the one the
# SDK and OpenCV were built with (and cv2 without the GUI libraries a headless box lacks)
_OPENCV = "opencv-python-headless"
SHARED = {"numpy": "numpy", "opencv-python": _OPENCV, _OPENCV: _OPENCV}
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


class EnvironmentBuildError(EdgeSightError):
    """An app's environment could not be built (uv missing, a requirement that does not resolve)."""


Say = Callable[[str], None]


# -- where the requirements come from ------------------------------------------------------------------


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str | None:
    match = _BARE_NAME.match(line)
    return _canonical(match.group()) if match and not line.startswith("-") else None


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
        elif line and _requirement_name(line) != "pip":
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
            if _requirement_name(argument) != "pip":
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


# -- the environment -------------------------------------------------------------------------------------


def environment_dir(state_dir: Path, app_name: str) -> Path:
    """Where ``app_name``'s own environment lives: ``state_dir/apps/<app>/env``."""
    return state_dir / "apps" / app_name / "env"


def _has_own(app: AppConfig) -> bool:
    return bool(app.requirements) or app.python is not None


def environment_python(state_dir: Path, name: str, app: AppConfig) -> Path | None:
    """The interpreter ``name`` runs on: its environment's, or None where it has no requirements and no
    ``python`` (it runs on EdgeSight's shared environment). Whether that environment is built is
    :func:`environment_problems`'s question."""
    return environment_dir(state_dir, name) / "bin" / "python" if _has_own(app) else None


def _edgesight_python() -> str:
    """The interpreter EdgeSight's own virtual environment is built on."""
    return str(getattr(sys, "_base_executable", None) or sys.executable)


def _shared_site_packages() -> list[str]:
    paths = sysconfig.get_paths()
    return list(dict.fromkeys([paths["purelib"], paths["platlib"]]))


def _digest(app: AppConfig) -> str:
    """What the environment is built from: its Python, the shared site-packages and the requirements."""
    key = {
        "format": STAMP_FORMAT,
        "python": app.python or _edgesight_python(),
        "shared": _shared_site_packages(),
        "requirements": app.requirements,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _build_command(config: SiteConfig, name: str) -> str:
    return f"edgesight panorama env --config {config.source} {name}"


def environment_problems(config: SiteConfig, name: str, app: AppConfig) -> list[str]:
    """Why ``name``'s own environment cannot be used as it is ("missing" or "stale"), with the site file
    location and the command that builds it; empty when it needs none or it is built for these
    requirements."""
    if not _has_own(app):
        return []
    where = config.where("apps", name, "requirements" if app.requirements else "python")
    folder = environment_dir(Path(config.site.state_dir), name)
    build = _build_command(config, name)
    if not (folder / "bin" / "python").exists() and not (folder / STAMP).exists():
        return [f"{where}: app {name!r} has packages of its own but its environment {folder} is missing; build it "
                f"with `{build}`"]  # fmt: skip
    try:
        stamp = json.loads((folder / STAMP).read_text()).get("digest")
    except (OSError, ValueError, AttributeError):
        stamp = None
    if stamp != _digest(app):
        return [f"{where}: app {name!r}'s environment {folder} is stale (built for other requirements or Python, or "
                f"its build did not finish); rebuild it with `{build}`"]  # fmt: skip
    return []


def _stream(command: Sequence[str], say: Say, *, cwd: Path | None = None) -> None:
    """Runs ``command``, each line of its output said as it comes; a failure is an EnvironmentBuildError."""
    try:
        process = subprocess.Popen(
            list(command), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace"
        )
    except OSError as exc:
        raise EnvironmentBuildError(f"{command[0]}: {exc.strerror or exc}") from exc
    assert process.stdout is not None
    with process:
        for line in process.stdout:
            say(f"    {line.rstrip()}")
    if process.returncode:
        raise EnvironmentBuildError(f"`{shlex.join(command)}` failed (exit {process.returncode})")


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError) as exc:
        raise EnvironmentBuildError(f"uv is not installed beside EdgeSight ({exc}); pip install uv") from exc


def _interpreter_facts(python: Path) -> tuple[str, str]:
    """``(major.minor, purelib)`` of an environment's interpreter."""
    script = "import sys, sysconfig; print('%d.%d' % sys.version_info[:2]); print(sysconfig.get_paths()['purelib'])"
    result = subprocess.run([str(python), "-c", script], capture_output=True, text=True, check=False)
    if result.returncode:
        raise EnvironmentBuildError(f"{python} does not run: {result.stderr.strip()}")
    version, purelib = result.stdout.splitlines()[:2]
    return version, purelib


def _shared(requirement: str) -> bool:
    """An unpinned requirement (a bare name) of numpy or OpenCV, which EdgeSight's own environment holds."""
    name = SHARED.get(_canonical(requirement)) if _BARE_NAME.fullmatch(requirement) else None
    if name is None:
        return False
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def _open_to_readers(folder: Path) -> None:
    """Everything under ``folder`` readable (and folders and programs enterable) by other users, writable
    only by us: the app runs as its own unprivileged uid."""
    for root, dirs, files in os.walk(folder):
        for path in [Path(root), *(Path(root) / name for name in (*dirs, *files))]:
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                continue  # bin/python points at the interpreter, which is not ours to change
            mode = stat.S_IMODE(info.st_mode) | 0o444
            if stat.S_ISDIR(info.st_mode) or mode & 0o111:
                mode |= 0o111
            path.chmod(mode & ~0o022)


def _write_stamp(folder: Path, app: AppConfig) -> None:
    temporary = folder / f".{STAMP}.tmp"
    data = {"digest": _digest(app), "python": app.python or _edgesight_python(), "requirements": app.requirements}
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.chmod(0o644)
    temporary.replace(folder / STAMP)


def build_environment(state_dir: Path, name: str, app: AppConfig, *, say: Say = print) -> Path:
    """Builds ``name``'s own environment from scratch (see the module's docstring) and returns its
    interpreter; raises EnvironmentBuildError, leaving it "stale", where a step fails."""
    folder = environment_dir(state_dir, name)
    python_spec = app.python or _edgesight_python()
    uv = _uv()
    say(f"apps.{name}: building its environment in {folder}")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists() or folder.is_symlink():
        say("  removing the previous one")
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    say(f"  [1/4] a virtual environment on {python_spec}")
    _stream([uv, "venv", "--no-project", "--python", python_spec, str(folder)], say, cwd=folder.parent)
    python = folder / "bin" / "python"
    version, purelib = _interpreter_facts(python)
    edgesight = "{}.{}".format(*sys.version_info[:2])
    requirements = list(app.requirements)
    if version == edgesight:
        Path(purelib, SHARED_PTH).write_text("\n".join(_shared_site_packages()) + "\n")
        shared = [line for line in requirements if _shared(line)]
        requirements = [line for line in requirements if line not in shared]
        say(f"  [2/4] Python {version}, as EdgeSight's: its packages come after the app's own on sys.path")
        if shared:
            say(f"        EdgeSight's own {', '.join(shared)} serve (pin a version to install the app's own)")
    else:
        if not any(_requirement_name(line) == "numpy" for line in requirements):
            requirements.append("numpy")
        say(f"  [2/4] Python {version}, not EdgeSight's {edgesight}: nothing shared, numpy installed too")
    (folder / REQUIREMENTS).write_text("".join(f"{line}\n" for line in requirements))
    if requirements:
        say(f"  [3/4] installing {len(requirements)} requirement(s) with uv")
        install = ["pip", "install", "--python", str(python), "--compile-bytecode", "-r", str(folder / REQUIREMENTS)]
        _stream([uv, *install], say, cwd=app.code if app.code.is_dir() else folder)
    else:
        say("  [3/4] nothing to install")
    say("  [4/4] readable by the app's own user, writable by none")
    _open_to_readers(folder)
    _write_stamp(folder, app)
    say(f"apps.{name}: ready ({python})")
    return python


# -- `edgesight panorama env` ----------------------------------------------------------------------------


def add_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    text = (
        "build each app's own virtual environment (its requirements, on its python) with uv, in "
        "state_dir/apps/APP/env; an app with neither runs on EdgeSight's shared environment"
    )
    env = commands.add_parser("env", help="build the apps' own environments (their requirements)", description=text)
    env.add_argument("--config", required=True, type=Path, help="the site file (YAML)")
    env.add_argument("apps", nargs="*", metavar="APP", help="only these apps (default: every app with requirements)")


def run_command(args: argparse.Namespace) -> int:
    """``edgesight panorama env``: builds each named app's environment (every app that needs one by
    default); exit 2 for a site file or app name that is wrong, 1 for a build that failed."""
    from common.config import load_config

    try:
        config = load_config(str(args.config))
    except EdgeSightError as exc:
        print(f"{args.config}: invalid\n{exc}", file=sys.stderr)
        return 2
    return build_environments(config, args.apps)


def build_environments(config: SiteConfig, names: Iterable[str] = (), *, say: Say = print) -> int:
    """Builds the environments of ``names`` (default: every app with requirements or a python); the exit
    status of ``edgesight panorama env``."""
    names = list(names)
    unknown = [name for name in names if name not in config.apps]
    if unknown:
        print(f"{config.source}: no app {unknown} under apps: (apps: {sorted(config.apps)})", file=sys.stderr)
        return 2
    chosen = names or [name for name, app in config.apps.items() if _has_own(app)]
    failed = []
    for name in chosen:
        app = config.apps[name]
        if not _has_own(app):
            say(f"apps.{name}: no requirements and no python; it runs on EdgeSight's shared environment")
            continue
        try:
            build_environment(Path(config.site.state_dir), name, app, say=say)
        except (EnvironmentBuildError, OSError) as exc:
            print(f"apps.{name}: its environment was not built: {exc}", file=sys.stderr)
            failed.append(name)
    if not chosen:
        say(f"{config.source}: no app has requirements; every app runs on EdgeSight's shared environment")
    return 1 if failed else 0

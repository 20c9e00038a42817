"""YAML -> pydantic in layers, keeping each key's line so every error says file:line: key.

1. ``yaml.compose`` gives nodes with marks; we build plain data and a ``path -> line`` map.
2. ``${VAR}``, ``${VAR:-default}`` and ``${file:/run/secrets/x}`` in strings are substituted
   (secrets stay out of the file); a missing variable is an error at its line.
3. ``camera_defaults`` is merged under every camera (the camera's own keys win).
4. ``SiteConfig.model_validate`` checks types, bounds and cross references.
"""

from __future__ import annotations

import copy
import difflib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from common.config._types import NAME_PATTERN, NAME_RULE
from common.errors import ConfigError

__all__ = ["MAX_RULES_PER_CAMERA", "MAX_VERTICES_PER_SITE", "load_config", "load_yaml", "parse_config"]

MAX_RULES_PER_CAMERA = 64  # README, "Security model"
MAX_VERTICES_PER_SITE = 4096

Path_ = tuple[str | int, ...]
_ENV = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*|file:[^}]+)(?::-(?P<default>[^}]*))?\}")


class _Lines:
    def __init__(self, source: str) -> None:
        self.source = source
        self.by_path: dict[Path_, int] = {}
        self.problems: list[str] = []
        self.substituted: set[Path_] = set()  # values that came from ${...}: never repeated in a message

    def line(self, path: Path_) -> int:
        while path and path not in self.by_path:
            path = path[:-1]
        return self.by_path.get(path, 1)

    def error(self, path: Path_, message: str) -> None:
        self.problems.append(f"{self.source}:{self.line(path)}: {_dotted(path) or '(top)'}: {message}")


def _dotted(path: Path_) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _substitute(text: str, lines: _Lines, path: Path_, environ: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        name, default = match["name"], match["default"]
        if name.startswith("file:"):
            try:
                return Path(name[5:]).read_text().strip()
            except OSError as exc:
                lines.error(path, f"cannot read secret file {name[5:]}: {exc.strerror}")
                return ""
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        if any(isinstance(part, str) and _SECRET_KEY.search(part) for part in path):
            hint = f"export {name}=... before running, or read it from a file with ${{file:/run/secrets/...}}"
        else:
            hint = f"use ${{{name}:-default}} for a default"
        lines.error(path, f"environment variable {name} is not set ({hint})")
        return ""

    result = _ENV.sub(replace, text)
    if result != text:
        lines.substituted.add(path)
    return result


def _build(node: yaml.Node, path: Path_, lines: _Lines, environ: Mapping[str, str]) -> Any:
    lines.by_path.setdefault(path, node.start_mark.line + 1)
    constructor = yaml.SafeLoader("")
    if isinstance(node, yaml.MappingNode):
        constructor.flatten_mapping(node)  # supports `<<: *anchor`
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = constructor.construct_object(key_node, deep=True)
            child = (*path, key)
            if key in result:
                lines.by_path[child] = key_node.start_mark.line + 1
                lines.error(child, "duplicate key")
                continue
            lines.by_path[child] = key_node.start_mark.line + 1
            result[key] = _build(value_node, child, lines, environ)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, i), lines, environ) for i, item in enumerate(node.value)]
    value = constructor.construct_object(node, deep=True)
    return _substitute(value, lines, path, environ) if isinstance(value, str) else value


def load_yaml(text: str, source: str = "<string>", environ: Mapping[str, str] | None = None) -> tuple[Any, _Lines]:
    """Parse YAML into plain data plus the line of every key; syntax errors raise ConfigError."""
    lines = _Lines(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([f"{where}: (yaml): {exc.problem or exc}"]) from None
    data = {} if node is None else _build(node, (), lines, os.environ if environ is None else environ)
    return data, lines


def _merge_defaults(data: dict[str, Any], lines: _Lines) -> None:
    """Deep-merge ``camera_defaults`` under each camera; merged keys keep the defaults' lines."""
    defaults = data.get("camera_defaults")
    cameras = data.get("cameras")
    if not isinstance(defaults, dict) or not isinstance(cameras, dict):
        return

    def merge(base: dict[str, Any], own: dict[str, Any], base_path: Path_, own_path: Path_) -> dict[str, Any]:
        merged = copy.deepcopy(base)
        for key in base:
            for path, line in list(lines.by_path.items()):
                if path[: len(base_path) + 1] == (*base_path, key):
                    lines.by_path.setdefault((*own_path, *path[len(base_path) :]), line)
        for key, value in own.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value, (*base_path, key), (*own_path, key))
            else:
                merged[key] = value
        return merged

    for name, camera in cameras.items():
        if isinstance(camera, dict):
            cameras[name] = merge(defaults, camera, ("camera_defaults",), ("cameras", name))


def parse_config(text: str, source: str = "<string>", environ: Mapping[str, str] | None = None) -> Any:
    """Validate YAML text as a site config; every problem found is reported at once."""
    from common.config.site import SiteConfig  # here: the models import this module's helpers

    data, lines = load_yaml(text, source, environ)
    if not isinstance(data, dict):
        raise ConfigError([f"{source}:1: (top): expected a mapping of sections, got {type(data).__name__}"])
    _merge_defaults(data, lines)
    reported = _check_references(data, lines) | _check_limits(data, lines)
    try:
        config = SiteConfig.model_validate(data, context={"source": source})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            path = _data_path(tuple(error["loc"]), data)
            message = error["msg"].removeprefix("Value error, ")  # pydantic's prefix says nothing to a user
            if message in reported:
                continue  # said already, at the line of the key that is wrong
            plain = _in_plain_words(error, path, data, lines)
            if plain is not None:
                lines.error(*plain)
                continue
            if error["type"] not in ("missing", "extra_forbidden") and _echoable(path, error.get("input"), lines):
                message += f" (got {repr(error['input'])[:60]})"
            if error["type"] == "extra_forbidden":
                message = "unknown key (check its spelling and section)"
            lines.error(path, message)
    if lines.problems:
        raise ConfigError(lines.problems)
    config.source = source
    config.key_lines = dict(lines.by_path)
    return config


def _in_plain_words(error: ErrorDetails, path: Path_, data: Any, lines: _Lines) -> tuple[Path_, str] | None:
    """pydantic's words where they are its internals (a discriminator, a regex): where and what to say instead."""
    if error["type"] == "string_pattern_mismatch" and error.get("ctx", {}).get("pattern") == NAME_PATTERN:
        return path, NAME_RULE
    if error["type"] not in ("union_tag_invalid", "union_tag_not_found"):
        return None
    what = {"rules": "rule", "actions": "action"}.get(str(path[-2]) if len(path) > 1 else "", "")
    if not what:
        return None
    a_what = "an action" if what == "action" else "a rule"
    types = ", ".join(_types_of(what))
    node = _at(data, path)
    if error["type"] == "union_tag_invalid" and isinstance(node, dict):
        where = (*path, "type")
        named = f" {node.get('type')!r}" if _echoable(where, node.get("type"), lines) else ""
        return where, f"{what} type{named} is not one of: {types}"
    keys = [key for key in node if isinstance(key, str)] if isinstance(node, dict) else []
    misspelt = difflib.get_close_matches("type", keys, n=1, cutoff=0.6)
    if misspelt:  # `tpye:` — at its own line
        return (*path, misspelt[0]), f"unknown key (did you mean 'type'?); {a_what} needs a type: one of {types}"
    return path, f"{a_what} needs a type: one of {types}"


def _types_of(what: str) -> list[str]:
    """The ``type`` values of the rules or actions, from their models (a new rule type is listed by itself)."""
    from common.config.rules import Action, Rule  # here: the models import this module's helpers

    union = get_args({"rule": Rule, "action": Action}[what])[0]
    return [get_args(member.model_fields["type"].annotation)[0] for member in get_args(union)]


def _at(data: Any, path: Path_) -> Any:
    for part in path:
        if isinstance(data, dict):
            data = data.get(part)
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)


def _echoable(path: Path_, value: object, lines: _Lines) -> bool:
    """Only a scalar that cannot be a secret is repeated in a message: a mapping may hold a password, and
    a value that came from ``${...}`` is whatever that variable or file holds (``${file:/etc/shadow}``)."""
    if not isinstance(value, (str, int, float, bool)) or value is None:
        return False
    if any(path[: len(substituted)] == substituted for substituted in lines.substituted):
        return False
    return not any(isinstance(part, str) and _SECRET_KEY.search(part) for part in path)


def _check_limits(data: dict[str, Any], lines: _Lines) -> set[str]:
    """Bounds that keep one site file from starving the rules service (and the console that draws it):
    rules per camera and polygon/line vertices in the whole site."""
    reported: set[str] = set()
    cameras = data.get("cameras")
    if not isinstance(cameras, dict):
        return reported
    vertices = 0
    for camera_name, camera in cameras.items():
        rules = camera.get("rules") if isinstance(camera, dict) else None
        if not isinstance(rules, dict):
            continue
        if len(rules) > MAX_RULES_PER_CAMERA:
            message = f"{len(rules)} rules; a camera may have at most {MAX_RULES_PER_CAMERA}"
            lines.error(("cameras", camera_name, "rules"), message)
            reported.add(message)
        for name, rule in rules.items():
            if not isinstance(rule, dict):
                continue
            for key in ("polygon", "line"):
                if isinstance(rule.get(key), list):
                    vertices += len(rule[key])
            if vertices > MAX_VERTICES_PER_SITE:
                message = f"the site's rules have over {MAX_VERTICES_PER_SITE} vertices in all (polygons and lines)"
                lines.error(("cameras", camera_name, "rules", name), message)
                reported.add(message)
                return reported
    return reported


def _check_references(data: dict[str, Any], lines: _Lines) -> set[str]:
    """A rule naming a zone that is not a zone rule of its camera: reported at the rule's ``zone`` line
    (the model's own check can only name the camera). Returns the messages reported."""
    reported: set[str] = set()
    cameras = data.get("cameras")
    if not isinstance(cameras, dict):
        return reported
    for camera_name, camera in cameras.items():
        rules = camera.get("rules") if isinstance(camera, dict) else None
        if not isinstance(rules, dict):
            continue
        zones = {name for name, rule in rules.items() if isinstance(rule, dict) and rule.get("type") == "zone"}
        for name, rule in rules.items():
            zone = rule.get("zone") if isinstance(rule, dict) else None
            if isinstance(zone, str) and zone not in zones:
                message = (
                    f"rule {name!r} names zone {zone!r}, which is not a zone rule of this camera "
                    f"(zones: {sorted(zones) or 'none'})"
                )
                lines.error(("cameras", camera_name, "rules", name, "zone"), message)
                reported.add(message)
    return reported


def _data_path(loc: Path_, data: Any) -> Path_:
    """Drop the union tags pydantic puts in ``loc`` (``rules.r1.zone.polygon``) so the path follows the YAML.

    A tag comes right after the path of the mapping whose ``type`` it names.
    """
    path: Path_ = ()
    node = data
    tag_skipped_at: Any = None
    for part in loc:
        if isinstance(node, dict) and node.get("type") == part and tag_skipped_at is not node:
            tag_skipped_at = node
            continue  # a discriminated union's tag, not a key
        path = (*path, part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            node = None
    return path


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Any:
    """Read and validate a site file; raises ConfigError naming file, line and key."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError([f"{file}: cannot read: {exc.strerror}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        problem = f"{file}:{line}: (file): not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise ConfigError([problem]) from None
    return parse_config(text, str(file), environ)

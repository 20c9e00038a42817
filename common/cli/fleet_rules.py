"""The rules file of ``edgesight fleet deploy rules``, checked on the operator's machine before any site gets
it: each rule through the site file's own rule models (:data:`common.config.rules.Rule`), so a typo fails
here, naming ``file:line: camera.rule.key``, instead of on the canary.

What only a site can know is left to it: the rules already on its disk (a ``zone`` a merged rule names may be
there; a webhook URL or ``${...}`` must be there already) and whether the camera exists.

>>> import tempfile
>>> path = Path(tempfile.mkdtemp()) / "rules.yaml"
>>> _ = path.write_text("hall:\\n  door:\\n    type: zone\\n    polygon: [[0, 0], [1, 0], [1, 1]]\\n    min_scor: 1\\n")
>>> try:
...     read_rules(path, replace=False)
... except ConfigError as exc:
...     print(str(exc).replace(str(path), "rules.yaml"))
rules.yaml:5: hall.door.min_scor: unknown key (check its spelling)
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

from common.config._types import NAME_PATTERN, NAME_RULE
from common.config.loader import MAX_RULES_PER_CAMERA
from common.config.rules import Rule
from common.errors import ConfigError

__all__ = ["read_rules"]

Key = tuple[str | int, ...]
_RULE: TypeAdapter[Any] = TypeAdapter(Rule)
SHAPE = "expected {camera: {rule name: {rule settings}}}, e.g. dock: {door: {type: zone, polygon: [...]}}"


def read_rules(path: Path, *, replace: bool) -> dict[str, Any]:
    """A rules file, ``{camera: {rule: {settings}}}`` as under ``cameras.<camera>.rules`` in a site file,
    every rule valid; :class:`ConfigError` lists each problem as ``file:line: key: message``. ``replace``:
    the rules are each camera's whole set, so a ``zone`` a rule names must be among them."""
    try:
        text = path.read_bytes().decode("utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)  # as written: a ${...} goes to the site as it is (it refuses a new one)
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: (file): not UTF-8 text (byte {exc.start}); save the file as UTF-8"]) from None
    except yaml.MarkedYAMLError as exc:
        where = f"{path}:{exc.problem_mark.line + 1}" if exc.problem_mark else str(path)
        raise ConfigError([f"{where}: (yaml): {exc.problem or exc}"]) from None
    if not isinstance(data, dict) or not data:
        raise ConfigError([f"{path}:1: (top): {SHAPE}"])
    lines: dict[Key, int] = {}
    if node is not None:
        _key_lines(node, (), lines)
    found = sorted(((_line(lines, key), key, message) for key, message in _problems(data, replace)), key=lambda p: p[0])
    if found:  # in the file's order
        raise ConfigError([f"{path}:{line}: {_dotted(key) or '(top)'}: {message}" for line, key, message in found])
    return data


def _problems(data: dict[Any, Any], replace: bool) -> list[tuple[Key, str]]:
    problems: list[tuple[Key, str]] = []
    for camera, rules in data.items():
        if not _is_name(camera):
            problems.append(((str(camera),), f"a camera's name: {NAME_RULE}"))
        if not isinstance(rules, dict):  # {} is fine: with --replace, the camera has no rules any more
            problems.append(((str(camera),), f"the camera's rules by name; {SHAPE}"))
            continue
        if len(rules) > MAX_RULES_PER_CAMERA:
            problems.append(((camera,), f"{len(rules)} rules; a camera may have at most {MAX_RULES_PER_CAMERA}"))
        for name, rule in rules.items():
            if not _is_name(name):
                problems.append(((camera, str(name)), f"a rule's name: {NAME_RULE}"))
            try:
                _RULE.validate_python(rule)
            except ValidationError as exc:
                problems += [_explained((camera, name), error, rule) for error in exc.errors(include_url=False)]
        if replace:
            problems += _unknown_zones(camera, rules)
    return problems


def _unknown_zones(camera: str, rules: dict[Any, Any]) -> list[tuple[Key, str]]:
    """As the site file's check, where the rules are the camera's whole set (``--replace``)."""
    zones = sorted(name for name, rule in rules.items() if isinstance(rule, dict) and rule.get("type") == "zone")
    return [
        (
            (camera, name, "zone"),
            f"names zone {rule['zone']!r}, which is not a zone rule here (zones: {zones or 'none'})",
        )
        for name, rule in rules.items()
        if isinstance(rule, dict) and isinstance(rule.get("zone"), str) and rule["zone"] not in zones
    ]


def _explained(where: Key, error: ErrorDetails, rule: Any) -> tuple[Key, str]:
    """pydantic's error, at the YAML's key, in the site file's words."""
    kind, key = error["type"], (*where, *_yaml_key(tuple(error["loc"]), rule))
    node = _at(rule, key[len(where) :])
    what = "an action" if len(key) > len(where) and "actions" in key[len(where) :] else "a rule"
    types = ", ".join(_types(what))
    if kind == "union_tag_invalid" and isinstance(node, dict):
        return (*key, "type"), f"{what.split()[1]} type {node.get('type')!r} is not one of: {types}"
    if kind == "union_tag_not_found":
        keys = [name for name in node if isinstance(name, str)] if isinstance(node, dict) else []
        misspelt = difflib.get_close_matches("type", keys, n=1, cutoff=0.6)
        if misspelt:  # `tpye:`, at its own line
            return (*key, misspelt[0]), f"unknown key (did you mean 'type'?); {what} needs a type: one of {types}"
        return key, f"{what} needs a type: one of {types}"
    if kind == "extra_forbidden":
        return key, "unknown key (check its spelling)"
    message = error["msg"].removeprefix("Value error, ")
    value = error.get("input")
    if kind != "missing" and isinstance(value, str | int | float) and not isinstance(value, bool):
        message += f" (got {value!r:.60})"
    return key, message


def _types(what: str) -> list[str]:
    """The ``type`` values a rule or an action may have, from the models (a new kind is listed by itself)."""
    union = get_args(Rule)[0]
    if what == "an action":
        action = get_args(get_args(union)[0].model_fields["actions"].annotation)[0]
        union = get_args(action)[0]
    return [get_args(member.model_fields["type"].annotation)[0] for member in get_args(union)]


def _yaml_key(loc: Key, node: Any) -> Key:
    """``loc`` without the tags pydantic puts in it for a discriminated union (``zone`` in
    ``zone.polygon``): a tag comes right after the key of the mapping whose ``type`` it names."""
    key: Key = ()
    tagged: Any = None
    for part in loc:
        if isinstance(node, dict) and node.get("type") == part and tagged is not node:
            tagged = node
            continue
        key = (*key, part)
        node = _at(node, (part,))
    return key


def _at(node: Any, key: Key) -> Any:
    for part in key:
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            return None
    return node


def _is_name(value: object) -> bool:
    return isinstance(value, str) and re.fullmatch(NAME_PATTERN, value) is not None


def _key_lines(node: yaml.Node, key: Key, lines: dict[Key, int]) -> None:
    """The line of every key (and list item) under ``node``."""
    lines.setdefault(key, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            child = (*key, key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value))
            lines.setdefault(child, key_node.start_mark.line + 1)
            _key_lines(value_node, child, lines)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _key_lines(item, (*key, index), lines)


def _line(lines: dict[Key, int], key: Key) -> int:
    while key and key not in lines:
        key = key[:-1]
    return lines.get(key, 1)


def _dotted(key: Key) -> str:
    return ".".join(f"[{part}]" if isinstance(part, int) else str(part) for part in key).replace(".[", "[")

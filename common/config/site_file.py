"""Reading and rewriting one camera's rules in the site file, keeping its comments, order and quoting.

The file is edited with ruamel.yaml's round-trip mode: only the keys that changed are touched. Values
are handed out as written (``${VAR}`` not substituted), so a secret never reaches a page and an
unchanged value is written back exactly. The whole new file is validated with the same loader as
``edgesight config check`` before it replaces the old one; nothing is written when it does not validate.
Its writers are the console's rule editor and the fleet's ``update_rules`` job; what either may change is
decided first by :mod:`common.config.rule_policy`.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from common.config.loader import parse_config
from common.config.site import SiteConfig
from common.errors import ConfigError
from common.urls import REDACTED, redact

__all__ = ["Problem", "RulesRejected", "SavedRules", "SiteFile", "SiteFileError", "rule_changes", "save_record"]

# "file:line: key: message", as ConfigError words each problem
_PROBLEM = re.compile(r"^(?P<file>.*?):(?P<line>\d+): (?P<key>[^:]+): (?P<message>.*)$", re.DOTALL)
Problem = dict[str, Any]


class SiteFileError(Exception):
    """The site file cannot be read or written (missing, read-only, not a mapping)."""


class RulesRejected(Exception):
    """The edited site file does not validate; ``problems`` as ``{"key", "line", "message"}``."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p['key']}: {p['message']}" for p in problems))


@dataclasses.dataclass
class SavedRules:
    config: SiteConfig
    before: dict[str, Any]  # the camera's rules as they were written (JSON types)
    after: dict[str, Any]
    unshared_from: list[str]  # other places whose YAML anchor these rules were an alias of (left as they were)


# Checks a request against the camera's rules on disk (under the save lock); raises to refuse.
RulesPolicy = Callable[[dict[str, Any], dict[str, Any]], None]


def _yaml() -> YAML:
    yaml = YAML()  # round-trip
    yaml.preserve_quotes = True
    yaml.width = 4096  # never fold a long value onto a second line
    yaml.indent(mapping=2, sequence=4, offset=2)  # this project's site files; others' lists are re-indented
    yaml.representer.add_representer(type(None), _null)  # "null", as written, not an empty value
    return yaml


def _null(representer: Any, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


class SiteFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # one save at a time

    def rules(self, camera: str) -> dict[str, Any]:
        """The camera's rules as written in the file (JSON types); KeyError if the file has no such camera."""
        data = self._load()
        cameras = data.get("cameras") or {}
        if camera not in cameras:
            raise KeyError(camera)
        rules = (cameras[camera] or {}).get("rules") or {}
        plain: dict[str, Any] = json.loads(json.dumps(rules))
        return plain

    def replace_rules(self, camera: str, rules: dict[str, Any], policy: RulesPolicy | None = None) -> SavedRules:
        """Makes ``rules`` the camera's rules once ``policy`` (given the rules on disk) accepts them;
        returns the new validated config and what changed. Raises RulesRejected (nothing written),
        KeyError (no such camera), SiteFileError, or whatever ``policy`` raises."""
        with self._lock:
            data = self._load()
            cameras = data.get("cameras")
            if not isinstance(cameras, dict) or camera not in cameras:
                raise KeyError(camera)
            if cameras[camera] is None:
                cameras[camera] = CommentedMap()
            entry = cameras[camera]
            if not isinstance(rules, dict) or not all(isinstance(body, dict) for body in rules.values()):
                raise RulesRejected([_problem_at(camera, "", "rules must map each rule's name to its settings")])
            node = entry.get("rules")
            before: dict[str, Any] = json.loads(json.dumps(node or {}))
            if policy is not None:
                policy(before, rules)
            unshared_from: list[str] = []
            if isinstance(node, (CommentedMap, CommentedSeq)):
                unshared_from = _sharing(data, node, ("cameras", camera, "rules"))
            if not rules:
                entry.pop("rules", None)
            else:
                if not isinstance(node, CommentedMap) or unshared_from:
                    # An alias (``rules: *dock_rules``) is one node in two places: editing it in place
                    # would change the other camera too. This camera gets its own copy.
                    node = entry["rules"] = _to_yaml(before if isinstance(node, CommentedMap) else {})
                _update_mapping(node, rules)
            out = io.StringIO()
            _yaml().dump(data, out)
            text = out.getvalue()
            if _read_back(text, camera) != json.loads(json.dumps(rules)):
                # ruamel writes, PyYAML reads: a string they disagree on ("?x" in a flow list, U+0085)
                # would be saved as something other than what was validated and audited.
                raise RulesRejected(
                    [
                        _problem_at(
                            camera, "", "a value cannot be written to YAML as sent (quote-like or control characters?)"
                        )
                    ]
                )
            try:
                config: SiteConfig = parse_config(text, str(self.path))
            except ConfigError as exc:
                raise RulesRejected([_parse_problem(p) for p in exc.problems]) from None
            self.write_text(text)
            return SavedRules(config, before, json.loads(json.dumps(rules)), unshared_from)

    def _load(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteFileError(f"cannot read the site file {self.path}: {exc}") from None
        data = _yaml().load(text)
        if not isinstance(data, CommentedMap):
            raise SiteFileError(f"{self.path} is not a mapping of sections")
        return data

    def write_text(self, text: str) -> None:
        """Atomically where the folder allows (a temporary file renamed over the old); in place where the
        file itself is a mount (docker's single-file bind mounts refuse a rename over them)."""
        if not os.access(self.path, os.W_OK):
            raise SiteFileError(
                f"the site file {self.path} is read-only here (under k3s it is a ConfigMap: change it there)"
            )
        mode = self.path.stat().st_mode & 0o7777
        descriptor, temporary = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as out:
                out.write(text)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(temporary, mode)
            try:
                os.replace(temporary, self.path)
                return
            except OSError as exc:
                if exc.errno not in (errno.EBUSY, errno.EXDEV, errno.EPERM):
                    raise
        except PermissionError:  # the folder is not writable: the file itself is
            pass
        finally:
            Path(temporary).unlink(missing_ok=True)
        with self.path.open("r+", encoding="utf-8") as out:
            out.write(text)
            out.truncate()
            out.flush()
            os.fsync(out.fileno())


def _read_back(text: str, camera: str) -> Any:
    """The camera's rules as the services will read the new text (PyYAML, placeholders unexpanded)."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    rules = ((data.get("cameras") or {}).get(camera) or {}).get("rules") if isinstance(data, dict) else None
    return json.loads(json.dumps(rules or {}))


def _sharing(data: Any, subtree: Any, own: tuple[str, ...]) -> list[str]:
    """Other paths in the document that reach ``subtree`` or any node inside it (YAML aliases, merges)."""
    inside = {id(node) for _, node in _nodes(subtree, own)}
    others = sorted(
        (path for path, node in _nodes(data, ()) if id(node) in inside and path[: len(own)] != own),
        key=lambda path: tuple(map(str, path)),
    )
    tops: list[tuple[Any, ...]] = []
    for path in others:  # sorted: a path comes after its prefixes
        if not any(path[: len(top)] == top for top in tops):
            tops.append(path)
    return [".".join(map(str, path)) for path in tops]


def _nodes(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """Every mapping and sequence in the document with its path (an alias is reached once per place)."""
    stack = [(path, node)]
    while stack:
        path, node = stack.pop()
        if len(path) > 32:  # a recursive alias; no site file nests this deep
            continue
        if isinstance(node, dict):
            yield path, node
            stack.extend(((*path, key), value) for key, value in node.items())
        elif isinstance(node, list):
            yield path, node
            stack.extend(((*path, index), value) for index, value in enumerate(node))


def _update_mapping(node: CommentedMap, wanted: dict[str, Any]) -> None:
    """Changes ``node`` into ``wanted`` key by key, so comments and order of what stays are kept."""
    for key in [key for key in node if key not in wanted]:
        del node[key]
    for key, value in wanted.items():
        current = node.get(key)
        if key in node and json.loads(json.dumps(current)) == value:
            continue  # unchanged: keep its formatting and comments
        if isinstance(current, CommentedMap) and isinstance(value, dict):
            _update_mapping(current, value)
        else:
            node[key] = _to_yaml(value)


def _to_yaml(value: Any) -> Any:
    """Lists of numbers and points in flow style (``[[0.1, 0.5], [0.9, 0.5]]``), as people write them."""
    if isinstance(value, dict):
        mapping = CommentedMap()
        for key, item in value.items():
            mapping[key] = _to_yaml(item)
        return mapping
    if isinstance(value, list):
        sequence = CommentedSeq([_to_yaml(item) for item in value])
        if all(not isinstance(item, dict) for item in value):
            sequence.fa.set_flow_style()
        return sequence
    return value


def _problem_at(camera: str, rule: str, message: str) -> Problem:
    key = f"cameras.{camera}.rules" + (f".{rule}" if rule else "")
    return {"key": key, "line": None, "message": message}


def _parse_problem(text: str) -> Problem:
    match = _PROBLEM.match(text)
    if match is None:
        return {"key": "", "line": None, "message": text}
    return {"key": match["key"], "line": int(match["line"]), "message": match["message"]}


_SECRET_KEY = re.compile(r"pass|secret|token|key|credential|auth", re.IGNORECASE)


def rule_changes(camera: str, before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """Key-level differences ``{"key", "old", "new"}`` between two versions of a camera's rules, as
    written (placeholders unexpanded); URLs without their secrets and secret-named keys as ``***``."""
    old, new = _flatten(before, f"cameras.{camera}.rules"), _flatten(after, f"cameras.{camera}.rules")
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            changes.append({"key": key, "old": _shown(key, old.get(key)), "new": _shown(key, new.get(key))})
    return changes


_ABSENT = object()


def save_record(camera: str, saved: SavedRules) -> dict[str, Any]:
    """The audit record's detail of a save of ``camera``'s rules (``config.save`` on
    ``cameras.<camera>.rules``, from the console's editor or a fleet job): which rules came, went and
    changed, the YAML anchors the save left (``unshared_from``), and each key's change (``changes``).

    >>> saved = SavedRules(None, {"door": {"line": [[0, 0], [1, 1]]}}, {"bay": {"zone": "a"}}, [])
    >>> record = save_record("dock", saved)
    >>> record["added"], record["removed"], record["changed"], record["unshared_from"], len(record["changes"])
    ('bay', 'door', '', None, 2)
    """
    before, after = saved.before, saved.after
    return {
        "added": ",".join(sorted(set(after) - set(before))),
        "removed": ",".join(sorted(set(before) - set(after))),
        "changed": ",".join(sorted(r for r in set(after) & set(before) if after[r] != before[r])),
        "unshared_from": ",".join(saved.unshared_from) or None,
        "changes": rule_changes(camera, before, after),
    }


def _flatten(value: Any, prefix: str) -> dict[str, Any]:
    """Leaves by dotted key; a list of numbers (a point, a line, a polygon) is one leaf."""
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat |= _flatten(item, f"{prefix}.{key}")
        return flat
    if isinstance(value, list) and any(isinstance(item, dict) for item in value):
        flat = {}
        for index, item in enumerate(value):
            flat |= _flatten(item, f"{prefix}[{index}]")
        return flat
    return {prefix: value}


def _shown(key: str, value: Any) -> Any:
    if value is None:
        return None
    last = key.rsplit(".", 1)[-1]
    if _SECRET_KEY.search(last):
        return REDACTED
    if last == "argv" and isinstance(value, list):  # the program, not its arguments (a token may be one)
        return [value[0], REDACTED] if len(value) > 1 else value
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [redact(item) if isinstance(item, str) else item for item in value]
    return value

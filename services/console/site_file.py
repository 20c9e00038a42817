"""Reading and rewriting one camera's rules in the site file, keeping its comments, order and quoting.

The file is edited with ruamel.yaml's round-trip mode: only the keys that changed are touched. Values
are handed out as written (``${VAR}`` not substituted), so a secret never reaches a page and an
unchanged value is written back exactly. The whole new file is validated with the same loader as
``edgesight config check`` before it replaces the old one; nothing is written when it does not validate.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from common.config import SiteConfig, parse_config
from common.errors import ConfigError

__all__ = ["Problem", "RulesRejected", "SiteFile", "SiteFileError"]

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

    def replace_rules(self, camera: str, rules: dict[str, Any]) -> SiteConfig:
        """Makes ``rules`` the camera's rules; returns the new validated config. Raises RulesRejected
        (nothing written), KeyError (no such camera) or SiteFileError."""
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
            if not rules:
                entry.pop("rules", None)
            else:
                node = entry.get("rules")
                if not isinstance(node, CommentedMap):
                    node = entry["rules"] = CommentedMap()
                _update_mapping(node, rules)
            out = io.StringIO()
            _yaml().dump(data, out)
            text = out.getvalue()
            try:
                config: SiteConfig = parse_config(text, str(self.path))
            except ConfigError as exc:
                raise RulesRejected([_parse_problem(p) for p in exc.problems]) from None
            self._write(text)
            return config

    def _load(self) -> Any:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SiteFileError(f"cannot read the site file {self.path}: {exc}") from None
        data = _yaml().load(text)
        if not isinstance(data, CommentedMap):
            raise SiteFileError(f"{self.path} is not a mapping of sections")
        return data

    def _write(self, text: str) -> None:
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

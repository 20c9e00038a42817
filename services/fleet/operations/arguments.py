"""Reading a job's arguments: each operation takes what it needs by name and type, and a job whose
arguments are not what the operation needs fails with which one (``common.fleet.signing.check_args``
has checked the shapes of a signed document already; this is what the operation relies on)."""

from __future__ import annotations

import re
from typing import Any, TypeVar

from contracts.messages import NAME_PATTERN
from services.fleet.context import JobFailed

__all__ = ["argument", "flag_argument", "name_argument", "names_map", "optional_argument"]

Wanted = TypeVar("Wanted")


def argument(args: dict[str, Any], key: str, kind: type[Wanted]) -> Wanted:
    """``args[key]`` if it is a ``kind``.

    >>> argument({"service": "rules"}, "service", str)
    'rules'
    >>> argument({}, "service", str)
    Traceback (most recent call last):
    ...
    services.fleet.context.JobFailed: malformed: args.service is missing
    """
    value = optional_argument(args, key, kind)
    if value is None:
        raise JobFailed(f"malformed: args.{key} is missing")
    return value


def optional_argument(args: dict[str, Any], key: str, kind: type[Wanted]) -> Wanted | None:
    """``args[key]`` if it is a ``kind``, or None where it is missing or null."""
    value = args.get(key)
    if value is None or (isinstance(value, kind) and not isinstance(value, bool)):
        return value
    raise JobFailed(f"malformed: args.{key} is not a {kind.__name__}")


def flag_argument(args: dict[str, Any], key: str) -> bool:
    """``args[key]`` where it is true or false; False where it is missing.

    >>> flag_argument({"replace": True}, "replace"), flag_argument({}, "replace")
    (True, False)
    >>> flag_argument({"replace": "yes"}, "replace")
    Traceback (most recent call last):
    ...
    services.fleet.context.JobFailed: malformed: args.replace is not true or false
    """
    value = args.get(key, False)
    if isinstance(value, bool):
        return value
    raise JobFailed(f"malformed: args.{key} is not true or false")


def name_argument(args: dict[str, Any], key: str) -> str:
    """A name that becomes part of a path, a topic or a metric label: letters, digits, ``_ . -``."""
    value = argument(args, key, str)
    if not re.search(NAME_PATTERN, value):
        raise JobFailed(f"malformed: args.{key} is not a plain name (letters, digits, _ . -)")
    return value


def names_map(args: dict[str, Any], key: str) -> dict[str, str]:
    """A mapping of plain names to plain names (install_app's ``cameras``: node -> camera)."""
    value = argument(args, key, dict)
    for name, item in value.items():
        if not (isinstance(name, str) and isinstance(item, str)):
            raise JobFailed(f"malformed: args.{key} maps names to names")
        if not (re.search(NAME_PATTERN, name) and re.search(NAME_PATTERN, item)):
            raise JobFailed(f"malformed: args.{key}: {name[:64]!r} -> {item[:64]!r} is not plain names")
    return value

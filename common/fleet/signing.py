"""Signed job documents: what an operator's key allows a site to do, checked before anything runs.

A document (what AWS IoT Jobs calls the job document) names one operation, its arguments, the sites
(thing names) it is for, the operator's key id, a validity window, a nonce and, optionally, the job id
it is for (``job_id``: a copy retained under another id is refused, not run in the operator's job's
place); ``signature`` is ed25519 over the canonical JSON of every other key. A site runs a document
only when the signer is among its ``fleet.trusted_operators``, the signature holds, the window is open,
it names this site and its nonce was never seen (the ledger's part, :mod:`common.fleet.ledger`).

A refusal says whether the document was a trusted operator's for this site (``JobRefused.verified``):
only those are worth remembering and answering in full; the others (unsigned, an unknown key, a bad
signature, malformed, another site's) are what anyone on the broker can send by the thousand.

>>> from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
>>> from common.trust.keys import key_id
>>> key = Ed25519PrivateKey.generate()
>>> doc = sign_document("restart_service", {"service": "rules"}, ["site-a"], key, now=1_800_000_000)
>>> doc["issued_at"], doc["expires_at"]
('2027-01-15T08:00:00Z', '2027-01-16T08:00:00Z')
>>> job = verify_document(doc, {key_id(key.public_key()): key.public_key()}, "site-a", now=1_800_000_060)
>>> job.operation, job.args
('restart_service', {'service': 'rules'})
>>> try:
...     verify_document(doc, {key_id(key.public_key()): key.public_key()}, "site-b", now=1_800_000_060)
... except JobRefused as refused:
...     print(refused.reason)
not for this site
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.config._types import NAME_PATTERN, NAME_RULE
from common.errors import EdgeSightError, PackageError
from common.fleet.topics import JOB_ID_PATTERN
from common.trust.keys import key_id
from common.trust.package import check_identity, check_name

__all__ = [
    "CLOCK_SKEW_S",
    "JOB_SCHEMA",
    "MAX_DOCUMENT_BYTES",
    "MAX_TTL_S",
    "OPERATIONS",
    "JobRefused",
    "SignedJob",
    "canonical",
    "check_args",
    "format_time",
    "parse_time",
    "sign_document",
    "verify_document",
]

JOB_SCHEMA = 1
OPERATIONS = ("install_model", "rollback_model", "install_app", "update_rules", "restart_service", "set_desired")
MAX_DOCUMENT_BYTES = 32 * 1024  # AWS IoT Jobs' limit on a job document
MAX_TTL_S = 30 * 86400  # the ledger keeps a nonce until its document expires: a bounded life bounds the ledger
CLOCK_SKEW_S = 300.0  # an operator's laptop and a site's clock may disagree this much
_KEYS = {
    "edgesight_job", "operation", "args", "targets", "operator", "issued_at", "expires_at", "nonce", "job_id",
    "signature",
}  # fmt: skip
_JOB_ID = re.compile(JOB_ID_PATTERN)
_NONCE = re.compile(r"[0-9a-f]{32}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_URL = re.compile(r"(s3|https?)://[^\s]{1,2000}")
_TARGET = re.compile(r"[A-Za-z0-9:_.-]{1,128}")  # AWS IoT's thing names, and '.' of site names
_NAME = re.compile(NAME_PATTERN)  # fullmatch: `$` alone would allow a trailing newline
_SERVICE = re.compile(r"[a-z][a-z0-9_-]{0,31}(@[A-Za-z0-9_][A-Za-z0-9_.-]{0,63})?")
_OPERATOR = re.compile(r"[0-9a-f]{16}")  # common.trust.keys.key_id
_MAX_TARGETS = 1000
_MAX_DEPTH = 8  # args nest at most this deep (update_rules: cameras/camera/rule/settings/...)


class JobRefused(EdgeSightError):
    """A document a site will not run; ``reason`` is short, fit for a job's statusDetails and the audit.
    ``verified``: the document was a trusted operator's, for this site (refused later: expired, not yet
    valid, replayed, not allowed here); False when nothing says anyone trusted sent it."""

    def __init__(self, reason: str, *, verified: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.verified = verified


@dataclasses.dataclass(frozen=True)
class SignedJob:
    """A verified document. Times are epoch seconds."""

    operation: str
    args: dict[str, Any]
    operator: str
    nonce: str
    issued_at: float
    expires_at: float
    targets: tuple[str, ...] = ()
    job_id: str | None = None  # the job id the signature binds it to; None: any (AWS console-made jobs)


def canonical(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every key but ``signature``, sorted, without spaces, UTF-8.

    >>> canonical({"b": 1, "a": "é", "signature": "x"})
    b'{"a":"\\xc3\\xa9","b":1}'
    """
    unsigned = {key: value for key, value in doc.items() if key != "signature"}
    return json.dumps(unsigned, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def format_time(epoch: float) -> str:
    return datetime.fromtimestamp(int(epoch), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: object) -> float:
    """``2026-11-29T20:00:00Z`` -> epoch seconds; anything else is ``malformed``."""
    if not isinstance(text, str) or not _TIME.fullmatch(text):
        raise JobRefused("malformed: a time is not YYYY-MM-DDTHH:MM:SSZ")
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    except ValueError:
        raise JobRefused("malformed: a time is not a date") from None


def sign_document(
    operation: str,
    args: Mapping[str, Any],
    targets: list[str] | tuple[str, ...],
    key: Ed25519PrivateKey,
    *,
    ttl_s: float = 86400,
    now: float | None = None,
    job_id: str | None = None,
) -> dict[str, Any]:
    """A document for ``targets`` (thing names), valid from ``now`` for ``ttl_s``, and (``job_id``
    given) for that job id only; the same checks a site makes refuse a malformed one here, before it
    leaves the operator (:class:`JobRefused`)."""
    if not 0 < ttl_s <= MAX_TTL_S:
        raise JobRefused(f"malformed: ttl_s must be over 0 and at most {MAX_TTL_S} (30 days)")
    issued = int(time.time() if now is None else now)
    doc: dict[str, Any] = {
        "edgesight_job": JOB_SCHEMA,
        "operation": operation,
        "args": dict(args),
        "targets": list(targets),
        "operator": key_id(key.public_key()),
        "issued_at": format_time(issued),
        "expires_at": format_time(issued + math.ceil(ttl_s)),
        "nonce": secrets.token_hex(16),
    }
    if job_id is not None:
        doc["job_id"] = job_id
    _check_fields(doc)
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    _check_size(doc)
    return doc


def verify_document(
    doc: object,
    trusted: Mapping[str, Ed25519PublicKey],
    thing: str,
    *,
    now: float | None = None,
    skew_s: float = CLOCK_SKEW_S,
) -> SignedJob:
    """The job ``doc`` allows on ``thing``, or :class:`JobRefused` with the reason: ``unsigned``,
    ``unknown operator <id>``, ``bad signature``, ``expired``, ``not yet valid``, ``not for this site``,
    ``malformed: ...``. The signature is checked before anything it covers is believed. Whether the
    document is bound to the job id it came under is the caller's to check (``SignedJob.job_id``)."""
    if not isinstance(doc, Mapping):
        raise JobRefused("malformed: a document is a JSON object")
    _check_size(doc)
    signature = doc.get("signature")
    if signature is None or signature == "":
        raise JobRefused("unsigned")
    operator = doc.get("operator")
    if not isinstance(operator, str) or not isinstance(signature, str):
        raise JobRefused("malformed: operator and signature are strings")
    if operator not in trusted:
        shown = operator if _OPERATOR.fullmatch(operator) else repr(operator[:20])
        raise JobRefused(f"unknown operator {shown}")
    try:
        raw = base64.b64decode(signature, validate=True)
        trusted[operator].verify(raw, canonical(doc))
    except (binascii.Error, ValueError, InvalidSignature):
        raise JobRefused("bad signature") from None
    issued_at, expires_at = _check_fields(doc)
    current = time.time() if now is None else now
    if thing not in doc["targets"]:  # another site's, copied here: not this site's operator's wish
        raise JobRefused("not for this site")
    if issued_at > current + skew_s:
        raise JobRefused("not yet valid", verified=True)
    if current >= expires_at:
        raise JobRefused("expired", verified=True)
    return SignedJob(
        operation=doc["operation"],
        args=dict(doc["args"]),
        operator=operator,
        nonce=doc["nonce"],
        issued_at=issued_at,
        expires_at=expires_at,
        targets=tuple(doc["targets"]),
        job_id=doc.get("job_id"),
    )


def _check_size(doc: Mapping[str, Any]) -> None:
    try:
        size = len(canonical(doc))
    except (TypeError, ValueError, RecursionError):
        raise JobRefused("malformed: not plain JSON") from None
    if size > MAX_DOCUMENT_BYTES:
        raise JobRefused(f"malformed: over {MAX_DOCUMENT_BYTES} bytes")


def _check_fields(doc: Mapping[str, Any]) -> tuple[float, float]:
    """Every key's type and bounds; returns (issued_at, expires_at) as epoch seconds."""
    unknown = sorted(str(key)[:40] for key in set(doc) - _KEYS)
    if unknown:
        raise JobRefused(f"malformed: unknown key {unknown[0]!r}")
    if doc.get("edgesight_job") != JOB_SCHEMA or isinstance(doc.get("edgesight_job"), bool):
        raise JobRefused(f"malformed: edgesight_job is not {JOB_SCHEMA}")
    if not isinstance(doc.get("nonce"), str) or not _NONCE.fullmatch(doc["nonce"]):
        raise JobRefused("malformed: nonce is not 32 hex digits")
    if not isinstance(doc.get("operator"), str) or not _OPERATOR.fullmatch(doc["operator"]):
        raise JobRefused("malformed: operator is not a key id (16 hex digits)")
    targets = doc.get("targets")
    if not isinstance(targets, list) or not 0 < len(targets) <= _MAX_TARGETS:
        raise JobRefused(f"malformed: targets is a list of 1 to {_MAX_TARGETS} thing names")
    if not all(isinstance(target, str) and _TARGET.fullmatch(target) for target in targets):
        raise JobRefused("malformed: a target is not a thing name")
    job_id = doc.get("job_id")
    if job_id is not None and not (isinstance(job_id, str) and _JOB_ID.fullmatch(job_id)):
        raise JobRefused("malformed: job_id is not a job id (1 to 64 letters, digits, _ -)")
    issued_at, expires_at = parse_time(doc.get("issued_at")), parse_time(doc.get("expires_at"))
    if not 0 < expires_at - issued_at <= MAX_TTL_S:
        raise JobRefused("malformed: expires_at is not within 30 days after issued_at")
    check_args(doc.get("operation"), doc.get("args"))
    return issued_at, expires_at


def check_args(operation: object, args: object) -> None:
    """The arguments' shape for ``operation`` (the operation's own module checks what they mean: a
    service that exists, a rule the console's policy allows); :class:`JobRefused` ``malformed: ...``
    otherwise. Names that become file names (models, versions, apps) are plain tokens."""
    if operation not in OPERATIONS:
        raise JobRefused(f"malformed: operation is not one of {', '.join(OPERATIONS)}")
    if not isinstance(args, dict):
        raise JobRefused("malformed: args is a JSON object")
    if _depth(args) > _MAX_DEPTH:
        raise JobRefused(f"malformed: args nest deeper than {_MAX_DEPTH}")
    expected = _ARGS[str(operation)]
    missing = sorted(set(expected) - set(args) - _OPTIONAL_ARGS.get(str(operation), set()))
    if missing:
        raise JobRefused(f"malformed: {operation} args lack {missing[0]!r}")
    extra = sorted(str(key)[:40] for key in set(args) - set(expected))
    if extra:
        raise JobRefused(f"malformed: {operation} args have no {extra[0]!r}")
    for key, check in expected.items():
        if key not in args:  # an optional one (required ones are checked above)
            continue
        problem = check(args[key])
        if problem:
            raise JobRefused(f"malformed: args.{key} {problem}")
    if operation in ("install_model", "rollback_model"):
        _identity(args["name"], args["version"])
    if operation == "install_app":
        _identity(args["app"], None)
    if operation == "set_desired":
        for name, version in args["models"].items():
            _identity(name, version)


def _depth(value: object, level: int = 0) -> int:
    if level > _MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(item, level + 1) for item in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(item, level + 1) for item in value), default=level + 1)
    return level


def _identity(name: object, version: object) -> None:
    try:
        check_name(name) if version is None else check_identity(name, version)
    except PackageError as exc:
        raise JobRefused(f"malformed: {exc}"[:200]) from None


def _text(value: object) -> str | None:
    return None if isinstance(value, str) and 0 < len(value) <= 256 else "is a string of 1 to 256 characters"


def _name(value: object) -> str | None:
    return None if isinstance(value, str) and _NAME.fullmatch(value) else NAME_RULE


def _service(value: object) -> str | None:
    ok = isinstance(value, str) and _SERVICE.fullmatch(value)
    return None if ok else "is a service name, or service@instance (ingest@east, inference@1)"


def _url(value: object) -> str | None:
    return None if isinstance(value, str) and _URL.fullmatch(value) else "is an s3://, https:// or http:// URL"


def _sha256(value: object) -> str | None:
    return None if isinstance(value, str) and _SHA256.fullmatch(value) else "is 64 lowercase hex digits"


def _text_or_null(value: object) -> str | None:
    return None if value is None else _text(value)


def _object(value: object) -> str | None:
    return None if isinstance(value, dict) else "is a JSON object"


def _boolean(value: object) -> str | None:
    return None if isinstance(value, bool) else "is true or false"


def _map_of(check: Callable[[object], str | None]) -> Callable[[object], str | None]:
    """A JSON object of at most 256 entries whose keys are names and whose values pass ``check``."""

    def checked(value: object) -> str | None:
        if not isinstance(value, dict) or len(value) > 256:
            return "is a JSON object of at most 256 entries"
        for key, item in value.items():
            problem = _name(key) or check(item)
            if problem:
                return f"[{str(key)[:40]!r}]: {problem}"
        return None

    return checked


def _installed_package(value: object) -> str | None:
    """A package of the site's model store, ``<name>.espkg``: never a path."""
    if not isinstance(value, str) or not value.endswith(".espkg") or _name(value[: -len(".espkg")]):
        return "is <model name>.espkg, a package installed on the site"
    return None


# arguments an operation may leave out
_OPTIONAL_ARGS: dict[str, set[str]] = {"install_app": {"models"}, "update_rules": {"replace"}}

_ARGS: dict[str, dict[str, Callable[[object], str | None]]] = {
    "install_model": {"url": _url, "sha256": _sha256, "name": _name, "version": _text},
    "rollback_model": {"name": _name, "version": _text_or_null},
    "install_app": {
        "url": _url,
        "sha256": _sha256,
        "app": _name,
        "cameras": _map_of(_name),
        "models": _map_of(_installed_package),
    },
    # replace: the cameras' rules become exactly the given ones; without it they are merged into them
    "update_rules": {"cameras": _map_of(_map_of(_object)), "replace": _boolean},
    "restart_service": {"service": _service},
    "set_desired": {"models": _map_of(_text)},
}

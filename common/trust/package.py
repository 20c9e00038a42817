"""Signed model packages (``.espkg``): what a site trusts to run, in one file.

Layout — every byte is covered by the signature, directly or through a digest::

    ESPKG 1\\n
    <the index: one line of compact JSON>\\n
    <ed25519 signature of the index line: 128 lower-case hex digits>\\n
    <the archive: a gzip'd tar of the members>

The index names the package (``name``, ``version`` from its manifest), the signer's key id, the
archive's size and sha256, and every member's name, size and sha256 as stored. A package holds
``manifest.yaml`` (a model manifest, :mod:`common.models.manifest`), the model file(s) and labels. With a device key,
every member but the manifest is stored encrypted (AES-256-GCM, the member name as associated
data) under a random data key, which is wrapped for the device's x25519 key (ephemeral ECDH +
HKDF-SHA256 + AES-256-GCM) in the index (:mod:`common.trust.encryption`).

Opening checks, in this order, each failure a :class:`PackageError` that says which: the magic;
the signer among the trusted keys; the signature; the name and version (they name files in the
model store, see :func:`check_identity`); the archive's digest; then, while reading the
archive (in memory, never extracted to disk): member names (no absolute paths, no ``..``), types
(regular files only: no links), duplicates, and the bytes it expands to (at most what the index
declares, and at most ``max_bytes``); then every member against the index; then decryption. A
changed archive is still read, with the same limits, only to say *which* member changed.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import PackageError
from common.trust.encryption import decrypt_members, encrypt_members
from common.trust.keys import key_id
from contracts.messages import NAME_PATTERN

__all__ = [
    "MANIFEST",
    "Member",
    "Package",
    "build_package",
    "check_identity",
    "check_name",
    "open_package",
    "read_index",
    "seal",
]

MAGIC = b"ESPKG 1\n"
FORMAT = "edgesight-model-package/1"
MANIFEST = "manifest.yaml"
MAX_INDEX_BYTES = 1 << 20
MAX_MEMBERS = 256
DEFAULT_MAX_BYTES = 1 << 30
_SIGNATURE_LINE = re.compile(rb"[0-9a-f]{128}\n")
_NAME = re.compile(NAME_PATTERN)  # the camera and model names of the bus contracts
# a version names a file too; semver's build metadata ("1.2.0+cuda12") is allowed besides
_VERSION = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")


def check_name(name: object, label: str | None = None) -> None:
    """A package's name becomes a file name in the model store (``NAME.espkg``, ``NAME/``): a name
    like ``../../x`` or ``/etc/x`` would be written outside it, so it must be a plain token."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):  # fullmatch: `$` alone allows a trailing newline
        raise PackageError(
            f"{label + ': ' if label else ''}package name {name!r} is not 1-64 letters, digits, _ . - starting "
            "with a letter, digit or _ (a model name of contracts/README.md)"
        )


def check_identity(name: object, version: object, label: str | None = None) -> None:
    """Name and version of a package: both name files in the model store (``NAME/VERSION.espkg``)."""
    check_name(name, label)
    if not isinstance(version, str) or not _VERSION.fullmatch(version):
        raise PackageError(
            f"{label + ': ' if label else ''}package {name} version {version!r} is not 1-64 letters, digits, "
            "_ . + - starting with a letter, digit or _"
        )


@dataclasses.dataclass(frozen=True)
class Member:
    name: str
    size: int
    sha256: str
    encrypted: bool = False


@dataclasses.dataclass(frozen=True)
class Package:
    """A package whose signature, digests and members checked out; ``members`` hold plain bytes."""

    source: str
    name: str
    version: str
    signer: str
    created: str
    encrypted_for: str | None
    members: Mapping[str, bytes]
    index: Mapping[str, Any]

    @property
    def manifest(self) -> str:
        return self.members[MANIFEST].decode()

    def describe(self) -> list[str]:
        lines = [
            f"package  {self.name} {self.version}",
            f"signer   {self.signer}",
            f"created  {self.created}",
            f"encrypted for device key {self.encrypted_for}" if self.encrypted_for else "encrypted no",
        ]
        lines += [
            f"member   {m['name']} {m['size']} bytes sha256 {m['sha256'][:16]}"
            + (" encrypted" if m["encrypted"] else "")
            for m in self.index["members"]
        ]
        return lines


def build_package(
    members: Mapping[str, bytes],
    *,
    name: str,
    version: str,
    signing_key: Ed25519PrivateKey,
    encrypt_for: X25519PublicKey | None = None,
) -> bytes:
    """The bytes of a package holding ``members`` (``manifest.yaml`` among them), signed."""
    if MANIFEST not in members:
        raise PackageError(f"a package needs a {MANIFEST}")
    check_identity(name, version)
    for member in members:
        _check_name(member)
    encryption: dict[str, str] | None = None
    stored = dict(members)
    if encrypt_for is not None:  # the manifest stays readable: `models verify` shows what a package holds
        stored, encryption = encrypt_members(members, encrypt_for, readable=MANIFEST)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in sorted(stored):
            info = tarfile.TarInfo(member)
            info.size, info.mode, info.mtime = len(stored[member]), 0o644, 0
            tar.addfile(info, io.BytesIO(stored[member]))
    listing = [
        Member(m, len(stored[m]), hashlib.sha256(stored[m]).hexdigest(), encryption is not None and m != MANIFEST)
        for m in sorted(stored)
    ]
    return seal(gzip.compress(buffer.getvalue(), mtime=0), listing, name, version, signing_key, encryption)


def seal(
    archive: bytes,
    members: list[Member],
    name: str,
    version: str,
    signing_key: Ed25519PrivateKey,
    encryption: dict[str, str] | None = None,
) -> bytes:
    """Index and signature in front of an archive. Public so that tests can sign archives that
    ``build_package`` would never make (links, ``..``), as a careless or compromised signer might."""
    index = {
        "format": FORMAT,
        "name": name,
        "version": version,
        "created": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "signer": key_id(signing_key.public_key()),
        "archive": {"size": len(archive), "sha256": hashlib.sha256(archive).hexdigest()},
        "members": [dataclasses.asdict(m) for m in members],
        "encryption": encryption,
    }
    line = json.dumps(index, separators=(",", ":"), sort_keys=True).encode()
    return MAGIC + line + b"\n" + signing_key.sign(line).hex().encode() + b"\n" + archive


def open_package(
    source: Path | bytes,
    trusted: Mapping[str, Ed25519PublicKey],
    *,
    device_key: X25519PrivateKey | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    require_decryption: bool = True,
    label: str | None = None,
) -> Package:
    """The checked package, or PackageError naming the first thing wrong (see the module docstring).

    ``require_decryption=False`` checks an encrypted package without the device key (``models verify``):
    its encrypted members are then left out of ``members``."""
    label = label or (str(source) if isinstance(source, Path) else "package")
    index, archive = _signed_index(_read(source, label, max_bytes), trusted, label)
    listed = {m["name"]: m for m in index["members"]}
    members = _checked_members(archive, index["archive"], listed, label, max_bytes)
    encryption = index["encryption"]
    if encryption is not None:
        members = decrypt_members(members, listed, encryption, device_key, label, require_decryption)
    return Package(
        source=label,
        name=index["name"],
        version=index["version"],
        signer=index["signer"],
        created=index["created"],
        encrypted_for=encryption["recipient"] if encryption else None,
        members=members,
        index=index,
    )


def read_index(path: Path) -> dict[str, Any]:
    """``path``'s index as the package says it, NOT verified (neither signer nor signature nor archive):
    for naming a package that is verified where it is installed (``edgesight fleet deploy model``). Its
    name and version are checked as :func:`check_identity` does; PackageError says what is wrong."""
    label = str(path)
    try:
        with path.open("rb") as file:
            head = file.read(len(MAGIC) + MAX_INDEX_BYTES)
    except OSError as exc:
        raise PackageError(f"{label}: {exc.strerror or exc}") from None
    index = _parse_index(head[len(MAGIC) : _index_end(head, label)], label)
    check_identity(index["name"], index["version"], label)
    return index


def _index_end(data: bytes, label: str) -> int:
    """Where the index line of a package's ``data`` ends (its newline), after the magic."""
    if not data.startswith(MAGIC):
        raise PackageError(f"{label}: not an EdgeSight model package (no {MAGIC[:-1].decode()!r} header)")
    end = data.find(b"\n", len(MAGIC), len(MAGIC) + MAX_INDEX_BYTES)
    if end < 0:
        raise PackageError(f"{label}: the index line is missing or longer than {MAX_INDEX_BYTES} bytes")
    return end


def _signed_index(data: bytes, trusted: Mapping[str, Ed25519PublicKey], label: str) -> tuple[dict[str, Any], bytes]:
    """The index, once its signer is trusted, its signature holds and its name and version are safe;
    and the archive after it (not yet checked)."""
    end = _index_end(data, label)
    line = data[len(MAGIC) : end]
    signature_line = data[end + 1 : end + 130]
    if not _SIGNATURE_LINE.fullmatch(signature_line):
        raise PackageError(f"{label}: the signature line is malformed (expected 128 lower-case hex digits)")
    index = _parse_index(line, label)
    signer = index["signer"]
    if not trusted:
        raise PackageError(f"{label}: no trusted keys to check its signer {signer} against (site.trusted_keys)")
    key = trusted.get(signer)
    if key is None:
        raise PackageError(
            f"{label}: signed by key {signer}, which is not a trusted key (trusted: {', '.join(sorted(trusted))})"
        )
    try:
        key.verify(bytes.fromhex(signature_line[:-1].decode()), line)
    except InvalidSignature:
        raise PackageError(
            f"{label}: bad signature: the index was changed after signing, or key {signer} did not sign it"
        ) from None
    check_identity(index["name"], index["version"], label)  # a trusted key may still sign a careless name
    return index, data[end + 130 :]


def _checked_members(
    archive: bytes,
    expected: Mapping[str, Any],
    listed: Mapping[str, Mapping[str, Any]],
    label: str,
    max_bytes: int,
) -> dict[str, bytes]:
    """The archive's members (as stored: encrypted ones still encrypted), each as the index lists it."""
    declared = sum(m["size"] for m in listed.values())
    if declared > max_bytes:
        raise PackageError(f"{label}: its members add up to {declared} bytes, over the limit of {max_bytes}")
    if len(archive) != expected["size"] or hashlib.sha256(archive).hexdigest() != expected["sha256"]:
        changed = f"{label}: the archive was changed after signing"
        try:  # read only to say what changed; refused either way
            _compare(_read_archive(archive, label, max_bytes), listed, label)
        except PackageError as exc:
            raise PackageError(f"{changed}: {str(exc).removeprefix(f'{label}: ')}") from None
        raise PackageError(f"{changed} (its digest differs from the index; every member still matches)")
    members = _read_archive(archive, label, min(max_bytes, declared + 2048 * (len(listed) + 1) + 20480))
    _compare(members, listed, label)
    if MANIFEST not in members:
        raise PackageError(f"{label}: no {MANIFEST} in the package")
    return members


def _read(source: Path | bytes, label: str, max_bytes: int) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        size = source.stat().st_size
        if size > max_bytes + MAX_INDEX_BYTES:
            raise PackageError(f"{label}: {size} bytes, over the limit of {max_bytes} (site.max_package_mb)")
        return source.read_bytes()
    except OSError as exc:
        raise PackageError(f"{label}: {exc.strerror or exc}") from None


def _parse_index(line: bytes, label: str) -> dict[str, Any]:
    try:
        index = json.loads(line)
        ok = (
            isinstance(index, dict)
            and index.get("format") == FORMAT
            and all(isinstance(index.get(k), str) for k in ("name", "version", "signer", "created"))
            and isinstance(index.get("archive", {}).get("size"), int)
            and isinstance(index.get("archive", {}).get("sha256"), str)
            and isinstance(index.get("members"), list)
            and all(
                isinstance(m, dict)
                and isinstance(m.get("name"), str)
                and isinstance(m.get("size"), int)
                and m["size"] >= 0
                and isinstance(m.get("sha256"), str)
                and isinstance(m.get("encrypted"), bool)
                for m in index["members"]
            )
            and (index.get("encryption") is None or isinstance(index["encryption"], dict))
        )
    except (ValueError, AttributeError):
        ok = False
    if not ok:
        raise PackageError(f"{label}: the index is unreadable (not a {FORMAT} index)")
    return index  # type: ignore[no-any-return]


def _check_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise PackageError(f"member {name!r}: an absolute path or one with '..'; members are plain relative paths")
    if str(path) != name:
        raise PackageError(f"member {name!r}: not a normalised relative path (write {str(path)!r})")


class _Bounded(io.RawIOBase):
    """A stream that refuses to yield more than ``limit`` bytes: what stops a decompression bomb."""

    def __init__(self, inner: io.BufferedIOBase, limit: int, label: str) -> None:
        self.inner, self.left, self.limit, self.label = inner, limit, limit, label

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.inner.read(min(len(buffer), self.left + 1))
        if len(data) > self.left:
            raise PackageError(f"{self.label}: the archive expands past {self.limit} bytes; refused")
        self.left -= len(data)
        buffer[: len(data)] = data
        return len(data)


_TYPES = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE: "a directory"}


def _read_archive(archive: bytes, label: str, limit: int) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    try:
        stream = io.BufferedReader(_Bounded(gzip.GzipFile(fileobj=io.BytesIO(archive), mode="rb"), limit, label))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                try:
                    _check_name(info.name)
                except PackageError as exc:
                    raise PackageError(f"{label}: {exc}") from None
                if not info.isreg():
                    kind = _TYPES.get(info.type, f"a special file (tar type {info.type!r})")
                    target = f" to {info.linkname!r}" if info.issym() or info.islnk() else ""
                    raise PackageError(f"{label}: member {info.name!r} is {kind}{target}; packages hold regular files")
                if info.name in members:
                    raise PackageError(f"{label}: member {info.name!r} appears twice")
                if len(members) >= MAX_MEMBERS:
                    raise PackageError(f"{label}: more than {MAX_MEMBERS} members")
                extracted = tar.extractfile(info)
                assert extracted is not None  # a regular file
                members[info.name] = extracted.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise PackageError(f"{label}: the archive is corrupt: {exc}") from None
    return members


def _compare(members: Mapping[str, bytes], listed: Mapping[str, Mapping[str, Any]], label: str) -> None:
    for name, data in members.items():
        entry = listed.get(name)
        if entry is None:
            raise PackageError(f"{label}: member {name!r} is not in the signed index")
        digest = hashlib.sha256(data).hexdigest()
        if digest != entry["sha256"] or len(data) != entry["size"]:
            raise PackageError(
                f"{label}: member {name!r} changed: sha256 {digest[:16]}, the signed index says {entry['sha256'][:16]}"
            )
    missing = sorted(set(listed) - set(members))
    if missing:
        raise PackageError(f"{label}: indexed member {missing[0]!r} is missing from the archive")

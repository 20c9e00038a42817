"""Key files for signed model packages: ed25519 signing keys and x25519 device keys.

Files are PEM (PKCS#8 for private keys, SubjectPublicKeyInfo for public ones, readable by
``openssl pkey``). A private key is written with mode 0600 and refused when any user can read it, as
ssh refuses an unprotected private key. A key is named by its *key id*: the first 16 hex digits of
the sha256 of its raw public bytes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Literal, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from common.errors import PackageError

__all__ = [
    "generate_key_pair",
    "key_files",
    "key_id",
    "load_device_key",
    "load_device_public_key",
    "load_signing_key",
    "load_trusted_keys",
    "raw_public",
]

KeyKind = Literal["signing", "device"]


def raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey | X25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def generate_key_pair(out: Path, name: str, kind: KeyKind = "signing") -> tuple[Path, Path]:
    """``out/NAME.key`` (private, 0600) and ``out/NAME.pub``; never overwrites a file."""
    private: Ed25519PrivateKey | X25519PrivateKey = (
        Ed25519PrivateKey.generate() if kind == "signing" else X25519PrivateKey.generate()
    )
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{name}.key", out / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise PackageError(f"{path} exists; keys are never overwritten (move it away or choose another --name)")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private_path, public_path


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{what} {path}: {exc.strerror or exc}") from None


KeyType = TypeVar("KeyType")
_SIGNING = "an ed25519 key (`edgesight models keygen`)"
_DEVICE = "an x25519 key (`edgesight models keygen --device`)"


def _load(path: Path, what: str, kind: type[KeyType], expected: str, *, private: bool) -> KeyType:
    """The key in a PEM file, of type ``kind``; a private one must not be readable by every user."""
    data = _read(path, what)
    if private and path.stat().st_mode & stat.S_IRWXO:  # group-readable is allowed: a k8s Secret with fsGroup
        raise PackageError(f"{what} {path} is readable by any user (mode {path.stat().st_mode & 0o777:04o}); chmod 600")
    try:
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except (ValueError, TypeError) as exc:
        form = "an unencrypted PEM private key" if private else "a PEM public key"
        raise PackageError(f"{what} {path} is not {form}: {exc}") from None
    if not isinstance(key, kind):
        raise PackageError(f"{what} {path} is not {expected}")
    return key


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    return _load(path, "signing key", Ed25519PrivateKey, _SIGNING, private=True)  # type: ignore[type-abstract]


def load_device_key(path: Path) -> X25519PrivateKey:
    return _load(path, "device key", X25519PrivateKey, _DEVICE, private=True)  # type: ignore[type-abstract]


def load_device_public_key(path: Path) -> X25519PublicKey:
    return _load(path, "device public key", X25519PublicKey, _DEVICE, private=False)  # type: ignore[type-abstract]


def key_files(paths: list[Path] | tuple[Path, ...]) -> list[Path]:
    """The public key files ``paths`` name: a folder stands for the ``*.pub`` files in it."""
    files: list[Path] = []
    for path in paths:
        files += sorted(path.glob("*.pub")) if path.is_dir() else [path]
    return files


def load_trusted_keys(paths: list[Path] | tuple[Path, ...]) -> dict[str, Ed25519PublicKey]:
    """Key id -> key, for every public key file (a folder stands for the ``*.pub`` files in it)."""
    keys: dict[str, Ed25519PublicKey] = {}
    for file in key_files(paths):
        key = _load(file, "trusted key", Ed25519PublicKey, _SIGNING, private=False)  # type: ignore[type-abstract]
        keys[key_id(key)] = key
    return keys

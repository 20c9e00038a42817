"""A package's members encrypted for one device: AES-256-GCM under a random data key, which is wrapped
for the device's x25519 key (ephemeral ECDH + HKDF-SHA256 + AES-256-GCM) in the package's index.

Each member's name is its associated data, so an encrypted member cannot be passed off as another.
The format around it is :mod:`common.trust.package`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from common.errors import PackageError
from common.trust.keys import key_id, raw_public

__all__ = ["SCHEME", "decrypt_members", "encrypt_members", "engine_cache_key_of"]

SCHEME = "x25519-hkdf-sha256-aes256gcm"
_WRAP_INFO = b"edgesight espkg 1 data key"
_ENGINE_CACHE_INFO = b"edgesight engine cache 1"


def encrypt_members(
    members: Mapping[str, bytes], recipient: X25519PublicKey, *, readable: str
) -> tuple[dict[str, bytes], dict[str, str]]:
    """Every member but ``readable`` encrypted for ``recipient``, and the index's ``encryption`` entry
    that lets the recipient's key unwrap the data key."""
    data_key = AESGCM.generate_key(256)
    ephemeral = X25519PrivateKey.generate()
    wrapping = _wrapping_key(ephemeral.exchange(recipient), ephemeral.public_key(), recipient)
    nonce = os.urandom(12)
    encryption = {
        "scheme": SCHEME,
        "recipient": key_id(recipient),
        "ephemeral": raw_public(ephemeral.public_key()).hex(),
        "wrapped_key": (nonce + AESGCM(wrapping).encrypt(nonce, data_key, _WRAP_INFO)).hex(),
    }
    stored = dict(members)
    for member, data in members.items():
        if member != readable:
            nonce = os.urandom(12)
            stored[member] = nonce + AESGCM(data_key).encrypt(nonce, data, member.encode())
    return stored, encryption


def _wrapping_key(shared: bytes, ephemeral: X25519PublicKey, recipient: X25519PublicKey) -> bytes:
    salt = raw_public(ephemeral) + raw_public(recipient)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_WRAP_INFO).derive(shared)


def decrypt_members(
    members: dict[str, bytes],
    listed: Mapping[str, Mapping[str, Any]],
    encryption: Mapping[str, Any],
    device_key: X25519PrivateKey | None,
    label: str,
    required: bool,
) -> dict[str, bytes]:
    """The members with the encrypted ones decrypted by ``device_key``; without one, the plain members
    only (or PackageError where decryption is ``required``)."""
    recipient = encryption.get("recipient")
    if encryption.get("scheme") != SCHEME:
        raise PackageError(f"{label}: unknown encryption scheme {encryption.get('scheme')!r}")
    if device_key is None:
        if required:
            raise PackageError(f"{label}: encrypted for device key {recipient}; set site.device_key to that key's file")
        return {name: data for name, data in members.items() if not listed[name]["encrypted"]}
    mine = key_id(device_key.public_key())
    if mine != recipient:
        raise PackageError(f"{label}: encrypted for device key {recipient}, not for this device's key {mine}")
    try:
        ephemeral = X25519PublicKey.from_public_bytes(bytes.fromhex(encryption["ephemeral"]))
        wrapped = bytes.fromhex(encryption["wrapped_key"])
        wrapping = _wrapping_key(device_key.exchange(ephemeral), ephemeral, device_key.public_key())
        data_key = AESGCM(wrapping).decrypt(wrapped[:12], wrapped[12:], _WRAP_INFO)
    except (InvalidTag, ValueError, KeyError, TypeError):
        raise PackageError(f"{label}: its data key does not unwrap with this device's key {mine}") from None
    plain = dict(members)
    for name, data in members.items():
        if listed[name]["encrypted"]:
            try:
                plain[name] = AESGCM(data_key).decrypt(data[:12], data[12:], name.encode())
            except InvalidTag:
                raise PackageError(f"{label}: member {name!r} does not decrypt") from None
    return plain


def engine_cache_key_of(device_key: X25519PrivateKey) -> bytes:
    """The AES-256-GCM key that seals this device's cached TensorRT engines: derived from the device key,
    so an engine another process planted (or another device built) does not load, and the engine of an
    encrypted model is no plainer on disk than the model."""
    raw = device_key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_ENGINE_CACHE_INFO).derive(raw)

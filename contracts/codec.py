"""Encoding and validating decode of bus message bodies."""

from __future__ import annotations

from typing import TypeVar, overload

import msgspec

from contracts.errors import ContractError
from contracts.messages import (
    PROTOCOL_VERSION,
    SUPPORTED_VERSIONS,
    Ack,
    AppStatus,
    AppVideo,
    CameraStatus,
    Control,
    Detections,
    Event,
    FrameRef,
    Health,
    Message,
    Scene,
)

__all__ = ["MESSAGE_TYPES", "decode", "encode"]

MessageT = TypeVar("MessageT", bound=Message)
AnyMessage = FrameRef | Detections | Event | Health | CameraStatus | Scene | Control | Ack | AppStatus | AppVideo
MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (FrameRef, Detections, Event, Health, CameraStatus, Scene, Control, Ack, AppStatus, AppVideo)
}


class _Header(msgspec.Struct):
    """Just enough of a body to say why the full decode failed."""

    type: str = ""
    v: int = PROTOCOL_VERSION  # absent means 1 (as in a full decode): another defect is then "invalid"


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AnyMessage)
_header_decoder = msgspec.msgpack.Decoder(_Header)


def encode(message: Message) -> bytes:
    """The msgpack body of ``message``."""
    return _encoder.encode(message)


@overload
def decode(body: bytes | memoryview) -> Message: ...
@overload
def decode(body: bytes | memoryview, expect: type[MessageT]) -> MessageT: ...
def decode(body: bytes | memoryview, expect: type[Message] | None = None) -> Message:
    """Decode and validate one body; any defect raises :class:`ContractError`, nothing else.

    >>> decode(encode(Ack(ids=["e1"]))).ids
    ['e1']
    """
    try:
        message: Message = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise _classify(body, exc, expect) from None
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as exc:
        raise ContractError("malformed", str(exc)) from None
    nested = getattr(message, "frame", None)  # a frame_ref inside: its own v, checked alike
    for version in (message.v, nested.v if nested is not None else PROTOCOL_VERSION):
        if version not in SUPPORTED_VERSIONS:
            raise ContractError(
                "unknown_version", f"protocol version {version} (supported: {sorted(SUPPORTED_VERSIONS)})"
            )
    if expect is not None and not isinstance(message, expect):
        tag = type(message).__struct_config__.tag
        raise ContractError("invalid", f"expected a {expect.__name__} message, got {tag!r}")
    return message


def _classify(body: bytes | memoryview, exc: msgspec.ValidationError, expect: type[Message] | None) -> ContractError:
    try:
        header = _header_decoder.decode(body)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        return ContractError("invalid", str(exc))
    if header.type not in MESSAGE_TYPES:
        return ContractError("unknown_type", f"message type {header.type[:64]!r}")
    if header.v not in SUPPORTED_VERSIONS:
        return ContractError(
            "unknown_version", f"protocol version {header.v} (supported: {sorted(SUPPORTED_VERSIONS)})"
        )
    wanted = None if expect is None else expect.__struct_config__.tag
    if wanted is not None and header.type != wanted:  # what is wrong is the type, not the fields of another one
        return ContractError("invalid", f"expected a {wanted!r} message here, got {header.type!r}")
    return ContractError("invalid", f"{header.type}: {exc}")

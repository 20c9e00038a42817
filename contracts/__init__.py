"""EdgeSight's bus messages: the only definitions every service and integrator shares.

>>> from contracts import Ack, decode, encode
>>> decode(encode(Ack(ids=["evt-1"]))) == Ack(ids=["evt-1"])
True
"""

from contracts.arrays import NDArray
from contracts.codec import MESSAGE_TYPES, decode, encode
from contracts.errors import ContractError, EdgeSightError, RejectReason
from contracts.messages import (
    PROTOCOL_VERSION,
    REFUSAL_REASONS,
    SUPPORTED_VERSIONS,
    Ack,
    AppStatus,
    AppVideo,
    CameraState,
    CameraStatus,
    Control,
    ControlCommand,
    Detections,
    Event,
    FrameRef,
    Health,
    InferenceTiming,
    LineCounts,
    Message,
    PixelFormat,
    Refusal,
    Scene,
    ServiceState,
    Snapshot,
    TrackedObject,
)
from contracts.topics import Stream, parse_topic, topic

__all__ = [
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "REFUSAL_REASONS",
    "SUPPORTED_VERSIONS",
    "Ack",
    "AppStatus",
    "AppVideo",
    "CameraState",
    "CameraStatus",
    "ContractError",
    "Control",
    "ControlCommand",
    "Detections",
    "EdgeSightError",
    "Event",
    "FrameRef",
    "Health",
    "InferenceTiming",
    "LineCounts",
    "Message",
    "NDArray",
    "PixelFormat",
    "Refusal",
    "RejectReason",
    "Scene",
    "ServiceState",
    "Snapshot",
    "Stream",
    "TrackedObject",
    "decode",
    "encode",
    "parse_topic",
    "topic",
]

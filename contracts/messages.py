"""Every message that travels on the EdgeSight bus, defined once.

Each is a msgpack map whose first keys are ``type`` (the tag below) and ``v`` (the protocol
version). Fields are added only as optional ones within a version; removing or retyping a
field bumps ``PROTOCOL_VERSION``. The wire format is documented in ``contracts/README.md``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from contracts.arrays import NDArray

__all__ = [
    "PROTOCOL_VERSION",
    "SUPPORTED_VERSIONS",
    "Ack",
    "CameraState",
    "CameraStatus",
    "Control",
    "ControlCommand",
    "Detections",
    "Event",
    "FrameRef",
    "Health",
    "InferenceTiming",
    "Message",
    "PixelFormat",
    "ServiceState",
    "Snapshot",
    "TrackedObject",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
# Normalised xyxy: 0..1 of the source frame's width and height.
Box = tuple[Unit, Unit, Unit, Unit]
PixelFormat = Literal["bgr24", "rgb24", "gray8", "nv12"]
ServiceState = Literal["starting", "ready", "degraded", "stopping"]
ControlCommand = Literal["reload", "pause", "resume", "shutdown"]
CameraState = Literal["connecting", "streaming", "stalled", "backoff", "stopped"]
Lifecycle = Literal["new", "update", "end"]
Scalar = str | int | float | bool | None


class Message(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, gc=False):
    """Base of all bus messages: carries the protocol version ``v``."""

    v: int = PROTOCOL_VERSION


class FrameRef(Message, tag="frame_ref", kw_only=True, frozen=True):
    """Where one decoded frame lies in shared memory. Published by ingest on ``frames/<camera>/``."""

    camera: Name
    seq: NonNegative  # per camera, +1 per published frame; a gap means frames were skipped
    capture_ns: NonNegative  # wall clock (time.time_ns) when the frame was decoded
    monotonic_ns: NonNegative  # CLOCK_MONOTONIC at the same moment; ages are measured on this
    segment: Name  # shm segment name (file under /dev/shm)
    slot: NonNegative
    generation: NonNegative  # the slot's seqlock value after the write: even
    width: Positive
    height: Positive
    pixel_format: PixelFormat = "bgr24"
    stride: Positive  # bytes per row
    motion: Unit = 1.0  # share of the frame that changed; 1.0 when motion gating is off
    motion_box: Box | None = None


class InferenceTiming(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    preprocess_ns: NonNegative = 0
    inference_ns: NonNegative = 0
    postprocess_ns: NonNegative = 0
    batch_size: Positive = 1
    backend: str = ""
    provider: str = ""


class Detections(Message, tag="detections", kw_only=True, frozen=True):
    """One model's results on one frame. Published by inference on ``detections/<camera>/``.

    ``boxes`` is ``<f4 [N, 4]`` normalised xyxy, ``class_ids`` ``<i4 [N]``, ``scores`` ``<f4 [N]``.
    ``labels`` names the class ids present in this message; ``labels_ref`` names the whole table.
    """

    frame: FrameRef
    model: Name
    model_version: str = ""
    boxes: NDArray
    class_ids: NDArray
    scores: NDArray
    labels: dict[int, str] = {}
    labels_ref: str = ""
    timing: InferenceTiming = InferenceTiming()

    def __post_init__(self) -> None:
        checks = (
            ("boxes", self.boxes, "<f4", 2),
            ("class_ids", self.class_ids, "<i4", 1),
            ("scores", self.scores, "<f4", 1),
        )
        for field, array, dtype, ndim in checks:
            if array.dtype != dtype or len(array.shape) != ndim:
                raise ValueError(
                    f"{field} must be {dtype} with {ndim} dimensions, got {array.dtype} {list(array.shape)}"
                )
        count = self.class_ids.shape[0]
        if self.boxes.shape != (count, 4) or self.scores.shape != (count,):
            raise ValueError(
                f"expected boxes [N, 4], class_ids [N], scores [N] with one N, got "
                f"{list(self.boxes.shape)}, {list(self.class_ids.shape)}, {list(self.scores.shape)}"
            )

    @classmethod
    def from_arrays(
        cls,
        frame: FrameRef,
        model: str,
        boxes: npt.ArrayLike,
        class_ids: npt.ArrayLike,
        scores: npt.ArrayLike,
        **fields: object,
    ) -> Detections:
        """Build from numpy arrays (converted to the wire dtypes)."""
        return cls(
            frame=frame,
            model=model,
            boxes=NDArray.from_numpy(np.asarray(boxes, dtype="<f4").reshape(-1, 4)),
            class_ids=NDArray.from_numpy(class_ids, "<i4"),
            scores=NDArray.from_numpy(scores, "<f4"),
            **fields,  # type: ignore[arg-type]
        )

    def __len__(self) -> int:
        return self.class_ids.shape[0]


class TrackedObject(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    track_id: NonNegative
    label: str
    score: Unit
    box: Box


class Snapshot(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An encoded image attached to an event; only present where a rule asked for it."""

    content_type: Literal["image/jpeg", "image/png"] = "image/jpeg"
    width: Positive
    height: Positive
    data: bytes


class Event(Message, tag="event", kw_only=True, frozen=True):
    """Something a rule decided. Sent by rules to the uplink with delivery acknowledgement.

    ``id`` is stable: a resent event carries the same id, so sinks can drop duplicates.
    """

    id: Name
    event_type: Name  # "zone_enter", "line_cross", "dwell", ...
    lifecycle: Lifecycle = "new"
    site: Name
    camera: Name
    rule: Name
    ts_ns: NonNegative  # wall clock of the decision
    start_ns: NonNegative | None = None
    end_ns: NonNegative | None = None
    object: TrackedObject | None = None  # the object as it is now ("after")
    before: TrackedObject | None = None  # the same object at this rule's previous event about it (update/end)
    counts: dict[str, int] = {}
    attributes: dict[str, Scalar] = {}
    frame: FrameRef | None = None
    snapshot: Snapshot | None = None


class Health(Message, tag="health", kw_only=True, frozen=True):
    """A service's periodic heartbeat, on ``health/<service>/``."""

    service: Name
    instance: Name
    state: ServiceState
    ts_ns: NonNegative
    uptime_s: Annotated[float, msgspec.Meta(ge=0.0)]
    counters: dict[str, float] = {}
    detail: dict[str, str] = {}


class CameraStatus(Message, tag="camera_status", kw_only=True, frozen=True):
    """A camera's state as its ingest sees it, on ``cameras/<camera>/``: sent on every change and
    with each Health. ``error`` says why a camera is in ``backoff``/``stalled`` (never a password)."""

    camera: Name
    state: CameraState
    instance: Name  # the ingest process serving the camera
    ts_ns: NonNegative  # wall clock of this message
    since_ns: NonNegative  # wall clock when the camera entered ``state``
    fps: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0  # frames published per second, recent
    reconnects: NonNegative = 0
    error: str = ""
    codec: str = ""  # e.g. h264, hevc
    decoder: str = ""  # the FFmpeg decoder in use, e.g. h264 or h264_v4l2m2m
    width: NonNegative = 0  # source resolution, 0 until known
    height: NonNegative = 0


class Control(Message, tag="control", kw_only=True, frozen=True):
    """An operator's command, on ``control/<service>/`` (``control/*/`` for every service)."""

    id: Name
    command: ControlCommand
    target: Name = "*"
    instance: str | None = None
    camera: str | None = None
    ts_ns: NonNegative = 0
    args: dict[str, str] = {}


class Ack(Message, tag="ack", kw_only=True, frozen=True):
    """The uplink's receipt for events it has made durable."""

    ids: list[Name]
    receiver: str = ""

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
    "REFUSAL_REASONS",
    "SUPPORTED_VERSIONS",
    "Ack",
    "AppStatus",
    "AppVideo",
    "CameraState",
    "CameraStatus",
    "Control",
    "ControlCommand",
    "Detections",
    "Event",
    "FrameRef",
    "Health",
    "InferenceTiming",
    "LineCounts",
    "Message",
    "PixelFormat",
    "Refusal",
    "Scene",
    "ServiceState",
    "Snapshot",
    "TrackedObject",
]

PROTOCOL_VERSION = 1
SUPPORTED_VERSIONS = frozenset({1})

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
Unit = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# One strict pattern for every name that becomes part of a topic, a file, a metric label or an S3 key
# (camera, rule, site, model, service, instance): no "/", "+", "#", spaces or "..".
# ``\Z``, not ``$``: msgspec checks with ``re.search``, where ``$`` also matches before a final newline.
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z"
Name = Annotated[str, msgspec.Meta(pattern=NAME_PATTERN)]
# Class labels may hold spaces ("traffic light"), nothing else outside the name pattern.
LABEL_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_. -]{0,63}\Z"
Label = Annotated[str, msgspec.Meta(pattern=LABEL_PATTERN)]
# Event and command ids: uuids or other opaque tokens; also part of an S3 key.
ID_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,127}\Z"
Id = Annotated[str, msgspec.Meta(pattern=ID_PATTERN)]
# A shared-memory segment: ``edgesight.<site>.<camera>`` (see common.shm.segment_name): a plain file name.
SEGMENT_PATTERN = r"^edgesight\.[A-Za-z0-9_-]{1,64}\.[A-Za-z0-9_-]{1,64}\Z"
Segment = Annotated[str, msgspec.Meta(pattern=SEGMENT_PATTERN)]
Text = Annotated[str, msgspec.Meta(max_length=1024)]

# Bounds on everything whose size a sender chooses (see contracts/README.md, "Limits").
MAX_DETECTIONS = 4096  # boxes in one Detections message
MAX_LABELS = 4096  # entries of Detections.labels
MAX_MAP_ENTRIES = 256  # counts, attributes, counters, detail, args
MAX_ACK_IDS = 10_000
MAX_SNAPSHOT_BYTES = 16 << 20
MAX_APP_PICTURE_BYTES = 8 << 20  # one JPEG of an app's video_out
MAX_DIMENSION = 16384  # frame width or height in pixels
# Why the uplink refuses an event on the acknowledged path (Ack.refused): the body breaks the contract
# (as contracts.errors.RejectReason), or it disagrees with its topic or with the site file.
REFUSAL_REASONS = (
    "malformed",
    "unknown_type",
    "unknown_version",
    "invalid",
    "wrong_topic",
    "wrong_site",
    "unknown_camera",
    "unknown_rule",
    "wrong_event_type",
    "wrong_sender",
    "conflict",
)
# Normalised xyxy: 0..1 of the source frame's width and height.
Box = tuple[Unit, Unit, Unit, Unit]
Dimension = Annotated[int, msgspec.Meta(gt=0, le=MAX_DIMENSION)]
PixelFormat = Literal["bgr24", "rgb24", "gray8", "nv12"]
ServiceState = Literal["starting", "ready", "degraded", "stopping"]
ControlCommand = Literal["reload", "pause", "resume", "shutdown"]
CameraState = Literal["connecting", "streaming", "stalled", "backoff", "stopped"]
Lifecycle = Literal["new", "update", "end"]
Scalar = Text | int | float | bool | None


class Message(msgspec.Struct, tag_field="type", kw_only=True, frozen=True, gc=False):
    """Base of all bus messages: carries the protocol version ``v``."""

    v: int = PROTOCOL_VERSION


class FrameRef(Message, tag="frame_ref", kw_only=True, frozen=True):
    """Where one decoded frame lies in shared memory. Published by ingest on ``frames/<camera>/``."""

    camera: Name
    seq: NonNegative  # per camera, +1 per published frame; a gap means frames were skipped
    capture_ns: NonNegative  # wall clock (time.time_ns) when the frame was decoded
    monotonic_ns: NonNegative  # CLOCK_MONOTONIC at the same moment; ages are measured on this
    segment: Segment  # shm segment name (a file directly under shm_dir)
    slot: NonNegative
    generation: NonNegative  # the slot's seqlock value after the write: even
    width: Dimension
    height: Dimension
    pixel_format: PixelFormat = "bgr24"
    stride: Annotated[int, msgspec.Meta(gt=0, le=4 * MAX_DIMENSION)]  # bytes per row
    motion: Unit = 1.0  # share of the frame that changed; 1.0 when motion gating is off
    motion_box: Box | None = None

    def __post_init__(self) -> None:
        if self.pixel_format == "nv12" and (self.width % 2 or self.height % 2):
            raise ValueError(f"an nv12 frame has even sides, got {self.width}x{self.height}")


class InferenceTiming(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    preprocess_ns: NonNegative = 0
    inference_ns: NonNegative = 0
    postprocess_ns: NonNegative = 0
    batch_size: Positive = 1
    backend: Text = ""
    provider: Text = ""


class Detections(Message, tag="detections", kw_only=True, frozen=True):
    """One model's results on one frame. Published by inference on ``detections/<camera>/``.

    ``boxes`` is ``<f4 [N, 4]`` normalised xyxy, ``class_ids`` ``<i4 [N]``, ``scores`` ``<f4 [N]``.
    ``labels`` names the class ids present in this message; ``labels_ref`` names the whole table.
    """

    frame: FrameRef
    model: Name
    model_version: Text = ""
    boxes: NDArray
    class_ids: NDArray
    scores: NDArray
    labels: Annotated[dict[int, Label], msgspec.Meta(max_length=MAX_LABELS)] = {}
    labels_ref: Text = ""
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
        if count > MAX_DETECTIONS:
            raise ValueError(f"{count} detections in one message; at most {MAX_DETECTIONS}")
        if self.boxes.shape != (count, 4) or self.scores.shape != (count,):
            raise ValueError(
                f"expected boxes [N, 4], class_ids [N], scores [N] with one N, got "
                f"{list(self.boxes.shape)}, {list(self.class_ids.shape)}, {list(self.scores.shape)}"
            )
        if not (np.isfinite(self.boxes.to_numpy()).all() and np.isfinite(self.scores.to_numpy()).all()):
            raise ValueError("boxes and scores must be finite numbers (no NaN, no infinity)")

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
    label: Label
    score: Unit
    box: Box


class Snapshot(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An encoded image attached to an event; only present where a rule asked for it."""

    content_type: Literal["image/jpeg", "image/png"] = "image/jpeg"
    width: Dimension
    height: Dimension
    data: Annotated[bytes, msgspec.Meta(max_length=MAX_SNAPSHOT_BYTES)]


class Event(Message, tag="event", kw_only=True, frozen=True):
    """Something a rule decided. Sent by rules to the uplink with delivery acknowledgement.

    ``id`` is stable: a resent event carries the same id, so sinks can drop duplicates.
    """

    id: Id
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
    counts: Annotated[dict[Label, int], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}
    attributes: Annotated[dict[Name, Scalar], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}
    frame: FrameRef | None = None
    snapshot: Snapshot | None = None


class Health(Message, tag="health", kw_only=True, frozen=True):
    """A service's periodic heartbeat, on ``health/<service>/``."""

    service: Name
    instance: Name
    state: ServiceState
    ts_ns: NonNegative
    uptime_s: Annotated[float, msgspec.Meta(ge=0.0)]
    counters: Annotated[dict[Text, float], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}
    detail: Annotated[dict[Text, Text], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}


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
    error: Text = ""
    codec: Text = ""  # e.g. h264, hevc
    decoder: Text = ""  # the FFmpeg decoder in use, e.g. h264 or h264_v4l2m2m
    width: NonNegative = 0  # source resolution, 0 until known
    height: NonNegative = 0


class LineCounts(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """Cumulative crossings of one line rule by one label."""

    in_: NonNegative = msgspec.field(default=0, name="in")
    out: NonNegative = 0


class Scene(Message, tag="scene", kw_only=True, frozen=True):
    """What rules sees on a camera after one model's frame, on ``scene/<camera>/``: the confirmed tracks,
    every line rule's counts and every zone's occupancy. For local consumers (the console, a screen);
    broadcast, newest wins, never acknowledged."""

    camera: Name
    model: Name
    frame: FrameRef
    tracks: Annotated[list[TrackedObject], msgspec.Meta(max_length=MAX_DETECTIONS)] = []
    lines: Annotated[
        dict[Name, Annotated[dict[Label, LineCounts], msgspec.Meta(max_length=MAX_MAP_ENTRIES)]],
        msgspec.Meta(max_length=MAX_MAP_ENTRIES),
    ] = {}
    zones: Annotated[
        dict[Name, Annotated[dict[Label, NonNegative], msgspec.Meta(max_length=MAX_MAP_ENTRIES)]],
        msgspec.Meta(max_length=MAX_MAP_ENTRIES),
    ] = {}


class Control(Message, tag="control", kw_only=True, frozen=True):
    """An operator's command, on ``control/<service>/`` (``control/*/`` for every service)."""

    id: Id
    command: ControlCommand
    instance: Name | None = None
    camera: Name | None = None
    ts_ns: NonNegative = 0
    args: Annotated[dict[Name, Text], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = {}


class Refusal(msgspec.Struct, kw_only=True, frozen=True, gc=False):
    """An event the receiver will never take, and why: the sender drops it (resending cannot help).

    ``reason`` is a short name fit for a metric label (``REFUSAL_REASONS`` lists today's; a sender treats
    one it does not know like any other refusal); ``detail`` says what was wrong, for a log.
    """

    id: Id
    reason: Name
    detail: Text = ""


class Ack(Message, tag="ack", kw_only=True, frozen=True):
    """The uplink's answer on the acknowledged path: ``ids`` it has made durable (a duplicate it already
    holds or delivered is acknowledged again), ``refused`` the events it will never take."""

    ids: Annotated[list[Id], msgspec.Meta(max_length=MAX_ACK_IDS)]
    receiver: Text = ""
    refused: Annotated[list[Refusal], msgspec.Meta(max_length=MAX_ACK_IDS)] = []


AppState = Literal["starting", "running", "restarting", "hung", "failed", "stopped"]
AppRestartReason = Literal["exited", "hung", "memory", "disk", "sandbox"]


class AppStatus(Message, tag="app_status", kw_only=True, frozen=True):
    """A Panorama application's state as the apps service runs it, on ``apps/<app>/``: sent on every
    change and every few seconds. ``error`` says why an app is ``failed`` or restarted last."""

    app: Name
    instance: Name
    state: AppState
    ts_ns: NonNegative
    cameras: Annotated[list[Name], msgspec.Meta(max_length=MAX_MAP_ENTRIES)] = []
    frames: NonNegative = 0  # frames the app took (video_in.get) since this process started
    skipped: NonNegative = 0  # frames the app was too slow for
    restarts: NonNegative = 0
    last_restart: AppRestartReason | None = None
    error: Text = ""
    memory_mb: Annotated[float, msgspec.Meta(ge=0.0)] = 0.0  # resident memory of the app's processes
    sandbox: Text = ""  # e.g. "uid 23417, network own, cgroup limits"


class AppVideo(Message, tag="app_video", kw_only=True, frozen=True):
    """One picture of an application's ``video_out`` for one camera (what Panorama's HDMI port showed),
    on ``apps/<app>/``: labels and rectangles drawn, the camera's privacy masks applied. For local
    consumers (the console); newest wins, never acknowledged."""

    app: Name
    camera: Name
    ts_ns: NonNegative
    jpeg: Annotated[bytes, msgspec.Meta(max_length=MAX_APP_PICTURE_BYTES)]

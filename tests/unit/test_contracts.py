"""Every message round-trips, speaks plain msgpack, and no input crashes the decoder."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts import (
    Ack,
    CameraStatus,
    ContractError,
    Control,
    Detections,
    Event,
    FrameRef,
    Health,
    LineCounts,
    Message,
    NDArray,
    Scene,
    Snapshot,
    TrackedObject,
    decode,
    encode,
    parse_topic,
    topic,
)

FRAME = FrameRef(
    camera="dock-1",
    seq=42,
    capture_ns=1_700_000_000_000_000_000,
    monotonic_ns=123_456_789,
    segment="edgesight.s.dock-1",
    slot=3,
    generation=1_000_002,
    width=1920,
    height=1080,
    stride=5760,
    motion=0.25,
    motion_box=(0.1, 0.2, 0.3, 0.4),
)
DETECTIONS = Detections.from_arrays(
    FRAME,
    "yolox_nano",
    boxes=[[0.1, 0.1, 0.2, 0.3], [0.5, 0.5, 0.9, 1.0]],
    class_ids=[0, 2],
    scores=[0.9, 0.4],
    model_version="1",
    labels={0: "person", 2: "car"},
    labels_ref="coco80",
)
EVENT = Event(
    id="evt-1",
    event_type="line_cross",
    site="plant",
    camera="dock-1",
    rule="door",
    ts_ns=5,
    object=TrackedObject(track_id=7, label="person", score=0.8, box=(0.1, 0.2, 0.3, 0.4)),
    counts={"in": 3, "out": 1},
    attributes={"direction": "in", "speed": 1.5, "flag": True, "none": None},
    frame=FRAME,
    snapshot=Snapshot(width=2, height=2, data=b"\xff\xd8jpeg"),
)
MESSAGES: list[Message] = [
    FRAME,
    DETECTIONS,
    EVENT,
    Health(
        service="ingest",
        instance="a",
        state="ready",
        ts_ns=1,
        uptime_s=2.5,
        counters={"fps": 25.0},
        detail={"dock-1": "streaming"},
    ),
    CameraStatus(
        camera="dock-1",
        state="backoff",
        instance="ingest-a",
        ts_ns=3,
        since_ns=2,
        fps=0.0,
        reconnects=4,
        error="connection refused",
        codec="h264",
        decoder="h264",
        width=1920,
        height=1080,
    ),
    Scene(
        camera="dock-1",
        model="people",
        frame=FRAME,
        tracks=[TrackedObject(track_id=7, label="person", score=0.8, box=(0.1, 0.2, 0.3, 0.4))],
        lines={"door": {"person": LineCounts(in_=3, out=1)}},
        zones={"bay": {"person": 2, "forklift": 0}},
    ),
    Control(id="c1", command="reload", args={"model": "people"}),
    Ack(ids=["evt-1", "evt-2"], receiver="uplink"),
]


def test_scene_line_counts_are_in_and_out_on_the_wire() -> None:
    scene = next(m for m in MESSAGES if isinstance(m, Scene))
    assert msgpack.unpackb(encode(scene))["lines"] == {"door": {"person": {"in": 3, "out": 1}}}


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message: Message) -> None:
    assert decode(encode(message)) == message


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_plain_msgpack_reads_and_writes_our_messages(message: Message) -> None:
    plain = msgpack.unpackb(encode(message), strict_map_key=False)
    assert plain["type"] == type(message).__struct_config__.tag
    assert plain["v"] == 1
    assert decode(msgpack.packb(plain)) == message


def test_hand_written_frame_ref_from_another_language() -> None:
    """What a C or Go integrator would write with any msgpack library."""
    body = msgpack.packb(
        {
            "type": "frame_ref",
            "v": 1,
            "camera": "c",
            "seq": 0,
            "capture_ns": 1,
            "monotonic_ns": 1,
            "segment": "edgesight.s.c",
            "slot": 0,
            "generation": 2,
            "width": 4,
            "height": 2,
            "stride": 12,
        }
    )
    ref = decode(body, FrameRef)
    assert (ref.pixel_format, ref.motion, ref.width) == ("bgr24", 1.0, 4)


def test_arrays_travel_as_raw_bytes() -> None:
    plain = msgpack.unpackb(encode(DETECTIONS), strict_map_key=False)
    assert plain["boxes"]["dtype"] == "<f4" and plain["boxes"]["shape"] == [2, 4]
    assert isinstance(plain["boxes"]["data"], bytes) and len(plain["boxes"]["data"]) == 32
    boxes = decode(encode(DETECTIONS), Detections).boxes.to_numpy()
    np.testing.assert_allclose(boxes[1], [0.5, 0.5, 0.9, 1.0], rtol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: d.update(v=2), "unknown_version"),
        (lambda d: d.update(type="nonsense"), "unknown_type"),
        (lambda d: d.pop("camera"), "invalid"),
        (lambda d: d.update(seq="42"), "invalid"),
        (lambda d: d.update(seq=-1), "invalid"),
        (lambda d: d.update(width=0), "invalid"),
        (lambda d: d.update(pixel_format="yuv444"), "invalid"),
    ],
)
def test_defects_give_typed_errors(mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    plain = msgpack.unpackb(encode(FRAME))
    mutate(plain)
    with pytest.raises(ContractError) as caught:
        decode(msgpack.packb(plain))
    assert caught.value.reason == reason


def test_detections_with_mismatched_arrays_are_rejected() -> None:
    plain = msgpack.unpackb(encode(DETECTIONS), strict_map_key=False)
    plain["scores"] = {"dtype": "<f4", "shape": [3], "data": b"\x00" * 12}
    with pytest.raises(ContractError, match="one N"):
        decode(msgpack.packb(plain))
    plain["scores"] = {"dtype": "<f4", "shape": [2], "data": b"\x00" * 7}
    with pytest.raises(ContractError, match="expected 8"):
        decode(msgpack.packb(plain))


def test_a_body_without_v_and_with_a_defect_is_invalid_not_an_unknown_version() -> None:
    plain = msgpack.unpackb(encode(FRAME))
    del plain["v"]  # absent means 1: a decode of it alone succeeds
    assert decode(msgpack.packb(plain)) == FRAME
    plain["width"] = "4"
    with pytest.raises(ContractError) as caught:
        decode(msgpack.packb(plain))
    assert caught.value.reason == "invalid"


@pytest.mark.parametrize("message", [DETECTIONS, EVENT], ids=["detections", "event"])
def test_a_nested_frame_of_another_version_is_refused(message: Message) -> None:
    plain = msgpack.unpackb(encode(message), strict_map_key=False)
    plain["frame"]["v"] = 2
    with pytest.raises(ContractError) as caught:
        decode(msgpack.packb(plain))
    assert caught.value.reason == "unknown_version"


def test_wrong_message_type_for_the_stream() -> None:
    with pytest.raises(ContractError, match="expected a Event"):
        decode(encode(FRAME), Event)


def test_ndarray_rejects_unknown_dtypes() -> None:
    with pytest.raises(ValueError, match="dtype"):
        NDArray(dtype="object", shape=(1,), data=b"x")


def test_topics_are_exact_prefixes() -> None:
    assert topic("frames", "cam1") == b"frames/cam1/"
    assert not topic("frames", "cam10").startswith(topic("frames", "cam1"))
    assert parse_topic(b"detections/dock-1/") == ("detections", "dock-1")
    for bad in (b"frames/cam1", b"nope/x/", b"frames//", b"\xff/x/"):
        with pytest.raises(ValueError, match="not"):
            parse_topic(bad)


def _decode_or_contract_error(body: bytes) -> None:
    try:
        message = decode(body)
    except ContractError as exc:
        assert exc.reason in {"malformed", "unknown_type", "unknown_version", "invalid"}
    else:
        assert isinstance(message, Message)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(body: bytes) -> None:
    _decode_or_contract_error(body)


@settings(max_examples=500)
@given(
    st.sampled_from([encode(m) for m in MESSAGES]),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_bytes_never_crash(body: bytes, flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(body)
    for position, value in flips:
        mutated[position % len(mutated)] = value
    _decode_or_contract_error(bytes(mutated))


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(MESSAGES), st.data())
def test_mutated_fields_never_crash(message: Message, data: st.DataObject) -> None:
    plain = msgpack.unpackb(encode(message), strict_map_key=False)
    key = data.draw(st.sampled_from(sorted(plain)))
    if data.draw(st.booleans()):
        plain[key] = data.draw(_values)
    else:
        del plain[key]
    _decode_or_contract_error(msgpack.packb(plain))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("camera", "x/#"),
        ("camera", "+"),
        ("rule", "../door"),
        ("site", "plant one"),
        ("id", "a/b"),
        ("event_type", ""),
    ],
)
def test_names_follow_one_strict_pattern(field: str, value: str) -> None:
    """A name lands in MQTT topics, S3 keys and file names: wildcards, slashes and spaces are refused at decode."""
    raw = msgpack.unpackb(encode(EVENT), strict_map_key=False)
    raw[field] = value
    with pytest.raises(ContractError) as caught:
        decode(msgpack.packb(raw))
    assert caught.value.reason == "invalid"


def test_labels_may_hold_spaces_but_no_topic_characters() -> None:
    raw = msgpack.unpackb(encode(DETECTIONS), strict_map_key=False)
    raw["labels"] = {0: "traffic light"}
    assert decode(msgpack.packb(raw), Detections).labels == {0: "traffic light"}
    raw["labels"] = {0: "car/#"}
    with pytest.raises(ContractError):
        decode(msgpack.packb(raw))


@pytest.mark.parametrize("segment", ["../../tmp/fifo", "/dev/zero", "edgesight.s.a/../b", "edgesight..x", "s"])
def test_segment_must_be_a_ring_name(segment: str) -> None:
    raw = msgpack.unpackb(encode(FRAME), strict_map_key=False)
    raw["segment"] = segment
    with pytest.raises(ContractError):
        decode(msgpack.packb(raw))


def test_array_sizes_are_bounded() -> None:
    """20,000 boxes once grew rules to 11 GB: a Detections over MAX_DETECTIONS is rejected at decode."""
    from contracts.messages import MAX_DETECTIONS

    def body(count: int) -> bytes:
        raw = msgpack.unpackb(encode(DETECTIONS), strict_map_key=False)
        arrays = (("boxes", [count, 4], "<f4"), ("class_ids", [count], "<i4"), ("scores", [count], "<f4"))
        for field, shape, dtype in arrays:
            raw[field] = {"dtype": dtype, "shape": shape, "data": np.zeros(shape, dtype).tobytes()}
        raw["labels"] = {}
        packed: bytes = msgpack.packb(raw)
        return packed

    assert len(decode(body(MAX_DETECTIONS), Detections)) == MAX_DETECTIONS
    with pytest.raises(ContractError) as caught:
        decode(body(20_000))
    assert caught.value.reason == "invalid" and "at most" in caught.value.detail
    raw = msgpack.unpackb(encode(FRAME), strict_map_key=False)
    huge = {"dtype": "|u1", "shape": [1, 1, 1, 1, 1], "data": b"\0"}
    with pytest.raises(ValueError, match="dimensions"):
        NDArray(**huge)  # type: ignore[arg-type]
    raw["width"] = 1_000_000
    with pytest.raises(ContractError):
        decode(msgpack.packb(raw))

"""The frame ring's bytes: offsets derived from the field lists stay where every reader expects them."""

from __future__ import annotations

from common.shm import layout


def test_the_ring_header_and_slot_header_keep_their_bytes() -> None:
    """Layout version 1 as it is on disk; a change here needs a new ``LAYOUT_VERSION``."""
    assert layout.HEADER.format == "<8sIIQQQQQ64s"
    assert layout.HEARTBEAT_OFFSET == 48 and layout.HEARTBEAT.format == "<Q"
    assert layout.SLOT_FRAME_OFFSET == 8 and layout.SLOT_FRAME.format == "<QQQIIIIQ"


def test_the_headers_fit_their_reserved_room() -> None:
    assert layout.HEADER.size <= layout.HEADER_BYTES
    assert layout.SLOT_FRAME_OFFSET + layout.SLOT_FRAME.size <= layout.SLOT_HEADER_BYTES
    assert layout.SLOT_FRAME_OFFSET % 8 == 0  # the generation before it is an aligned uint64 (_fence.c)


def test_slots_start_on_pages() -> None:
    ring = layout.RingLayout(slots=3, capacity=1)
    assert ring.stride == layout.PAGE
    assert [ring.slot_offset(slot) % layout.PAGE for slot in range(3)] == [0, 0, 0]
    assert ring.total == layout.HEADER_BYTES + 3 * layout.PAGE

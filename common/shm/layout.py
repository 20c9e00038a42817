"""The layout of a frame ring in POSIX shared memory: what the writer and every reader agree on.

One file under ``/dev/shm`` per camera (little-endian)::

    header   4096 B   magic, layout version, slot count, slot capacity, slot stride,
                      writer pid + start time, heartbeat (CLOCK_MONOTONIC ns), camera name
    slot i   stride   64 B slot header (generation, seq, capture ns, monotonic ns, width,
                      height, stride, pixel format, nbytes) then the pixels

Every slot's generation is a seqlock: odd while the writer fills it, the next even value after
(``_fence.c`` stores and loads it with real fences). The offsets of fields written on their own
(the heartbeat, a slot's frame fields) are derived from the field lists below, never written by hand.
"""

from __future__ import annotations

import math
import mmap
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from common.errors import ShmError
from contracts import PixelFormat
from contracts.messages import SEGMENT_PATTERN

__all__ = ["DEFAULT_SHM_DIR", "frame_bytes", "frame_shape", "segment_name"]

DEFAULT_SHM_DIR = Path("/dev/shm")
SEGMENT = re.compile(SEGMENT_PATTERN)
MAGIC = b"ESRING\x00\x01"
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
SLOT_HEADER_BYTES = 64
PAGE = 4096

_HEADER_FIELDS = (
    ("magic", "8s"),
    ("layout_version", "I"),
    ("slots", "I"),
    ("capacity", "Q"),
    ("stride", "Q"),
    ("pid", "Q"),
    ("pid_start", "Q"),
    ("heartbeat_ns", "Q"),
    ("camera", "64s"),
)
_SLOT_FIELDS = (
    ("generation", "Q"),  # the seqlock: first, so that a slot's offset is its generation's
    ("seq", "Q"),
    ("capture_ns", "Q"),
    ("monotonic_ns", "Q"),
    ("width", "I"),
    ("height", "I"),
    ("stride", "I"),
    ("pixel_format", "I"),
    ("nbytes", "Q"),
)


def _struct(fields: tuple[tuple[str, str], ...]) -> struct.Struct:
    return struct.Struct("<" + "".join(code for _, code in fields))  # "<": no padding between fields


def _field(fields: tuple[tuple[str, str], ...], name: str) -> tuple[int, struct.Struct]:
    """The offset of field ``name`` and the struct of that field alone."""
    at = [field for field, _ in fields].index(name)
    return _struct(fields[:at]).size, _struct(fields[at : at + 1])


HEADER = _struct(_HEADER_FIELDS)
HEARTBEAT_OFFSET, HEARTBEAT = _field(_HEADER_FIELDS, "heartbeat_ns")
# what the writer stamps once the pixels are in: every slot field after the generation
SLOT_FRAME_OFFSET = _field(_SLOT_FIELDS, "seq")[0]
SLOT_FRAME = _struct(_SLOT_FIELDS[1:])
FORMAT_CODES: dict[str, int] = {"bgr24": 1, "rgb24": 2, "gray8": 3, "nv12": 4}


def segment_name(site: str, camera: str) -> str:
    """``edgesight.<site>.<camera>``, with anything unsafe for a file name replaced.

    >>> segment_name("Dock 7", "gate/1")
    'edgesight.Dock_7.gate_1'
    """

    def clean(text: str) -> str:
        return re.sub(r"[^A-Za-z0-9_-]", "_", text)

    return f"edgesight.{clean(site)}.{clean(camera)}"


def frame_shape(pixel_format: PixelFormat, width: int, height: int) -> tuple[int, ...]:
    """The numpy shape of a frame: ``(h, w, 3)`` for bgr24/rgb24, ``(h, w)`` gray8, ``(h*3/2, w)`` nv12."""
    if pixel_format in ("bgr24", "rgb24"):
        return (height, width, 3)
    if pixel_format == "gray8":
        return (height, width)
    return (height * 3 // 2, width)


def frame_bytes(pixel_format: PixelFormat, width: int, height: int) -> int:
    """Bytes one frame of this size and format needs in a slot.

    >>> frame_bytes("bgr24", 1920, 1080), frame_bytes("nv12", 1920, 1080)
    (6220800, 3110400)
    """
    return math.prod(frame_shape(pixel_format, width, height))


@dataclass(frozen=True)
class RingLayout:
    """Where each slot lies: a slot's header and pixels, rounded up to whole pages."""

    slots: int
    capacity: int  # pixel bytes per slot

    @property
    def stride(self) -> int:
        return -(-(SLOT_HEADER_BYTES + self.capacity) // PAGE) * PAGE

    @property
    def total(self) -> int:
        return HEADER_BYTES + self.slots * self.stride

    def slot_offset(self, slot: int) -> int:
        return HEADER_BYTES + slot * self.stride


class RingHeader(NamedTuple):
    layout: RingLayout
    pid: int  # the writer's, with its start time: tells a reused pid apart
    pid_start: int
    heartbeat_ns: int
    camera: str


def read_header(buf: mmap.mmap | bytes, path: Path) -> RingHeader:
    """The header of a ring, or ShmError if ``buf`` does not start with one of this layout version."""
    magic, version, slots, capacity, _stride, pid, pid_start, heartbeat, camera = HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != LAYOUT_VERSION:
        raise ShmError(f"{path} is not an EdgeSight frame ring of layout {LAYOUT_VERSION}")
    name = camera.rstrip(b"\x00").decode(errors="replace")
    return RingHeader(RingLayout(slots, capacity), pid, pid_start, heartbeat, name)

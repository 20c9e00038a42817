"""Shared-memory frame rings: pixels are written once by ingest and read in place by everyone else.

``layout`` (the file's bytes, names and sizes), ``writer`` (ingest's side), ``reader`` (a FrameRef to its
pixels, never torn), ``readers`` (one reader per segment, opened on first use), ``pixels`` (formats and
channel orders).
"""

from common.shm.layout import DEFAULT_SHM_DIR, frame_bytes, frame_shape, segment_name
from common.shm.pixels import ChannelOrder, channel_order, colour_view, convert
from common.shm.reader import FrameRingReader, FrameView
from common.shm.readers import FrameReaders
from common.shm.writer import FrameRingWriter, SlotFill

__all__ = [
    "DEFAULT_SHM_DIR",
    "ChannelOrder",
    "FrameReaders",
    "FrameRingReader",
    "FrameRingWriter",
    "FrameView",
    "SlotFill",
    "channel_order",
    "colour_view",
    "convert",
    "frame_bytes",
    "frame_shape",
    "segment_name",
]

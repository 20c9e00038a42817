"""Shared-memory frame rings: pixels are written once by ingest and read in place by everyone else."""

from common.shm.pixels import ChannelOrder, channel_order, colour_view, convert
from common.shm.ring import (
    DEFAULT_SHM_DIR,
    FrameReaders,
    FrameRingReader,
    FrameRingWriter,
    FrameView,
    SlotFill,
    frame_bytes,
    frame_shape,
    segment_name,
)

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

"""Reading a frame ring from another process: a FrameRef resolved to its pixels, never a torn image.

A reader checks that the slot's generation still equals the one in its FrameRef before and after use
(with real fences, see ``_fence.c``); when the writer has lapped the ring meanwhile it raises
``StaleFrameError`` instead, which is counted in ``edgesight_shm_stale_reads_total``.
"""

from __future__ import annotations

import math
import mmap
import os
import stat as stat_mode
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

import common.shm._fence as _fence
from common.errors import ShmError, StaleFrameError
from common.metrics import SHM_STALE_READS
from common.shm.layout import (
    DEFAULT_SHM_DIR,
    HEADER_BYTES,
    SEGMENT,
    SLOT_HEADER_BYTES,
    RingLayout,
    frame_shape,
    read_header,
)
from common.shm.pixels import ChannelOrder, convert
from contracts import FrameRef

__all__ = ["FrameRingReader", "FrameView"]


class FrameView:
    """A zero-copy view of one frame; valid only until the writer laps the ring."""

    __slots__ = ("_map", "_offset", "array", "generation", "ref")

    def __init__(self, segment: mmap.mmap, ref: FrameRef, array: npt.NDArray[np.uint8], offset: int) -> None:
        self._map = segment  # kept: a reader that remaps meanwhile must not unmap this view
        self._offset = offset
        self.ref = ref
        self.array = array
        self.generation = ref.generation

    def valid(self) -> bool:
        """True if every read of ``array`` so far saw the frame that ``ref`` names."""
        return _fence.still_valid(self._map, self._offset, self.generation)


class FrameRingReader:
    """Maps a camera's segment read-only and resolves FrameRefs to frames.

    Survives the writer's restart: a reclaimed segment is the same file; a recreated one is
    noticed (new inode) and mapped again.
    """

    def __init__(self, name: str, *, shm_dir: Path | str = DEFAULT_SHM_DIR) -> None:
        if not SEGMENT.fullmatch(name):  # a name from the bus: never a path, never outside shm_dir
            raise ShmError(f"{name[:80]!r} is not a frame ring name (edgesight.<site>.<camera>)")
        self.name = name
        self.path = Path(shm_dir) / name
        self.camera = ""
        self._map: mmap.mmap | None = None
        self._inode = -1
        self._bytes: npt.NDArray[np.uint8] | None = None
        self.layout = RingLayout(0, 0)
        self.stale_reads = 0
        self._open()

    def _open(self) -> None:
        try:
            # O_NOFOLLOW: a planted symlink is refused; O_NONBLOCK: a planted FIFO cannot hang us.
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            raise ShmError(f"shared-memory segment {self.path} does not exist; is ingest running?") from None
        except OSError as exc:
            raise ShmError(f"cannot open shared-memory segment {self.path}: {exc.strerror}") from None
        try:
            stat = os.fstat(fd)
            if not stat_mode.S_ISREG(stat.st_mode):
                raise ShmError(f"{self.path} is not a regular file")
            if stat.st_size < HEADER_BYTES:
                raise ShmError(f"{self.path} is not (yet) an EdgeSight frame ring")
            new_map = mmap.mmap(fd, stat.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        header = read_header(new_map, self.path)
        layout = header.layout
        if layout.total > len(new_map):
            new_map.close()
            raise ShmError(f"{self.path} is shorter than its header says")
        self._release()
        self._map, self._inode, self.layout = new_map, stat.st_ino, layout
        self._bytes = np.frombuffer(new_map, dtype=np.uint8)
        self.camera = header.camera

    def _release(self) -> None:
        self._bytes = None
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes when that view does
            self._map = None

    def _replaced(self) -> bool:
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return False

    def view(self, ref: FrameRef) -> FrameView:
        """A zero-copy view of ``ref``'s frame, or StaleFrameError if the slot moved on."""
        if ref.slot >= self.layout.slots and not self._replaced():
            raise ShmError(f"slot {ref.slot} is outside {self.name} ({self.layout.slots} slots)")
        if ref.camera != self.camera:  # another camera's ring: its pixels would be published as this camera's
            raise ShmError(f"{self.name} holds camera {self.camera!r}, not {ref.camera!r}")
        for attempt in range(2):
            assert self._map is not None and self._bytes is not None
            if ref.slot < self.layout.slots:
                offset = self.layout.slot_offset(ref.slot)
                if _fence.load_acquire(self._map, offset) == ref.generation:
                    shape = frame_shape(ref.pixel_format, ref.width, ref.height)
                    start = offset + SLOT_HEADER_BYTES
                    nbytes = math.prod(shape)
                    if nbytes > self.layout.capacity:
                        raise ShmError(f"{ref.width}x{ref.height} does not fit the slots of {self.name}")
                    array = self._bytes[start : start + nbytes].reshape(shape)
                    return FrameView(self._map, ref, array, offset)
            if attempt == 0 and self._replaced():
                self._open()  # the writer restarted with a new layout
                continue
            break
        self._count_stale()
        raise StaleFrameError(f"{self.camera} seq {ref.seq}: slot {ref.slot} was overwritten")

    @contextmanager
    def read(self, ref: FrameRef) -> Iterator[npt.NDArray[np.uint8]]:
        """Use a frame in place; raises StaleFrameError on exit if it was overwritten meanwhile.

        >>> import tempfile
        >>> from common.shm import FrameRingWriter
        >>> with tempfile.TemporaryDirectory() as shm_dir:
        ...     with FrameRingWriter.create("doc", "cam", slots=2, capacity=12, shm_dir=shm_dir) as ring:
        ...         ref = ring.write(np.full((2, 2, 3), 9, np.uint8))
        ...         with FrameRingReader(ref.segment, shm_dir=shm_dir) as reader, reader.read(ref) as frame:
        ...             total = int(frame.sum())  # work on the zero-copy view; an error on exit: discard it
        >>> total
        108
        """
        frame = self.view(ref)
        yield frame.array
        if not frame.valid():
            self._count_stale()
            raise StaleFrameError(f"{self.camera} seq {ref.seq}: slot {ref.slot} was overwritten while read")

    def copy(self, ref: FrameRef, order: ChannelOrder | None = None) -> npt.NDArray[np.uint8]:
        """A private copy of the frame, guaranteed untorn: as the ring holds it, or (``order``) as
        HxWx3 BGR or RGB whatever the ring holds, converted in the same pass as the copy."""
        with self.read(ref) as frame:
            copy: npt.NDArray[np.uint8] = frame.copy() if order is None else convert(frame, ref.pixel_format, order)
        return copy

    def _count_stale(self) -> None:
        self.stale_reads += 1
        SHM_STALE_READS.labels(camera=self.camera or self.name).inc()

    def close(self) -> None:
        self._release()

    def __enter__(self) -> FrameRingReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

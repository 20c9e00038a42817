"""A ring of frame slots in POSIX shared memory: one writer (ingest), many readers in other processes.

Layout (little-endian), one file under ``/dev/shm``::

    header   4096 B   magic, layout version, slot count, slot capacity, slot stride,
                      writer pid + start time, heartbeat (CLOCK_MONOTONIC ns), camera name
    slot i   stride   64 B slot header (generation, seq, capture ns, monotonic ns, width,
                      height, stride, pixel format, nbytes) then the pixels

Every slot's generation is a seqlock: odd while the writer fills it, the next even value after.
A reader checks that the generation still equals the one in its FrameRef before and after use
(with real fences, see ``_fence.c``), so it can never hand out a torn image: it raises
``StaleFrameError`` instead, which is counted.

We map ``/dev/shm/<name>`` directly instead of using ``multiprocessing.shared_memory``: before
Python 3.13 its resource tracker unlinks a segment when any *reader* process exits.
"""

from __future__ import annotations

import math
import mmap
import os
import re
import stat as stat_mode
import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt

from common.errors import ShmError, StaleFrameError
from common.metrics import SHM_STALE_READS
from common.shm import _fence
from common.shm.pixels import ChannelOrder, convert
from contracts import FrameRef, PixelFormat
from contracts.messages import SEGMENT_PATTERN

__all__ = [
    "DEFAULT_SHM_DIR",
    "FrameReaders",
    "FrameRingReader",
    "FrameRingWriter",
    "FrameView",
    "SlotFill",
    "frame_bytes",
    "frame_shape",
    "segment_name",
]

DEFAULT_SHM_DIR = Path("/dev/shm")
_SEGMENT = re.compile(SEGMENT_PATTERN)
MAGIC = b"ESRING\x00\x01"
LAYOUT_VERSION = 1
HEADER_BYTES = 4096
SLOT_HEADER_BYTES = 64
PAGE = 4096
# magic, layout, slots, capacity, stride, pid, pid start, heartbeat, camera
_HEADER = struct.Struct("<8sIIQQQQQ64s")
_HEARTBEAT_OFFSET = 48
# after the 8-byte generation: seq, capture ns, monotonic ns, width, height, stride, format, nbytes
_SLOT = struct.Struct("<QQQIIIIQ")
_FORMAT_CODES: dict[str, int] = {"bgr24": 1, "rgb24": 2, "gray8": 3, "nv12": 4}


def segment_name(site: str, camera: str) -> str:
    """``edgesight.<site>.<camera>``, with anything unsafe for a file name replaced."""

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
    """Bytes one frame of this size and format needs in a slot."""
    return math.prod(frame_shape(pixel_format, width, height))


def _process_start(pid: int) -> int:
    """Start time of ``pid`` in clock ticks since boot (0 if unknown): tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(pid: int, start: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return start == 0 or _process_start(pid) in (0, start)


@dataclass(frozen=True)
class _Layout:
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


def _read_layout(buf: mmap.mmap | bytes, path: Path) -> tuple[_Layout, int, int, int]:
    magic, version, slots, capacity, _stride, pid, start, heartbeat, _camera = _HEADER.unpack_from(buf, 0)
    if magic != MAGIC or version != LAYOUT_VERSION:
        raise ShmError(f"{path} is not an EdgeSight frame ring of layout {LAYOUT_VERSION}")
    return _Layout(slots, capacity), pid, start, heartbeat


class SlotFill:
    """A slot being written: fill ``array``; ``ref`` is set once the write is committed."""

    __slots__ = ("array", "ref")

    def __init__(self, array: npt.NDArray[np.uint8]) -> None:
        self.array = array
        self.ref: FrameRef | None = None


class FrameRingWriter:
    """Owns one camera's segment: creates (or reclaims) it, writes frames, removes it on close.

    >>> import tempfile
    >>> with FrameRingWriter.create("doc", "cam", slots=2, capacity=12, shm_dir=tempfile.mkdtemp()) as ring:
    ...     ref = ring.write(np.zeros((2, 2, 3), np.uint8))
    >>> ref.slot, ref.width, ref.stride
    (0, 2, 6)
    """

    def __init__(self, path: Path, fd: int, layout: _Layout, camera: str) -> None:
        self.path = path
        self.name = path.name
        self.camera = camera
        self.layout = layout
        self._fd = fd
        self._map = mmap.mmap(fd, layout.total, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self._seq = 0

    @classmethod
    def create(
        cls,
        site: str,
        camera: str,
        *,
        slots: int,
        capacity: int,
        shm_dir: Path | str = DEFAULT_SHM_DIR,
        reclaim_after_s: float = 5.0,
    ) -> FrameRingWriter:
        """Create the segment for ``camera``, or reclaim one left by a dead writer of it.

        ``capacity`` is the pixel bytes of the largest frame (see :func:`frame_bytes`). A segment
        whose writer is alive and wrote within ``reclaim_after_s`` is refused with ShmError.
        """
        if slots < 2 or capacity <= 0:
            raise ShmError(f"a frame ring needs at least 2 slots and a positive capacity, got {slots} x {capacity} B")
        path = Path(shm_dir) / segment_name(site, camera)
        layout = _Layout(slots, capacity)
        if not Path(shm_dir).is_dir():
            raise ShmError(f"shared-memory folder {shm_dir} does not exist (site.shm_dir)")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o660)
        except OSError as exc:
            raise ShmError(f"cannot create shared-memory segment {path} (site.shm_dir): {exc.strerror}") from None
        try:
            reuse = cls._claim(fd, path, layout, reclaim_after_s)
        except BaseException:
            os.close(fd)  # someone else's segment: leave it alone
            raise
        if not reuse:
            # A new inode, so readers mapping the old layout notice and remap.
            os.close(fd)
            path.unlink(missing_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o660)
        try:
            if not reuse:
                _reserve(fd, path, layout.total)
            writer = cls(path, fd, layout, camera)
        except BaseException:
            os.close(fd)
            if not reuse:
                path.unlink(missing_ok=True)
            raise
        writer._stamp_header(initialise=not reuse)
        return writer

    @staticmethod
    def _claim(fd: int, path: Path, layout: _Layout, reclaim_after_s: float) -> bool:
        """True if the existing file can be reused in place (same layout, writer gone)."""
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES:
            return False
        with mmap.mmap(fd, HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ) as header:
            try:
                existing, pid, start, heartbeat = _read_layout(header, path)
            except ShmError:
                return False
        fresh = time.monotonic_ns() - heartbeat < reclaim_after_s * 1e9
        if pid != os.getpid() and fresh and _alive(pid, start):
            raise ShmError(f"{path} belongs to a live writer (pid {pid}); is another ingest serving the same camera?")
        return existing == layout and size == layout.total

    def _stamp_header(self, *, initialise: bool) -> None:
        pid = os.getpid()
        camera = self.camera.encode()[:64]
        _HEADER.pack_into(
            self._map,
            0,
            b"\x00" * 8,
            LAYOUT_VERSION,
            self.layout.slots,
            self.layout.capacity,
            self.layout.stride,
            pid,
            _process_start(pid),
            time.monotonic_ns(),
            camera,
        )
        if initialise:
            # Generations start from the clock so that a FrameRef from an earlier writer of this
            # name can never match a slot of this one.
            base = (time.time_ns() // 1000) * 2
            for slot in range(self.layout.slots):
                _fence.store_release(self._map, self.layout.slot_offset(slot), base)
        # The magic goes in last: a reader never trusts a half-written header.
        self._map[0:8] = MAGIC

    def write(
        self,
        frame: npt.NDArray[np.uint8],
        *,
        pixel_format: PixelFormat = "bgr24",
        capture_ns: int | None = None,
        monotonic_ns: int | None = None,
        motion: float = 1.0,
    ) -> FrameRef:
        """Copy ``frame`` into the next slot and return the reference to publish."""
        if frame.dtype != np.uint8:
            raise ValueError(f"frames are uint8, got {frame.dtype}")
        height, width = _dimensions(pixel_format, frame.shape)
        with self.fill(
            width, height, pixel_format, capture_ns=capture_ns, monotonic_ns=monotonic_ns, motion=motion
        ) as slot:
            slot.array[...] = frame
        assert slot.ref is not None
        return slot.ref

    @contextmanager
    def fill(
        self,
        width: int,
        height: int,
        pixel_format: PixelFormat = "bgr24",
        *,
        capture_ns: int | None = None,
        monotonic_ns: int | None = None,
        motion: float = 1.0,
        motion_box: tuple[float, float, float, float] | None = None,
    ) -> Iterator[SlotFill]:
        """Write a frame in place (e.g. ``cv2.resize(src, dst=slot.array)``): no intermediate copy.

        >>> # with ring.fill(1920, 1080) as slot:
        >>> #     np.copyto(slot.array, decoded)
        >>> # publish(slot.ref)
        """
        shape = frame_shape(pixel_format, width, height)
        nbytes = math.prod(shape)
        if nbytes > self.layout.capacity:
            raise ShmError(
                f"a {width}x{height} {pixel_format} frame needs {nbytes} B but slots of {self.name} hold "
                f"{self.layout.capacity} B; size the ring for the camera's largest frame"
            )
        seq = self._seq
        slot_index = seq % self.layout.slots
        offset = self.layout.slot_offset(slot_index)
        pixels_at = offset + SLOT_HEADER_BYTES
        slot = SlotFill(self._bytes[pixels_at : pixels_at + nbytes].reshape(shape))
        _fence.begin_write(self._map, offset)
        try:
            yield slot
        finally:
            # Even on failure the slot must not stay odd; no reference to the new generation exists.
            wall = capture_ns if capture_ns is not None else time.time_ns()
            mono = monotonic_ns if monotonic_ns is not None else time.monotonic_ns()
            stride = nbytes // shape[0]
            _SLOT.pack_into(
                self._map, offset + 8, seq, wall, mono, width, height, stride, _FORMAT_CODES[pixel_format], nbytes
            )
            generation = _fence.end_write(self._map, offset)
            self._seq = seq + 1
            self.touch(mono)
        slot.ref = FrameRef(
            camera=self.camera,
            seq=seq,
            capture_ns=wall,
            monotonic_ns=mono,
            segment=self.name,
            slot=slot_index,
            generation=generation,
            width=width,
            height=height,
            pixel_format=pixel_format,
            stride=stride,
            motion=motion,
            motion_box=motion_box,
        )

    def touch(self, now_ns: int | None = None) -> None:
        """Refresh the heartbeat that tells a restarting writer this segment is still served."""
        struct.pack_into("<Q", self._map, _HEARTBEAT_OFFSET, now_ns or time.monotonic_ns())

    def close(self, *, unlink: bool = True) -> None:
        """Unmap and (by default) remove the segment; readers holding views keep their mapping."""
        if self._fd < 0:
            return
        del self._bytes
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a slot view; the mapping goes when that view does
        os.close(self._fd)
        self._fd = -1
        if unlink:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FrameRingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dimensions(pixel_format: PixelFormat, shape: tuple[int, ...]) -> tuple[int, int]:
    """(height, width) of a frame array, checking that its shape fits the format."""
    ok = (len(shape) == 3 and shape[2] == 3) if pixel_format in ("bgr24", "rgb24") else len(shape) == 2
    if not ok:
        raise ValueError(f"a {pixel_format} frame cannot have shape {shape}")
    if pixel_format == "nv12":
        return shape[0] * 2 // 3, shape[1]
    return shape[0], shape[1]


def _reserve(fd: int, path: Path, size: int) -> None:
    """Allocate every page now, so a full /dev/shm is an error here rather than a SIGBUS later."""
    stats = os.statvfs(path.parent)
    free = stats.f_bavail * stats.f_frsize
    if free < size:
        raise ShmError(
            f"{path.parent} has {free / 2**20:.1f} MiB free but camera segment {path.name} needs "
            f"{size / 2**20:.1f} MiB; raise shm_size (compose) or the /dev/shm emptyDir sizeLimit (k3s), "
            "or lower the ring's slots"
        )
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise ShmError(f"cannot allocate {size / 2**20:.1f} MiB for {path}: {exc.strerror}") from exc


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
        if not _SEGMENT.match(name):  # a name from the bus: never a path, never outside shm_dir
            raise ShmError(f"{name[:80]!r} is not a frame ring name (edgesight.<site>.<camera>)")
        self.name = name
        self.path = Path(shm_dir) / name
        self.camera = ""
        self._map: mmap.mmap | None = None
        self._inode = -1
        self._bytes: npt.NDArray[np.uint8] | None = None
        self.layout = _Layout(0, 0)
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
        layout, *_ = _read_layout(new_map, self.path)
        if layout.total > len(new_map):
            new_map.close()
            raise ShmError(f"{self.path} is shorter than its header says")
        self._release()
        self._map, self._inode, self.layout = new_map, stat.st_ino, layout
        self._bytes = np.frombuffer(new_map, dtype=np.uint8)
        self.camera = _HEADER.unpack_from(new_map, 0)[-1].rstrip(b"\x00").decode(errors="replace")

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

        >>> # with reader.read(ref) as frame:
        >>> #     tensor = letterbox(frame)     # work on the zero-copy view
        >>> # (an exception here means: discard ``tensor``)
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


class FrameReaders:
    """A reader per segment, opened on first use: what a consumer of many cameras' FrameRefs holds.
    One thread at a time (a reader may remap after its writer restarts)."""

    def __init__(self, shm_dir: Path | str = DEFAULT_SHM_DIR) -> None:
        self.shm_dir = shm_dir
        self._readers: dict[str, FrameRingReader] = {}

    def reader(self, segment: str) -> FrameRingReader:
        reader = self._readers.get(segment)
        if reader is None:
            reader = self._readers[segment] = FrameRingReader(segment, shm_dir=self.shm_dir)
        return reader

    def copy(self, ref: FrameRef, order: ChannelOrder | None = None) -> npt.NDArray[np.uint8]:
        """See :meth:`FrameRingReader.copy`."""
        return self.reader(ref.segment).copy(ref, order)

    def close(self) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

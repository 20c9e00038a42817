"""The one writer of a frame ring (ingest): creates or reclaims a camera's segment, fills slots in place.

A slot is filled under its seqlock (:mod:`common.shm.layout`): the generation goes odd, the pixels and
the slot's fields are written, the generation goes even; the FrameRef to publish names that even
generation. We map ``/dev/shm/<name>`` directly instead of using ``multiprocessing.shared_memory``:
before Python 3.13 its resource tracker unlinks a segment when any *reader* process exits.
"""

from __future__ import annotations

import math
import mmap
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import numpy.typing as npt

import common.shm._fence as _fence
from common.errors import ShmError
from common.shm.layout import (
    DEFAULT_SHM_DIR,
    FORMAT_CODES,
    HEADER,
    HEADER_BYTES,
    HEARTBEAT,
    HEARTBEAT_OFFSET,
    LAYOUT_VERSION,
    MAGIC,
    SLOT_FRAME,
    SLOT_FRAME_OFFSET,
    SLOT_HEADER_BYTES,
    RingLayout,
    frame_shape,
    read_header,
    segment_name,
)
from contracts import FrameRef, PixelFormat

__all__ = ["FrameRingWriter", "SlotFill"]


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


class SlotFill:
    """A slot being written: fill ``array``; ``ref`` is set once the write is committed."""

    __slots__ = ("array", "ref")

    def __init__(self, array: npt.NDArray[np.uint8]) -> None:
        self.array = array
        self.ref: FrameRef | None = None


class FrameRingWriter:
    """Owns one camera's segment: creates (or reclaims) it, writes frames, removes it on close.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as shm_dir:
    ...     with FrameRingWriter.create("doc", "cam", slots=2, capacity=12, shm_dir=shm_dir) as ring:
    ...         ref = ring.write(np.zeros((2, 2, 3), np.uint8))
    >>> ref.segment, ref.slot, ref.width, ref.stride
    ('edgesight.doc.cam', 0, 2, 6)
    """

    def __init__(self, path: Path, fd: int, layout: RingLayout, camera: str) -> None:
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
        layout = RingLayout(slots, capacity)
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
    def _claim(fd: int, path: Path, layout: RingLayout, reclaim_after_s: float) -> bool:
        """True if the existing file can be reused in place (same layout, writer gone)."""
        size = os.fstat(fd).st_size
        if size < HEADER_BYTES:
            return False
        with mmap.mmap(fd, HEADER_BYTES, mmap.MAP_SHARED, mmap.PROT_READ) as header:
            try:
                existing = read_header(header, path)
            except ShmError:
                return False
        fresh = time.monotonic_ns() - existing.heartbeat_ns < reclaim_after_s * 1e9
        pid = existing.pid
        if pid != os.getpid() and fresh and _alive(pid, existing.pid_start):
            raise ShmError(f"{path} belongs to a live writer (pid {pid}); is another ingest serving the same camera?")
        return existing.layout == layout and size == layout.total

    def _stamp_header(self, *, initialise: bool) -> None:
        pid = os.getpid()
        camera = self.camera.encode()[:64]
        HEADER.pack_into(
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

        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as shm_dir:
        ...     with FrameRingWriter.create("doc", "cam", slots=2, capacity=12, shm_dir=shm_dir) as ring:
        ...         with ring.fill(2, 2) as slot:
        ...             slot.array[...] = 255  # or cv2.resize(src, dst=slot.array)
        ...         ref = slot.ref  # to publish
        >>> ref.seq, ref.generation % 2  # an even generation: the write is done
        (0, 0)
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
            fields = (seq, wall, mono, width, height, stride, FORMAT_CODES[pixel_format], nbytes)
            SLOT_FRAME.pack_into(self._map, offset + SLOT_FRAME_OFFSET, *fields)
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
        HEARTBEAT.pack_into(self._map, HEARTBEAT_OFFSET, now_ns or time.monotonic_ns())

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

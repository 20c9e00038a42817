"""The frame ring across processes: no torn frame, stale reads counted, writer restarts survived."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.errors import ShmError, StaleFrameError
from common.metrics import SHM_STALE_READS
from common.shm import FrameRingReader, FrameRingWriter, frame_bytes, segment_name
from contracts import FrameRef, decode
from tests.integration.shm_writer import fill_value
from tests.support import deadline, scaled


class WriterProcess:
    def __init__(self, shm_dir: Path, address: str, env: dict[str, str], **options: object) -> None:
        argv = [sys.executable, "-m", "tests.integration.shm_writer", "--dir", str(shm_dir), "--publish", address]
        for key, value in options.items():
            argv += [f"--{key}", str(value)]
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        return self.process.wait(timeout=10)


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    # A real tmpfs: the same kind of memory and mmap semantics as production.
    folder = Path("/dev/shm") / f"edgesight-test-{os.getpid()}-{tmp_path.name}"
    folder.mkdir()
    yield folder
    for leftover in folder.iterdir():
        leftover.unlink()
    folder.rmdir()


@pytest.fixture
def refs(tmp_path: Path) -> Iterator[tuple[str, zmq.Socket[bytes]]]:
    address = f"ipc://{tmp_path}/frames.sock"
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.RCVHWM, 4)
    sub.connect(address)
    yield address, sub
    sub.close(linger=0)
    context.term()


def next_ref(sub: zmq.Socket[bytes], timeout_s: float = 30) -> FrameRef:
    """The newest FrameRef queued (a consumer skips to the newest frame)."""
    assert sub.poll(round(scaled(timeout_s) * 1000)), "no FrameRef arrived"
    body = sub.recv_multipart()[1]
    while sub.poll(0):
        body = sub.recv_multipart()[1]
    return decode(body, FrameRef)


def test_full_speed_writer_never_yields_a_torn_frame(shm_dir: Path, refs, python_env) -> None:  # type: ignore[no-untyped-def]
    address, sub = refs
    writer = WriterProcess(shm_dir, address, python_env, slots=8, width=640, height=480)
    valid = stale = 0
    metric_before = SHM_STALE_READS.labels(camera="cam")._value.get()
    try:
        reader = FrameRingReader(segment_name("test", "cam"), shm_dir=shm_dir)
        # at least 4 s and 100 whole frames: on a loaded machine the 4 s alone gave 93
        started, give_up = time.monotonic(), deadline(60)
        rng = np.random.default_rng(1)
        while (time.monotonic() < started + 4 or valid <= 100) and time.monotonic() < give_up:
            ref = next_ref(sub)
            try:
                with reader.read(ref) as frame:
                    copy = frame.copy()
                    time.sleep(rng.uniform(0, 0.003))  # a slow consumer: the writer sometimes laps it
            except StaleFrameError:
                stale += 1
                continue
            valid += 1
            expected = fill_value(ref.seq)
            assert copy.min() == copy.max() == expected, f"torn frame at seq {ref.seq}"
    finally:
        assert writer.stop() == 0
    assert valid > 100
    assert stale > 0, "the writer never lapped the reader; the test proved nothing"
    assert reader.stale_reads == stale
    assert SHM_STALE_READS.labels(camera="cam")._value.get() - metric_before == stale
    assert not (shm_dir / segment_name("test", "cam")).exists(), "clean shutdown removes the segment"


def test_reader_survives_writer_sigkill_and_restart(shm_dir: Path, refs, python_env) -> None:  # type: ignore[no-untyped-def]
    address, sub = refs
    writer = WriterProcess(shm_dir, address, python_env, slots=4, fps=200)
    reader = FrameRingReader(segment_name("test", "cam"), shm_dir=shm_dir)
    before = reader.copy(next_ref(sub))
    assert before.shape == (240, 320, 3)
    writer.stop(signal.SIGKILL)
    assert (shm_dir / segment_name("test", "cam")).exists(), "SIGKILL leaves the segment behind"

    restarted = WriterProcess(shm_dir, address, python_env, slots=4, fps=200)  # reclaims it
    try:
        frames = []
        while len(frames) < 20:
            ref = next_ref(sub)
            if ref.seq < 5:
                continue
            try:
                frames.append((ref.seq, reader.copy(ref)))
            except StaleFrameError:
                pass
        assert all(f.min() == f.max() == fill_value(seq) for seq, f in frames)
    finally:
        restarted.stop(signal.SIGKILL)

    relaid = WriterProcess(shm_dir, address, python_env, slots=3, width=160, height=120, fps=200)  # a new layout
    try:
        ref = next_ref(sub)
        while ref.width != 160:
            ref = next_ref(sub)
        frame = reader.copy(ref)
        assert frame.shape == (120, 160, 3) and reader.layout.slots == 3
    finally:
        relaid.stop()


def test_a_live_writer_keeps_its_segment(shm_dir: Path) -> None:
    capacity = frame_bytes("bgr24", 64, 48)
    with FrameRingWriter.create("s", "c", slots=2, capacity=capacity, shm_dir=shm_dir) as owner:
        owner.write(np.zeros((48, 64, 3), np.uint8))
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from common.shm import FrameRingWriter as W; "
                f"W.create('s', 'c', slots=2, capacity={capacity}, shm_dir={str(shm_dir)!r})",
            ],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).parents[2],
        )
        assert probe.returncode != 0
        assert f"belongs to a live writer (pid {os.getpid()})" in probe.stderr


def test_too_little_shared_memory_is_a_clear_error(shm_dir: Path) -> None:
    stats = os.statvfs(shm_dir)
    free = stats.f_bavail * stats.f_frsize
    with pytest.raises(ShmError, match=r"MiB free but camera segment edgesight\.s\.big needs .* MiB"):
        FrameRingWriter.create("s", "big", slots=2, capacity=free, shm_dir=shm_dir)
    assert not (shm_dir / "edgesight.s.big").exists()


def test_missing_segment_and_oversized_frame(shm_dir: Path) -> None:
    with pytest.raises(ShmError, match="does not exist; is ingest running"):
        FrameRingReader("edgesight.s.nobody", shm_dir=shm_dir)
    with (
        FrameRingWriter.create("s", "c", slots=2, capacity=100, shm_dir=shm_dir) as ring,
        pytest.raises(ShmError, match="size the ring"),
    ):
        ring.write(np.zeros((10, 10, 3), np.uint8))


def test_segments_named_on_the_bus_stay_inside_shm_dir(shm_dir: Path, tmp_path: Path) -> None:
    """A forged FrameRef must not make a reader open any path, follow a link or hang on a FIFO."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for name in ("../../tmp/fifo", str(fifo), "edgesight.s.c/../x", "passwd"):
        with pytest.raises(ShmError, match="not a frame ring name"):
            FrameRingReader(name, shm_dir=shm_dir)
    os.mkfifo(shm_dir / "edgesight.s.fifo")
    with pytest.raises(ShmError, match="not a regular file"):
        FrameRingReader("edgesight.s.fifo", shm_dir=shm_dir)  # O_NONBLOCK: returns at once instead of hanging
    (shm_dir / "edgesight.s.link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ShmError, match="cannot open"):
        FrameRingReader("edgesight.s.link", shm_dir=shm_dir)

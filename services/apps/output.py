"""What an app prints and logs reaches the apps service's log: cut, rate-limited, never read whole.

An app is untrusted output: a 2 MiB line without a newline, 50,000 lines a second or a 300 MiB
log file must cost the service a bounded amount of memory and log, and never another app's turn.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import stat
import time
from pathlib import Path

from services.apps import metrics

__all__ = ["LineGate", "follow_log_files", "relay_lines"]

log = logging.getLogger(__name__)

MAX_LINE = 4096  # bytes of one line kept; the rest is cut and counted
READ_CHUNK = 65536
LINES_PER_S = 50.0  # relayed to the service's log per app, on average...
BURST = 200  # ...with this many at once
MAX_FILES = 16  # log files followed per app
FILE_READ = 256 * 1024  # bytes read from an app's log files per look, all of them together
MAX_ENTRIES = 256  # folder entries looked at per look
SATURATED_PAUSE_S = 0.1  # over its rate, stdout is read at most this often: the app's writes wait
LAST_WORDS = 40  # lines of an app's output kept to explain its exit
FILE_BEHIND = 4 << 20  # further behind than this, the follower skips to the file's newest part


class LineGate:
    """One app's lines into the log: a token bucket, the drops counted and said once a second."""

    def __init__(self, app: str, last_words: collections.deque[str]) -> None:
        self.app = app
        self.last_words = last_words
        self.tokens = float(BURST)
        self.refilled = time.monotonic()
        self.dropped = 0
        self.said = time.monotonic()

    def saturated(self) -> bool:
        """Over its rate now: what comes next is counted in bulk, not looked at line by line."""
        now = time.monotonic()
        self.tokens = min(float(BURST), self.tokens + (now - self.refilled) * LINES_PER_S)
        self.refilled = now
        return self.tokens < 1

    def line(self, raw: bytes, *, cut: bool, source: str) -> None:
        if cut:
            metrics.OUTPUT_CUT.labels(self.app).inc()
        text = raw.decode(errors="replace").rstrip()
        if not text:
            return
        if cut:
            text += " [cut]"
        if source == "output":
            self.last_words.append(text)  # kept whatever the rate: it explains the app's exit
        if self.saturated():
            self.drop(1)
        else:
            self.tokens -= 1
            log.info(f"app {source}", extra={"app": self.app, "line": text})
        self.report()

    def drop(self, count: int) -> None:
        self.dropped += count
        metrics.OUTPUT_DROPPED.labels(self.app).inc(count)

    def report(self) -> None:
        """Says how many lines were dropped, at most once a second; also called on a timer, so that a
        burst followed by silence is said too (not only when a later line comes)."""
        now = time.monotonic()
        if self.dropped and now - self.said >= 1.0:
            log.warning("app output over its rate; lines not logged", extra={"app": self.app, "dropped": self.dropped})
            self.dropped, self.said = 0, now


def split_lines(buffer: bytearray, gate: LineGate, *, source: str, skipping: bool) -> bool:
    """Hands every complete line of ``buffer`` to ``gate`` (and removes it); a partial line longer
    than ``MAX_LINE`` is cut there. Returns whether the rest of a cut line is still to be skipped.
    Linear in the buffer: one pass, one deletion at the end; over the rate, the rest is counted in
    bulk (only its last lines are kept as the app's last words)."""
    start = 0
    while (newline := buffer.find(b"\n", start)) >= 0:
        if skipping:
            skipping, start = False, newline + 1  # the end of a line already cut
            continue
        if gate.saturated():
            last = buffer.rfind(b"\n", start)
            gate.drop(buffer.count(b"\n", start, last + 1))
            if source == "output":
                tail = bytes(buffer[max(start, last - 8 * MAX_LINE) : last]).split(b"\n")[-LAST_WORDS:]
                gate.last_words.extend(line[:MAX_LINE].decode(errors="replace").rstrip() for line in tail)
            start = last + 1
            gate.report()
            break
        line = bytes(buffer[start:newline])
        gate.line(line[:MAX_LINE], cut=len(line) > MAX_LINE, source=source)
        start = newline + 1
    del buffer[:start]
    if len(buffer) > MAX_LINE:
        if not skipping:
            gate.line(bytes(buffer[:MAX_LINE]), cut=True, source=source)
        buffer.clear()
        return True
    return skipping


async def relay_lines(stream: asyncio.StreamReader, gate: LineGate) -> None:
    """The app's stdout and stderr, read in bounded chunks (never ``readline``: no line is too long).
    Over its rate, reading slows down: the pipe fills and the app's own writes wait, not this loop."""
    buffer = bytearray()
    skipping = False
    while chunk := await stream.read(READ_CHUNK):
        buffer += chunk
        skipping = split_lines(buffer, gate, source="output", skipping=skipping)
        if gate.saturated():
            await asyncio.sleep(SATURATED_PAUSE_S)
    if buffer and not skipping:
        gate.line(bytes(buffer[:MAX_LINE]), cut=len(buffer) > MAX_LINE, source="output")


class _Followed:
    def __init__(self, offset: int) -> None:
        self.offset = offset
        self.buffer = bytearray()
        self.skipping = False


async def follow_log_files(folder: Path, gate: LineGate, interval_s: float = 0.5) -> None:
    """What the app writes under /opt/aws/panorama/logs also reaches the service's log: at most
    ``FILE_READ`` bytes per look for all its files together; a file far ahead is skipped to its newest part."""
    followed: dict[Path, _Followed] = {}
    while True:
        _look(folder, followed, gate)
        gate.report()  # the drops of a burst on stdout too, once the app has gone quiet
        await asyncio.sleep(interval_s)


def _log_files(folder: Path) -> list[Path]:
    """The ``MAX_FILES`` newest regular ``*.log`` files of the folder, among no more than ``MAX_ENTRIES``
    entries: an app that makes 200,000 files costs this loop no more than one that makes 16 (it may only
    lose the following of its own logs)."""
    found: list[tuple[float, str]] = []
    try:
        with os.scandir(folder) as entries:
            for looked, entry in enumerate(entries):
                if looked >= MAX_ENTRIES:
                    break
                if entry.name.endswith(".log") and entry.is_file(follow_symlinks=False):
                    found.append((entry.stat(follow_symlinks=False).st_mtime, entry.path))
    except OSError:
        pass
    return sorted(Path(path) for _, path in sorted(found, reverse=True)[:MAX_FILES])


def _look(folder: Path, followed: dict[Path, _Followed], gate: LineGate) -> None:
    """One look at the app's log files: one bounded read for them all (fine on the loop)."""
    paths = _log_files(folder)
    budget = FILE_READ
    for path in paths:
        if budget <= 0:
            break
        try:
            chunk, state = _read_new(path, followed, gate, budget)
        except OSError:
            continue  # gone, or not a file: never the follower's end
        if state is None:
            continue
        budget -= len(chunk)
        state.offset += len(chunk)
        state.buffer += chunk
        state.skipping = split_lines(state.buffer, gate, source="log", skipping=state.skipping)
    for gone in set(followed) - set(paths):
        del followed[gone]


def _read_new(
    path: Path, followed: dict[Path, _Followed], gate: LineGate, budget: int
) -> tuple[bytes, _Followed | None]:
    # the folder is the app's: a symlink there (to /etc/shadow, a state file), a FIFO or a folder must
    # not make this service read it, or hang; only a regular file the app itself wrote is followed
    descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            return b"", None
        size = status.st_size
        state = followed.get(path)
        if state is None:  # new to this service: from its newest part, not its start
            state = followed[path] = _Followed(max(0, size - FILE_READ))
        if size < state.offset:
            state.offset, state.buffer = 0, bytearray()  # truncated or rotated
        if size - state.offset > FILE_BEHIND:
            log.warning(
                "app log file grows faster than it is followed; skipping ahead",
                extra={"app": gate.app, "file": path.name, "skipped_bytes": size - FILE_READ - state.offset},
            )
            state.offset, state.buffer, state.skipping = size - FILE_READ, bytearray(), True
        return os.pread(descriptor, min(budget, size - state.offset), state.offset), state
    finally:
        os.close(descriptor)

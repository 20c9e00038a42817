"""Private state on disk: the one place folders and files under ``state_dir`` are made.

The spool, the outbox, the console's history and snapshots, the jsonl files hold what the cameras
saw: no other local user may read them. Every service (and ``edgesight run``, ``edgesight models``) starts
with ``umask 027`` (:func:`restrict_umask`), so that whatever a library creates (SQLite's ``-wal`` and
``-shm`` files, a model store, an app's storage) is 0640 at most; what EdgeSight writes itself goes
through these helpers: folders 0700, files 0600, and ones left looser by an older version are
tightened when opened again.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path
from typing import IO, Any

__all__ = [
    "UMASK",
    "bound_wal",
    "private_dir",
    "private_fd",
    "private_open",
    "private_sqlite",
    "restrict_umask",
    "truncate_wal",
    "write_private",
]

UMASK = 0o027  # group may read (k3s pods share one fsGroup), others nothing
DIR_MODE = 0o700
FILE_MODE = 0o600


def restrict_umask() -> None:
    """At a process's start: nothing it creates is readable by other users."""
    os.umask(UMASK)


def private_dir(path: Path, *, tighten: bool = True) -> Path:
    """``path`` as a folder: created 0700 if missing (missing parents under the umask); if it exists, is
    ours and is looser, tightened (``tighten=False`` for a folder the operator named, which may be shared
    on purpose)."""
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    if tighten:
        info = path.stat()
        shared = path == Path("/tmp") or info.st_mode & stat.S_ISVTX  # never ours to tighten
        if info.st_mode & 0o077 and info.st_uid == os.geteuid() and not shared:
            path.chmod(DIR_MODE)
    return path


def private_fd(path: Path, flags: int = os.O_WRONLY | os.O_APPEND, mode: int = FILE_MODE) -> int:
    """A descriptor of ``path``, created with ``mode`` if missing, and tightened to ``mode`` when an
    existing file of ours allows more. Never follows a symbolic link."""
    descriptor = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        info = os.fstat(descriptor)
        if stat.S_IMODE(info.st_mode) & ~mode and info.st_uid == os.geteuid():
            os.fchmod(descriptor, stat.S_IMODE(info.st_mode) & mode)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def private_open(path: Path, mode: str = "ab") -> IO[Any]:
    """``open(path, mode)`` for ``a``/``w`` modes (text or binary), through :func:`private_fd`."""
    flags = os.O_WRONLY | (os.O_APPEND if "a" in mode else os.O_TRUNC)
    return os.fdopen(private_fd(path, flags), mode)


def write_private(path: Path, data: bytes) -> None:
    """Writes ``data`` as the whole of a private file."""
    with private_open(path, "wb") as file:
        file.write(data)


def private_sqlite(path: Path) -> Path:
    """``path`` ready for ``sqlite3.connect``: its folder private, the database private, and the side
    files an older version left (``-wal``, ``-shm``, ``-journal``) tightened. New side files take the
    database's mode (SQLite copies it), under the process's umask."""
    private_dir(path.parent)
    os.close(private_fd(path, os.O_RDONLY))  # an empty file is a new database to SQLite
    for suffix in ("-wal", "-shm", "-journal"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.close(private_fd(side, os.O_RDONLY))
    return path


def bound_wal(db: sqlite3.Connection, max_bytes: int) -> int:
    """Keeps a WAL database's ``-wal`` file small beside a quota of ``max_bytes``: checkpointed every
    sixteenth of it (64 KB to 4 MB) and cut back to that after each checkpoint (SQLite's default lets
    it grow to 4 MB and keeps it there). Returns the bytes to leave out of the quota for the side
    files (that, one shared-memory index of 32 KB and slack for the last transaction's pages)."""
    limit = _wal_limit(max_bytes)
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    db.execute(f"PRAGMA wal_autocheckpoint={max(limit // page_size, 1)}")
    db.execute(f"PRAGMA journal_size_limit={limit}")
    return 2 * limit + (32 << 10)


def truncate_wal(db: sqlite3.Connection, path: Path, max_bytes: int) -> None:
    """After a large transaction (a batch of snapshots) the ``-wal`` file holds all of it until the next
    checkpoint: checkpoint now and truncate it when it is over its share (:func:`bound_wal`)."""
    wal = path.with_name(path.name + "-wal")
    try:
        size = wal.stat().st_size
    except FileNotFoundError:
        return
    if size > _wal_limit(max_bytes):
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _wal_limit(max_bytes: int) -> int:
    return min(max(max_bytes // 16, 64 << 10), 4 << 20)

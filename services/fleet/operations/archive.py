"""Unpacking an application project archive (``.tar.gz`` or ``.zip``) that came over the network.

Nothing in the archive is trusted but its bytes' digest: every member is checked before it is
written, and the archive is refused whole (:class:`UnsafeArchive`, the folder left as it was) for a
name that is absolute or climbs out (``..``), a link of either kind, a device or any other special
file, an encrypted or sparse member, a name given twice, more than ``max_members`` members, or more
than ``max_bytes`` in all (counted as written, not as declared). Files are written by this code, never
by ``extractall``, each created anew (never through an existing path).

>>> import io, tarfile, tempfile
>>> from pathlib import Path
>>> def tar_gz(path: Path, members: dict[str, bytes]) -> None:
...     with tarfile.open(path, "w:gz") as archive:
...         for name, data in members.items():
...             info = tarfile.TarInfo(name)
...             info.size = len(data)
...             archive.addfile(info, io.BytesIO(data))
>>> with tempfile.TemporaryDirectory() as folder:
...     tar_gz(Path(folder) / "app.tar.gz", {"project/graphs/app/graph.json": b"{}"})
...     project = unpack(Path(folder) / "app.tar.gz", Path(folder) / "out", max_bytes=1 << 20)
...     sorted(p.relative_to(project).as_posix() for p in project.rglob("*"))
['graphs', 'graphs/app', 'graphs/app/graph.json']
>>> with tempfile.TemporaryDirectory() as folder:
...     tar_gz(Path(folder) / "evil.tar.gz", {"../../etc/cron.d/x": b"* * * * * root sh"})
...     unpack(Path(folder) / "evil.tar.gz", Path(folder) / "out", max_bytes=1 << 20)
Traceback (most recent call last):
...
services.fleet.operations.archive.UnsafeArchive: member '../../etc/cron.d/x': an absolute path or one with '..'
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["MAX_MEMBERS", "UnsafeArchive", "member_path", "unpack"]

MAX_MEMBERS = 10_000
MAX_NAME = 1024
MAX_DEPTH = 32
CHUNK = 1 << 16


class UnsafeArchive(Exception):
    """The archive is refused; the message says which member and why."""


def unpack(archive: Path, into: Path, *, max_bytes: int, max_members: int = MAX_MEMBERS) -> Path:
    """Unpacks ``archive`` into the new folder ``into`` (whole, or not at all) and returns the project's
    folder: ``into``, or the one folder the archive holds everything in."""
    if into.exists():
        raise UnsafeArchive(f"{into} exists already")
    partial = into.with_name(f".{into.name}.unpacking")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        budget = _Budget(max_bytes, max_members)
        if zipfile.is_zipfile(archive):
            _unzip(archive, partial, budget)
        elif tarfile.is_tarfile(archive):
            _untar(archive, partial, budget)
        else:
            raise UnsafeArchive("not a .tar.gz or .zip archive")
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    partial.rename(into)
    entries = list(into.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not (into / "graphs").exists():
        return entries[0]
    return into


class _Budget:
    def __init__(self, max_bytes: int, max_members: int) -> None:
        self.bytes_left, self.members_left = max_bytes, max_members
        self.names: set[PurePosixPath] = set()

    def member(self, name: PurePosixPath) -> None:
        self.members_left -= 1
        if self.members_left < 0:
            raise UnsafeArchive("too many members")
        if name in self.names:
            raise UnsafeArchive(f"member {str(name)!r} appears twice")
        self.names.add(name)

    def take(self, size: int, name: PurePosixPath) -> None:
        self.bytes_left -= size
        if self.bytes_left < 0:
            raise UnsafeArchive(f"member {str(name)!r}: the archive expands past its limit")


def member_path(name: str) -> PurePosixPath:
    """A member's name as a plain relative path, or UnsafeArchive.

    >>> member_path("./project/app.py")
    PurePosixPath('project/app.py')
    >>> member_path("../etc/passwd")
    Traceback (most recent call last):
    ...
    services.fleet.operations.archive.UnsafeArchive: member '../etc/passwd': an absolute path or one with '..'
    """
    shown = repr(name[:200])
    if not name or len(name) > MAX_NAME or "\x00" in name or "\\" in name:
        raise UnsafeArchive(f"member {shown}: not a plain file name")
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise UnsafeArchive(f"member {shown}: an absolute path or one with '..'")
    parts = [part for part in path.parts if part != "."]
    if not parts or len(parts) > MAX_DEPTH:
        raise UnsafeArchive(f"member {shown}: not a plain file name")
    return PurePosixPath(*parts)


def _untar(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            for info in tar:  # streamed: a member is checked before the next is read
                name = member_path(info.name)
                budget.member(name)
                if info.isdir():
                    _folder(into, name)
                elif info.isreg() and info.type != tarfile.GNUTYPE_SPARSE:
                    budget.take(info.size, name)
                    source = tar.extractfile(info)
                    if source is None:
                        raise UnsafeArchive(f"member {str(name)!r} cannot be read")
                    with source:
                        _file(into, name, source, info.size)
                else:
                    kind = "a link" if info.issym() or info.islnk() else "not a regular file"
                    raise UnsafeArchive(f"member {str(name)!r} is {kind}; a project holds files and folders")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeArchive(f"the archive is corrupt: {exc}") from None


def _unzip(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        with zipfile.ZipFile(archive) as zipped:
            for info in zipped.infolist():
                name = member_path(info.filename)
                budget.member(name)
                mode = info.external_attr >> 16
                if mode and stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise UnsafeArchive(f"member {str(name)!r} is a link or special file; a project holds files")
                if info.flag_bits & 0x1:
                    raise UnsafeArchive(f"member {str(name)!r} is encrypted")
                if info.is_dir():
                    _folder(into, name)
                    continue
                budget.take(info.file_size, name)
                with zipped.open(info) as source:
                    _file(into, name, source, info.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, NotImplementedError) as exc:
        raise UnsafeArchive(f"the archive is corrupt: {exc}") from None


def _folder(into: Path, name: PurePosixPath) -> Path:
    path = into.joinpath(*name.parts)
    path.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or not path.is_dir():  # only ever folders made here; checked all the same
        raise UnsafeArchive(f"member {str(name)!r} is not a folder")
    return path


def _file(into: Path, name: PurePosixPath, source: IO[bytes], declared: int) -> None:
    """Writes one member, created anew, no more bytes than it declared (nor than the budget)."""
    folder = _folder(into, name.parent) if name.parent.parts else into
    descriptor = os.open(folder / name.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640)
    with os.fdopen(descriptor, "wb") as out:
        written = 0
        for chunk in _chunks(source):
            written += len(chunk)
            if written > declared:
                raise UnsafeArchive(f"member {str(name)!r} is longer than it declares")
            out.write(chunk)
    if written != declared:
        raise UnsafeArchive(f"member {str(name)!r} is shorter than it declares")


def _chunks(source: IO[bytes]) -> Iterator[bytes]:
    while chunk := source.read(CHUNK):
        yield chunk

"""Unpacking an application project archive (``.tar.gz`` or ``.zip``) that came over the network.

Nothing in the archive is trusted but its bytes' digest: every member is checked before it is
written, and the archive is refused whole (:class:`UnsafeArchive`, the folder left as it was) for a
name that is absolute or climbs out (``..``), a link of either kind, a device or any other special
file, an encrypted or sparse member, a name given twice, more than ``max_members`` members, or more
than ``max_bytes`` in all (counted as written, not as declared). Files are written by this code, never
by ``extractall``, each created anew (never through an existing path).

Before ``tarfile`` or ``zipfile`` parse anything, what they would hold in memory is bounded: ``tarfile``
reads a GNU long name or a pax header whole (one may declare a gigabyte) and ``zipfile`` the whole
central directory (a ZipInfo for each entry, however many it declares). So a tar's 512-byte headers
are walked first, decompressed as a stream, and an extended header over 64 kB, more than
``max_members`` members or more than ``max_bytes`` declared is refused unread; a zip's end records are
read first and more than ``max_members`` entries or a central directory over 4 MB is refused.

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

import bz2
import gzip
import io
import lzma
import os
import re
import shutil
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

__all__ = ["MAX_CENTRAL_DIRECTORY", "MAX_EXTENDED_HEADER", "MAX_MEMBERS", "UnsafeArchive", "member_path", "unpack"]

MAX_MEMBERS = 10_000
MAX_NAME = 1024
MAX_DEPTH = 32
CHUNK = 1 << 16
MAX_EXTENDED_HEADER = 1 << 16  # a tar's GNU long name/link or pax header: tarfile reads it whole
MAX_CENTRAL_DIRECTORY = 4 << 20  # a zip's: zipfile reads it whole, and makes a ZipInfo of each entry
BLOCK = tarfile.BLOCKSIZE
_EXTENDED = {
    tarfile.GNUTYPE_LONGNAME: "GNU long name",
    tarfile.GNUTYPE_LONGLINK: "GNU long link",
    tarfile.XHDTYPE: "pax",
    tarfile.SOLARIS_XHDTYPE: "pax",
    tarfile.XGLTYPE: "pax global",
}
_PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")  # tarfile's own: the same records, read the same way
_END_OF_DIRECTORY = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_END_OF_DIRECTORY = struct.Struct("<4sQ2H2L4Q")
_DIRECTORY_ENTRY = struct.Struct("<4s4B4HL2L5H2L")


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
        if zipfile.is_zipfile(archive):  # reads the last 64 kB at most
            _check_zip_directory(archive, max_members)
            _unzip(archive, partial, budget)
        else:
            _check_tar_headers(archive, max_bytes, max_members)
            _untar(archive, partial, budget)
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


def _tar_stream(archive: Path) -> io.BufferedIOBase:
    """The archive's tar stream, decompressed as it is read: the headers' walk and tarfile read this very
    stream (tarfile's ``r:*`` could take another reading of the same bytes than the walk did)."""
    with archive.open("rb") as file:
        magic = file.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(archive, "rb")
    return archive.open("rb")


def _check_tar_headers(archive: Path, max_bytes: int, max_members: int) -> None:
    """Walks the tar's headers as tarfile would, holding a block at a time (an extended header's
    64 kB at most); refuses what would make tarfile hold more."""
    try:
        with _tar_stream(archive) as stream:
            _walk_tar_headers(stream, max_bytes, max_members)
    except (OSError, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise UnsafeArchive(f"the archive is corrupt: {exc}") from None


def _walk_tar_headers(stream: io.BufferedIOBase, max_bytes: int, max_members: int) -> None:
    members = declared = 0
    extended: list[bytes] = []  # the extended headers read since the last member
    pax_size: int | None = None
    while True:
        block = _read(stream, BLOCK)
        if len(block) < BLOCK or not block.strip(b"\0"):  # tarfile stops there too: the end
            if extended:
                raise UnsafeArchive("the archive is corrupt: it ends after an extended header")
            if members == 0 and len(block) < BLOCK:
                raise UnsafeArchive("not a .tar.gz or .zip archive")
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError:
            if extended:
                raise UnsafeArchive("the archive is corrupt: a bad header after an extended header") from None
            if members == 0:
                raise UnsafeArchive("not a .tar.gz or .zip archive") from None
            return  # tarfile ends the archive at a bad header after the first, unread
        if info.size < 0:
            raise UnsafeArchive(f"member {info.name[:200]!r} declares a negative size")
        if info.type in _EXTENDED:
            pax = _extended_header(stream, info, extended)
            pax_size = pax_size if pax_size is not None else pax  # the first one's wins in tarfile
            continue
        if info.type == tarfile.GNUTYPE_SPARSE:
            raise UnsafeArchive(f"member {info.name[:200]!r} is sparse: not a regular file")
        members += 1
        if members > max_members:
            raise UnsafeArchive(f"too many members: more than {max_members}")
        if info.isreg() or info.type not in tarfile.SUPPORTED_TYPES:  # tarfile skips data for these only
            size = info.size if pax_size is None else pax_size
            declared += size
            if declared > max_bytes:
                raise UnsafeArchive(f"the archive expands past its limit: its members declare over {max_bytes} bytes")
            _skip(stream, _blocks(size))
        extended, pax_size = [], None


def _extended_header(stream: io.BufferedIOBase, info: tarfile.TarInfo, extended: list[bytes]) -> int | None:
    """Reads one GNU long name/link or pax header (after refusing one over 64 kB, or a second of a kind
    for one member); returns the member size a local pax header sets, if any."""
    what = _EXTENDED[info.type]
    if info.size > MAX_EXTENDED_HEADER:
        raise UnsafeArchive(
            f"a {what} header declares {info.size} bytes, over the limit of {MAX_EXTENDED_HEADER}: refused unread"
        )
    kind = tarfile.XHDTYPE if info.type == tarfile.SOLARIS_XHDTYPE else info.type
    if (kind in extended and kind != tarfile.XGLTYPE) or len(extended) >= 8:
        raise UnsafeArchive(f"more than one {what} header for one member")
    extended.append(kind)
    data = _read(stream, _blocks(info.size))
    if len(data) < _blocks(info.size):
        raise UnsafeArchive("the archive is corrupt: it ends inside an extended header")
    if kind == tarfile.GNUTYPE_LONGNAME or kind == tarfile.GNUTYPE_LONGLINK:
        return None
    return _pax_size(data, is_global=kind == tarfile.XGLTYPE)


def _pax_size(data: bytes, *, is_global: bool) -> int | None:
    """The ``size`` record of a pax header, read as tarfile reads it; sparse files are refused, and so
    is a global size (tarfile would give it to every member after)."""
    size, pos = None, 0
    while match := _PAX_RECORD.match(data, pos):
        length, keyword = int(match[1]), match[2]
        if length == 0:
            raise UnsafeArchive("the archive is corrupt: a bad pax record")
        value = data[match.end(2) + 1 : match.start(1) + length - 1]
        if keyword.startswith(b"GNU.sparse"):
            raise UnsafeArchive("a member is sparse: not a regular file")
        if keyword == b"size":
            if is_global or not value.isdigit():
                raise UnsafeArchive("the archive is corrupt: a pax size that is global or not a number")
            size = int(value)
        pos += length
    return size


def _blocks(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _read(stream: io.BufferedIOBase, size: int) -> bytes:
    parts: list[bytes] = []
    while size > 0 and (part := stream.read(min(size, CHUNK))):
        parts.append(part)
        size -= len(part)
    return b"".join(parts)


def _skip(stream: io.BufferedIOBase, size: int) -> None:
    while size > 0:
        part = stream.read(min(size, CHUNK))
        if not part:
            raise UnsafeArchive("the archive is corrupt: it ends inside a member")
        size -= len(part)


def _check_zip_directory(archive: Path, max_members: int) -> None:
    """Refuses a zip whose end records declare more than ``max_members`` entries or a central directory
    over MAX_CENTRAL_DIRECTORY, then counts the entries that directory really holds (as zipfile walks it),
    before zipfile reads it whole."""
    with archive.open("rb") as file:
        entries, size, start = _zip_directory(file)
        if entries > max_members:
            raise UnsafeArchive(f"the archive's directory declares {entries} entries; the limit is {max_members}")
        if size > MAX_CENTRAL_DIRECTORY:
            raise UnsafeArchive(
                f"the archive's central directory is {size} bytes, over the limit of {MAX_CENTRAL_DIRECTORY}"
            )
        if start < 0:
            raise UnsafeArchive("the archive is corrupt: a central directory before the file's start")
        file.seek(start)
        directory = file.read(size)
    position = count = 0
    while position < size:  # zipfile's walk: entry after entry until the declared size is used up
        if len(directory) - position < _DIRECTORY_ENTRY.size:
            raise UnsafeArchive("the archive is corrupt: a truncated central directory")
        entry = _DIRECTORY_ENTRY.unpack_from(directory, position)
        if entry[0] != b"PK\x01\x02":
            raise UnsafeArchive("the archive is corrupt: a bad central directory")
        position += _DIRECTORY_ENTRY.size + entry[12] + entry[13] + entry[14]
        count += 1
        if count > max_members:
            raise UnsafeArchive(f"too many members: more than {max_members}")


def _zip_directory(file: IO[bytes]) -> tuple[int, int, int]:
    """(entries, central directory size, its start) from the end records, found where zipfile finds them."""
    length = file.seek(0, os.SEEK_END)
    reach = max(length - (1 << 16) - _END_OF_DIRECTORY.size, 0)  # the longest comment's
    file.seek(reach)
    tail = file.read()
    last = len(tail) - _END_OF_DIRECTORY.size
    at = last if tail[last : last + 4] == b"PK\x05\x06" and tail[-2:] == b"\0\0" else tail.rfind(b"PK\x05\x06")
    if at < 0 or at > last:
        raise UnsafeArchive("the archive is corrupt: no end of central directory")
    fields = _END_OF_DIRECTORY.unpack_from(tail, at)
    end = reach + at
    entries, size, start = fields[4], fields[5], end - fields[5]
    zip64_at = end - _ZIP64_LOCATOR.size - _ZIP64_END_OF_DIRECTORY.size
    if zip64_at >= 0:
        file.seek(zip64_at)
        record = file.read(_ZIP64_END_OF_DIRECTORY.size + _ZIP64_LOCATOR.size)
        locator = record[_ZIP64_END_OF_DIRECTORY.size :]
        if locator[:4] == b"PK\x06\x07" and record[:4] == b"PK\x06\x06":
            zip64 = _ZIP64_END_OF_DIRECTORY.unpack_from(record)
            entries, size = zip64[7], zip64[8]
            start = zip64_at - size
    return entries, size, start


def _untar(archive: Path, into: Path, budget: _Budget) -> None:
    try:
        with _tar_stream(archive) as stream, tarfile.open(fileobj=stream, mode="r:") as tar:
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
    except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as exc:
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

"""Fetching what a job installs: ``s3://`` (aioboto3) or ``http(s)://`` (aiohttp), resumable and bounded.

A download goes to ``state_dir/fleet/downloads/<sha256>.partial`` and continues where it stopped
(an HTTP ``Range``, S3's ``Range``) when a connection drops or the service restarts mid-way. It is cut
off, and the partial file dropped, as soon as it passes ``max_bytes`` (``site.max_package_mb``); a
server that ignores the range starts the file over. Only once the whole file's SHA-256 is the one the
signed job names is it renamed to ``<sha256>`` and handed over; a file that does not match is
deleted, never used. Without a digest (desired state names a model by version only: the package's
own signature is checked instead) the file is named by its URL's digest.

A transfer slower than ``MIN_RATE_BPS`` over a ``RATE_WINDOW_S`` window is cut off as ``too slow``
(final): a server that trickles a byte now and then (never long enough for the read timeout) would
otherwise hold the site's one change at a time until the job's own timeout.

An HTTP redirect is not followed, to any host: the signed job names the URL fetched, and a server (or
anyone between, for ``http://``) could otherwise turn the appliance's GET to a host it can reach that
the operator never named (the site's own ``/metrics``, a cloud metadata address). A 3xx is a final
failure that says so: a job names the package's final URL (the object store's, not a page redirecting).

Errors are :class:`DownloadFailed`: ``transient`` ones (a dropped connection, HTTP 5xx, a timeout)
are tried again within :func:`download`, the others (HTTP 4xx, too large, too slow, a wrong digest)
are final.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from common._compat import timeout
from common.files import private_dir, private_open
from common.urls import redact

__all__ = ["DownloadFailed", "download", "file_sha256"]

log = logging.getLogger(__name__)

CHUNK = 1 << 16
ATTEMPTS = 4  # tries in a row without progress
FIRST_RETRY_S = 1.0
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0  # no byte for this long: the connection is dead
MIN_RATE_BPS = 1024.0  # bytes a second, averaged over RATE_WINDOW_S: slower is cut off as too slow
RATE_WINDOW_S = 60.0
KEEP_PARTIAL_S = 7 * 86400.0  # a partial download no job came back for in a week is dropped
_SHA256 = re.compile(r"[0-9a-f]{64}")


class DownloadFailed(Exception):
    """A download that did not give a whole, matching file; ``transient``: worth trying again."""

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


async def download(
    url: str,
    sha256: str | None,
    folder: Path,
    max_bytes: int,
    *,
    s3_endpoint_url: str | None = None,
    s3_region: str | None = None,
    attempts: int = ATTEMPTS,
) -> Path:
    """The file at ``url`` in ``folder``, whole and (``sha256`` given) matching; see the module. ``attempts``:
    tries in a row that get no further before a transient failure is final."""
    if sha256 is not None and not _SHA256.fullmatch(sha256):
        raise DownloadFailed("sha256 is not 64 lowercase hex digits")
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("s3", "http", "https"):
        raise DownloadFailed(f"{redact(url)}: not an s3://, https:// or http:// URL")
    private_dir(folder)
    await asyncio.to_thread(_forget_old_partials, folder)
    name = sha256 or "url-" + hashlib.sha256(url.encode()).hexdigest()
    done, partial = folder / name, folder / f"{name}.partial"
    if sha256 is not None and done.is_file() and await asyncio.to_thread(file_sha256, done) == sha256:
        return done  # fetched before (a job tried again): the digest says it is the same file
    done.unlink(missing_ok=True)
    wait, failures = FIRST_RETRY_S, 0
    began, first = time.monotonic(), _size(partial)
    while True:
        before = _size(partial)
        try:
            if scheme == "s3":
                await _from_s3(url, partial, max_bytes, s3_endpoint_url, s3_region)
            else:
                await _from_http(url, partial, max_bytes)
            await _check_digest(partial, sha256, resumed=before > 0)
        except DownloadFailed as exc:
            if _size(partial) > before:  # it got further: a flaky link, not a dead one
                wait, failures = FIRST_RETRY_S, 0
            failures += 1
            if not exc.transient or failures >= attempts:
                raise
            took, gained = time.monotonic() - began, _size(partial) - first
            if took >= RATE_WINDOW_S and gained < MIN_RATE_BPS * took:  # a byte per try is no progress
                raise DownloadFailed(_too_slow(redact(url), gained, took, MIN_RATE_BPS)) from exc
            log.warning("download interrupted; resuming", extra={"url": redact(url), "error": str(exc)})
            await asyncio.sleep(wait)
            wait *= 2
            continue
        partial.rename(done)
        return done


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _check_digest(partial: Path, sha256: str | None, *, resumed: bool) -> None:
    if sha256 is None:
        return
    found = await asyncio.to_thread(file_sha256, partial)
    if found == sha256:
        return
    await asyncio.to_thread(partial.unlink, missing_ok=True)  # never used, never resumed from
    # a resumed file may have been joined to another version's start: one more try from the first byte
    raise DownloadFailed(f"sha256 mismatch: expected {sha256}, got {found}", transient=resumed)


async def _from_http(url: str, partial: Path, max_bytes: int) -> None:
    shown = redact(url)
    offset = await asyncio.to_thread(_size, partial)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=headers, auto_decompress=False, allow_redirects=False) as response,
        ):
            if 300 <= response.status < 400:  # never followed: see the module
                raise DownloadFailed(f"{shown}: HTTP {response.status}: a redirect, not followed; give the final URL")
            if response.status == 416 and offset:
                return  # nothing after what we have: the file is whole (its digest says whether it is right)
            if response.status >= 500 or response.status in (408, 429):
                raise DownloadFailed(f"{shown}: HTTP {response.status}", transient=True)
            if response.status not in (200, 206):
                raise DownloadFailed(f"{shown}: HTTP {response.status}")
            if response.status == 206 and not _range_starts_at(response.headers.get("Content-Range"), offset):
                raise DownloadFailed(f"{shown}: the server sent another range than asked for")
            start = offset if response.status == 206 else 0  # 200: the whole file again
            length = response.content_length
            if length is not None and start + length > max_bytes:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise DownloadFailed(f"{shown}: {start + length} bytes, over the limit of {max_bytes}")
            await _write(response.content.iter_chunked(CHUNK), partial, start, max_bytes, shown)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise DownloadFailed(f"{shown}: {type(exc).__name__}: {redact(str(exc))}", transient=True) from None


def _range_starts_at(content_range: str | None, offset: int) -> bool:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (content_range or "").strip())
    return match is not None and int(match[1]) == offset


async def _from_s3(url: str, partial: Path, max_bytes: int, endpoint_url: str | None, region: str | None) -> None:
    import aioboto3
    from botocore.exceptions import BotoCoreError, ClientError  # type: ignore[import-untyped]

    parts = urllib.parse.urlsplit(url)
    bucket, key = parts.netloc, urllib.parse.unquote(parts.path.lstrip("/"))
    if not bucket or not key:
        raise DownloadFailed(f"{url}: expected s3://BUCKET/KEY")
    offset = await asyncio.to_thread(_size, partial)
    try:
        async with aioboto3.Session().client("s3", endpoint_url=endpoint_url, region_name=region) as s3:
            size = int((await s3.head_object(Bucket=bucket, Key=key))["ContentLength"])
            if size > max_bytes:
                await asyncio.to_thread(partial.unlink, missing_ok=True)
                raise DownloadFailed(f"{url}: {size} bytes, over the limit of {max_bytes}")
            if offset > size:
                offset = 0
            if offset == size and offset:
                return
            extra = {"Range": f"bytes={offset}-"} if offset else {}
            answer = await s3.get_object(Bucket=bucket, Key=key, **extra)
            body = answer["Body"]
            try:
                await _write(_S3Chunks(body), partial, offset, max_bytes, url)
            finally:
                body.close()
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        transient = isinstance(status, int) and (status >= 500 or status in (408, 429))
        raise DownloadFailed(f"{url}: {exc}", transient=transient) from None
    except (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise DownloadFailed(f"{url}: {type(exc).__name__}: {exc}", transient=True) from None


class _S3Chunks:
    """An S3 body's chunks; an iterator of its own, not a generator, so that a read cancelled at a
    window's end (:func:`_at_least`) leaves it usable."""

    def __init__(self, body: Any) -> None:
        self.body = body

    def __aiter__(self) -> _S3Chunks:
        return self

    async def __anext__(self) -> bytes:
        chunk: bytes = await self.body.read(CHUNK)
        if not chunk:
            raise StopAsyncIteration
        return chunk


async def _write(chunks: AsyncIterator[bytes], partial: Path, start: int, max_bytes: int, shown: str) -> None:
    """Appends ``chunks`` to ``partial`` from ``start`` (0: the file starts over), never past ``max_bytes``,
    never slower than ``MIN_RATE_BPS`` over a window of ``RATE_WINDOW_S`` (what came is kept to resume)."""
    written = start
    with private_open(partial, "ab" if start else "wb") as file:
        try:
            async for chunk in _at_least(chunks, MIN_RATE_BPS, RATE_WINDOW_S, shown):
                written += len(chunk)
                if written > max_bytes:
                    break
                file.write(chunk)
        finally:
            file.flush()
    if written > max_bytes:
        await asyncio.to_thread(partial.unlink, missing_ok=True)
        raise DownloadFailed(f"{shown}: more than the limit of {max_bytes} bytes")


async def _at_least(chunks: AsyncIterator[bytes], rate: float, window_s: float, shown: str) -> AsyncIterator[bytes]:
    """``chunks`` as they come, or :class:`DownloadFailed` ``too slow`` at the end of a window of
    ``window_s`` that brought fewer than ``rate * window_s`` bytes: checked on time, a chunk not coming
    is waited for only until the window ends (``chunks``' reads may be cancelled: aiohttp's are)."""
    iterator = aiter(chunks)
    window_end, brought = time.monotonic() + window_s, 0
    while True:
        chunk = b""
        waiting = timeout(max(0.0, window_end - time.monotonic()))
        try:
            async with waiting:
                chunk = await anext(iterator)
        except StopAsyncIteration:
            return
        except (TimeoutError, asyncio.TimeoutError):
            if not waiting.expired():
                raise  # the connection's own read timeout: the caller's to say
        if chunk:
            brought += len(chunk)
            yield chunk
        if time.monotonic() >= window_end:
            if brought < rate * window_s:
                raise DownloadFailed(_too_slow(shown, brought, window_s, rate))
            window_end, brought = time.monotonic() + window_s, 0


def _too_slow(shown: str, brought: int, seconds: float, rate: float) -> str:
    return f"{shown}: too slow: {brought} bytes in {seconds:g} s, under {rate:g} bytes a second"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _forget_old_partials(folder: Path) -> None:
    cutoff = time.time() - KEEP_PARTIAL_S
    for path in folder.glob("*.partial"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()

"""What a hostile party on the broker or behind a package URL can make the fleet service hold in memory.

Archives: a tar whose GNU long name or pax header declares a gigabyte, a zip whose central directory
declares two million entries (or is 94 MB): refused before tarfile or zipfile read them, the peak memory
of a process unpacking one staying small (measured in a child process). MQTT: a client that gives
``max_packet_bytes`` speaks v5 and a real Mosquitto never sends it a larger message; the uplink's
client (v3.1.1, no limit) is as it was.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import struct
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from aiohttp import web

from common.config.uplink import MqttSink
from common.mqtt import client_options
from services.fleet.download import DownloadFailed, download
from services.fleet.operations.archive import MAX_CENTRAL_DIRECTORY, MAX_EXTENDED_HEADER, UnsafeArchive, unpack
from tests.conftest import child_env
from tests.integration.conftest import Mosquitto

GIGABYTE = 1 << 30
MEGABYTE = 1 << 20


# -- archives ------------------------------------------------------------------------------------------
def header(name: str, kind: bytes, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size = kind, size
    return info.tobuf(tarfile.GNU_FORMAT)


def honest_member(name: str = "proj/app.py", data: bytes = b"print(1)\n") -> bytes:
    padding = -len(data) % tarfile.BLOCKSIZE
    return header(name, tarfile.REGTYPE, len(data)) + data + bytes(padding)


def gigabyte_header_tar_gz(path: Path, kind: bytes) -> Path:
    """A ~1 MB .tar.gz whose first header (``kind``) declares, and really holds, 1 GB: a gzip member per
    megabyte of zeros (gzip readers join members), then an honest member and the end of the archive."""
    zeros = gzip.compress(bytes(MEGABYTE), compresslevel=9)
    with path.open("wb") as file:
        file.write(gzip.compress(header("././@LongLink", kind, GIGABYTE)))
        for _ in range(GIGABYTE // MEGABYTE):
            file.write(zeros)
        file.write(gzip.compress(honest_member() + bytes(2 * tarfile.BLOCKSIZE)))
    return path


DIRECTORY_ENTRY = struct.Struct("<4s4B4HL2L5H2L")


def directory_entry(name: bytes = b"a") -> bytes:
    return DIRECTORY_ENTRY.pack(b"PK\x01\x02", 20, 3, 20, 0, 0, 0, 0, 0, 0, 0, 0, len(name), 0, 0, 0, 0, 0, 0) + name


def end_of_directory(entries: int, size: int, offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, min(entries, 0xFFFF), min(entries, 0xFFFF), size, offset, 0)


def zip64_end(entries: int, size: int, offset: int, at: int) -> bytes:
    """A zip64 end of central directory record (at ``at``), its locator and the classic record saying 'see zip64'."""
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    classic = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return record + locator + classic


def huge_directory_zip(path: Path, entries: int, *, zip64: bool, declared: int | None = None) -> Path:
    """A zip of nothing but a central directory of ``entries`` one-letter entries (47 bytes each), its end
    record declaring ``declared`` entries (default: the truth)."""
    entry, batch = directory_entry(), 10_000
    with path.open("wb") as file:
        for done in range(0, entries, batch):
            file.write(entry * min(batch, entries - done))
        size = file.tell()
        count = entries if declared is None else declared
        file.write(zip64_end(count, size, 0, size) if zip64 else end_of_directory(count, size, 0))
    return path


MEASURE = """
import json, resource, sys, tracemalloc
from pathlib import Path
from services.fleet.operations.archive import UnsafeArchive, unpack
def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
before = rss()
tracemalloc.start()
try:
    unpack(Path(sys.argv[1]), Path(sys.argv[2]), max_bytes=64 << 20)
    error = None
except UnsafeArchive as exc:
    error = str(exc)
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"error": error, "peak": peak, "rss_growth": rss() - before}))
"""


def unpack_measured(archive: Path, into: Path) -> dict[str, Any]:
    """``unpack`` in a child process: its refusal, the peak of Python's allocations and how much the
    process's peak RSS grew past what its imports took."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(archive), str(into)],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


SMALL_PEAK = 4 * MEGABYTE  # Python's allocations while refusing (a 64 kB extended header at most)
SMALL_RSS = 16 * MEGABYTE  # the child's peak RSS past its imports (before the fix: 1.6 GB, 800 MB)


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.GNUTYPE_LONGNAME, "GNU long name"), (tarfile.GNUTYPE_LONGLINK, "GNU long link"), (b"x", "pax")],
)
def test_a_gigabyte_extended_tar_header_is_refused_unread(tmp_path: Path, kind: bytes, what: str) -> None:
    archive = gigabyte_header_tar_gz(tmp_path / "evil.tar.gz", kind)
    assert archive.stat().st_size < 2 * MEGABYTE
    result = unpack_measured(archive, tmp_path / "out")
    assert result["error"] == (
        f"a {what} header declares {GIGABYTE} bytes, over the limit of {MAX_EXTENDED_HEADER}: refused unread"
    )
    assert result["peak"] < SMALL_PEAK, result
    assert result["rss_growth"] < SMALL_RSS, result
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz"]  # nothing unpacked, nothing left


@pytest.mark.parametrize(
    ("zip64", "declared", "words"),
    [
        (True, None, "the archive's directory declares 2000000 entries; the limit is 10000"),
        (False, 1, f"the archive's central directory is 94000000 bytes, over the limit of {MAX_CENTRAL_DIRECTORY}"),
    ],
)
def test_a_zip_declaring_two_million_entries_is_refused_before_zipfile_reads_it(
    tmp_path: Path, zip64: bool, declared: int | None, words: str
) -> None:
    archive = huge_directory_zip(tmp_path / "evil.zip", 2_000_000, zip64=zip64, declared=declared)
    assert zipfile.is_zipfile(archive)
    result = unpack_measured(archive, tmp_path / "out")
    assert result["error"] == words
    assert result["peak"] < SMALL_PEAK, result
    assert result["rss_growth"] < SMALL_RSS, result


def test_a_zip_lying_about_its_entry_count_is_counted_as_zipfile_would(tmp_path: Path) -> None:
    archive = huge_directory_zip(tmp_path / "liar.zip", 20_000, zip64=False, declared=3)  # 940 kB of directory
    with pytest.raises(UnsafeArchive, match="too many members: more than 10000"):
        unpack(archive, tmp_path / "out", max_bytes=MEGABYTE)


def test_a_real_zip64_end_record_is_read_where_zipfile_reads_it(tmp_path: Path) -> None:
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as archive:
        archive.writestr("graphs/a/graph.json", "{}")
    data = plain.getvalue()
    entries, size, offset = struct.unpack_from("<10xH2L", data, len(data) - 22)
    (tmp_path / "64.zip").write_bytes(data[:-22] + zip64_end(entries, size, offset, len(data) - 22))
    with zipfile.ZipFile(tmp_path / "64.zip") as check:  # zipfile takes it as zip64
        assert check.namelist() == ["graphs/a/graph.json"]
    project = unpack(tmp_path / "64.zip", tmp_path / "out", max_bytes=MEGABYTE)
    assert (project / "graphs" / "a" / "graph.json").read_text() == "{}"


def test_honest_long_names_and_pax_headers_still_unpack(tmp_path: Path) -> None:
    long_name = "proj/" + "deep/" * 30 + "módulo.py"  # over 100 bytes: a GNU long name or a pax path
    for number, form in enumerate([tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]):
        path = tmp_path / f"{number}.tar.gz"
        with tarfile.open(path, "w:gz", format=form) as archive:
            info = tarfile.TarInfo(long_name)
            info.size = 3
            archive.addfile(info, io.BytesIO(b"x=1"))
        project = unpack(path, tmp_path / f"out{number}", max_bytes=MEGABYTE)
        assert (project / long_name.removeprefix("proj/")).read_bytes() == b"x=1"


def test_a_pax_size_counts_as_tarfile_counts_it(tmp_path: Path) -> None:
    """The header says 0 bytes, the pax record 70 000: tarfile would read 70 000, so the limit sees them."""
    record = b"14 size=70000\n"
    pax = header("pax", tarfile.XHDTYPE, len(record)) + record + bytes(-len(record) % tarfile.BLOCKSIZE)
    body = pax + header("proj/big", tarfile.REGTYPE, 0) + bytes(70_144) + bytes(2 * tarfile.BLOCKSIZE)
    (tmp_path / "pax.tar.gz").write_bytes(gzip.compress(body))
    with pytest.raises(UnsafeArchive, match="expands past its limit"):
        unpack(tmp_path / "pax.tar.gz", tmp_path / "out", max_bytes=65_536)


@pytest.mark.parametrize(
    ("records", "words"),
    [
        (b"22 GNU.sparse.size=10\n", "sparse"),
        (b"13 size=1000\n", "global or not a number"),
    ],
)
def test_sparse_and_global_size_pax_headers_are_refused(tmp_path: Path, records: bytes, words: str) -> None:
    kind = tarfile.XGLTYPE if b" size=" in records else tarfile.XHDTYPE
    body = header("pax", kind, len(records)) + records + bytes(-len(records) % tarfile.BLOCKSIZE) + honest_member()
    (tmp_path / "sparse.tar").write_bytes(body + bytes(2 * tarfile.BLOCKSIZE))
    with pytest.raises(UnsafeArchive, match=words):
        unpack(tmp_path / "sparse.tar", tmp_path / "out", max_bytes=MEGABYTE)


# -- MQTT ----------------------------------------------------------------------------------------------
LIMIT = 256 * 1024


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


async def heard(broker: Mosquitto, options: dict[str, Any], live: list[tuple[str, bytes]]) -> dict[str, int]:
    """Subscribes to ``fleet/#`` with ``options``, publishes ``live`` (then an end marker) from a plain
    client, and returns the size of each message heard up to the marker: the retained ones come first."""
    got: dict[str, int] = {}
    async with aiomqtt.Client(**options, max_queued_incoming_messages=100) as client:
        await client.subscribe("fleet/#", qos=1)
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier="publisher") as publisher:
            for topic, payload in [*live, ("fleet/end", b"end")]:
                await publisher.publish(topic, payload, qos=1)

        async def until_the_end() -> dict[str, int]:
            async for message in client.messages:
                payload = message.payload
                assert isinstance(payload, bytes | bytearray)
                got[message.topic.value] = len(payload)
                if message.topic.value == "fleet/end":
                    return got
            raise AssertionError("the connection ended before the end marker")

        return await asyncio.wait_for(until_the_end(), 20)


def test_a_v5_client_with_a_packet_limit_is_not_sent_larger_messages(mosquitto: Mosquitto) -> None:
    settings = MqttSink(host="127.0.0.1", port=mosquitto.port)
    big, small = bytes(MEGABYTE), b'{"state": {}}'

    async def scenario() -> tuple[dict[str, int], dict[str, int]]:
        async with aiomqtt.Client("127.0.0.1", mosquitto.port, identifier="attacker") as attacker:
            await attacker.publish("fleet/big", big, qos=1, retain=True)
            await attacker.publish("fleet/small", small, qos=1, retain=True)
        live = [("fleet/live-big", big), ("fleet/live-small", small)]
        limited = client_options(settings, "fleet-v5", clean_session=True, max_packet_bytes=LIMIT)
        as_before = client_options(settings, "uplink-v311")  # the uplink's call, then its own clean_session
        return await heard(mosquitto, limited, live), await heard(
            mosquitto, {**as_before, "clean_session": False}, live
        )

    limited, as_before = asyncio.run(scenario())
    assert limited == {"fleet/small": len(small), "fleet/live-small": len(small), "fleet/end": 3}
    assert as_before == {
        "fleet/big": MEGABYTE,
        "fleet/small": len(small),
        "fleet/live-big": MEGABYTE,
        "fleet/live-small": len(small),
        "fleet/end": 3,
    }
    log = (mosquitto.folder / "mosquitto.log").read_text()
    # p5: MQTT v5; p2: Mosquitto's name for v3.1.1
    assert " as fleet-v5 (p5, c1," in log and " as uplink-v311 (p2, c0," in log, log[-2000:]
    assert "Dropping too large outgoing PUBLISH for fleet-v5" in log
    assert "Dropping too large outgoing PUBLISH for uplink-v311" not in log


def test_the_default_options_are_unchanged_and_a_v5_session_can_outlive_its_connection() -> None:
    settings = MqttSink(host="mq.example", username="site")
    assert set(client_options(settings, "a")) == {
        "hostname",
        "port",
        "identifier",
        "username",
        "password",
        "keepalive",
        "tls_context",
        "timeout",
    }
    assert client_options(settings, "a", clean_session=False)["clean_session"] is False
    kept = client_options(settings, "a", clean_session=False, max_packet_bytes=LIMIT)
    assert kept["clean_start"] is False and kept["properties"].SessionExpiryInterval == 0xFFFFFFFF
    assert "clean_session" not in kept  # paho refuses clean_session with MQTT v5
    with pytest.raises(ValueError, match="max_packet_bytes 0"):
        client_options(settings, "a", max_packet_bytes=0)


async def _serve(path: str, handler: Any) -> tuple[web.AppRunner, str]:
    """An HTTP server on a free local port answering GET ``path``: its runner (to clean up) and base URL."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


def test_a_redirect_is_not_followed_to_any_host(tmp_path: Path) -> None:
    """A package server answering 302 to another host (the site's own /metrics, say): never fetched."""
    body = b"package" * 100
    fetched: list[str] = []

    async def scenario() -> None:
        async def elsewhere(request: web.Request) -> web.Response:
            fetched.append(request.path)
            return web.Response(body=body)

        other_runner, other_base = await _serve("/metrics", elsewhere)
        other_url = f"{other_base}/metrics"

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPFound(other_url if request.path == "/away" else "/here")

        runner, url = await _serve("/{name}", redirect)
        try:
            for name in ("away", "same-host"):
                with pytest.raises(DownloadFailed, match="HTTP 302: a redirect, not followed") as failed:
                    await download(f"{url}/{name}", hashlib.sha256(body).hexdigest(), tmp_path, 1 << 20)
                assert not failed.value.transient
        finally:
            await runner.cleanup()
            await other_runner.cleanup()

    asyncio.run(scenario())
    assert fetched == []
    assert list(tmp_path.iterdir()) == []

"""The fleet's job operations on real pieces, without a running site: downloads from a real HTTP server
(and moto's S3) that resume, refuse a wrong digest and stop at the size limit; hostile project archives;
update_rules within the console's limits on a real site file; install_model refusing what the site's keys
did not sign and rolling back what inference refuses; restart_service; SiteWatch itself. Where a job
waits for the site to answer, a stand-in answers on the watch as the service would on the bus."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import stat
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.audit import AuditTrail, audit_path, read_audit_tail
from common.config import load_config
from common.config.site_file import SiteFile
from common.fleet.signing import SignedJob
from common.trust import ModelStore, build_package, generate_key_pair, load_signing_key
from contracts import AppStatus, CameraStatus, Control, Detections, Event, FrameRef, Health
from services.fleet import download as downloads
from services.fleet.context import JobContext, JobFailed
from services.fleet.download import DownloadFailed, download
from services.fleet.operations import run_operation
from services.fleet.operations.archive import UnsafeArchive, unpack
from services.fleet.watch import SiteWatch, service_key
from tests.conftest import write_site

OPERATOR = "0123456789abcdef"
BODY = os.urandom(300_000)
DIGEST = hashlib.sha256(BODY).hexdigest()


# -- a real HTTP server ------------------------------------------------------------------------------
class Files:
    """Serves ``files`` with Range support; records each request's Range; can cut a body half-way once."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.ranges: list[str | None] = []
        self.cut_once: set[str] = set()
        self.ignore_range = False
        self.url = ""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.ranges.append(request.headers.get("Range"))
        if name not in self.files:
            return web.Response(status=404)
        data, start = self.files[name], 0
        if request.headers.get("Range") and not self.ignore_range:
            start = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
            if start >= len(data):
                return web.Response(status=416)
        body = data[start:]
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(body)
        if start:
            response.headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        await response.prepare(request)
        if name in self.cut_once:
            self.cut_once.discard(name)
            await response.write(body[: len(body) // 3])
            assert request.transport is not None
            request.transport.close()  # the connection drops mid-body
            return response
        await response.write(body)
        return response


async def serving(files: Files) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/{name}", files.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    files.url = f"http://127.0.0.1:{port}"
    return runner


def fetch(files: Files, name: str, sha256: str | None, folder: Path, max_bytes: int = 1 << 20) -> Path:
    async def main() -> Path:
        runner = await serving(files)
        try:
            return await download(f"{files.url}/{name}", sha256, folder, max_bytes)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(downloads, "FIRST_RETRY_S", 0.01)


def test_a_download_is_checked_and_kept_by_its_digest(tmp_path: Path) -> None:
    files = Files({"p.espkg": BODY})
    path = fetch(files, "p.espkg", DIGEST, tmp_path)
    assert path == tmp_path / DIGEST and path.read_bytes() == BODY
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fetch(files, "p.espkg", DIGEST, tmp_path) == path and len(files.ranges) == 1  # kept: not fetched again


def test_a_download_resumes_where_it_stopped(tmp_path: Path) -> None:
    (tmp_path / f"{DIGEST}.partial").write_bytes(BODY[:100_000])  # a service that stopped mid-way
    files = Files({"p.espkg": BODY})
    assert fetch(files, "p.espkg", DIGEST, tmp_path).read_bytes() == BODY
    assert files.ranges == ["bytes=100000-"]


def test_a_dropped_connection_is_resumed_with_a_range(tmp_path: Path) -> None:
    files = Files({"p.espkg": BODY})
    files.cut_once.add("p.espkg")
    assert fetch(files, "p.espkg", DIGEST, tmp_path).read_bytes() == BODY
    assert files.ranges[0] is None and files.ranges[1] == f"bytes={len(BODY) // 3}-"


def test_a_server_that_ignores_the_range_starts_the_file_over(tmp_path: Path) -> None:
    (tmp_path / f"{DIGEST}.partial").write_bytes(b"x" * 1000)
    files = Files({"p.espkg": BODY})
    files.ignore_range = True
    assert fetch(files, "p.espkg", DIGEST, tmp_path).read_bytes() == BODY


def test_a_wrong_digest_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    files = Files({"p.espkg": BODY})
    with pytest.raises(DownloadFailed, match=f"sha256 mismatch: expected {'ab' * 32}, got {DIGEST}"):
        fetch(files, "p.espkg", "ab" * 32, tmp_path)
    assert list(tmp_path.iterdir()) == [] and len(files.ranges) == 1  # a fresh download is not tried twice


def test_a_resumed_download_that_does_not_match_starts_over_once(tmp_path: Path) -> None:
    (tmp_path / f"{DIGEST}.partial").write_bytes(os.urandom(1000))  # another file's start
    files = Files({"p.espkg": BODY})
    assert fetch(files, "p.espkg", DIGEST, tmp_path).read_bytes() == BODY
    assert files.ranges == ["bytes=1000-", None]


@pytest.mark.parametrize("declared", [True, False])
def test_a_body_over_the_limit_is_cut_off(tmp_path: Path, declared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    files = Files({"p.espkg": BODY})
    if not declared:  # no Content-Length: counted as it arrives
        monkeypatch.setattr(web.StreamResponse, "content_length", property(lambda self: None, lambda self, v: None))
    with pytest.raises(DownloadFailed, match=r"over the limit|more than the limit"):
        fetch(files, "p.espkg", DIGEST, tmp_path, max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_file_is_final_and_a_bad_scheme_is_refused(tmp_path: Path) -> None:
    files = Files({})
    with pytest.raises(DownloadFailed, match="HTTP 404") as caught:
        fetch(files, "gone.espkg", DIGEST, tmp_path)
    assert not caught.value.transient and len(files.ranges) == 1
    with pytest.raises(DownloadFailed, match="not an s3://"):
        asyncio.run(download("file:///etc/passwd", DIGEST, tmp_path, 1 << 20))


def test_s3_downloads_resume_with_a_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3  # installed with the test extras: never skipped
    from moto.server import ThreadedMotoServer

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{server._server.server_port}"  # type: ignore[attr-defined]
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="people/2.espkg", Body=BODY)
        (tmp_path / f"{DIGEST}.partial").write_bytes(BODY[:1234])
        url = "s3://models/people/2.espkg"
        got = asyncio.run(download(url, DIGEST, tmp_path, 1 << 20, s3_endpoint_url=endpoint, s3_region="us-east-1"))
        assert got.read_bytes() == BODY
        with pytest.raises(DownloadFailed, match="over the limit"):
            asyncio.run(download(url, None, tmp_path / "small", 1000, s3_endpoint_url=endpoint, s3_region="us-east-1"))
    finally:
        server.stop()


# -- hostile archives ----------------------------------------------------------------------------------
def tar_gz(path: Path, members: Iterable[tuple[tarfile.TarInfo, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            archive.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


def test_a_project_archive_unpacks_into_its_folder(tmp_path: Path) -> None:
    archive = tar_gz(tmp_path / "a.tar.gz", [(member("proj/graphs/a/graph.json"), b"{}"), (member("proj/x.py"), b"1")])
    project = unpack(archive, tmp_path / "out", max_bytes=1 << 20)
    assert project == tmp_path / "out" / "proj" and (project / "graphs" / "a" / "graph.json").read_bytes() == b"{}"
    zipped = tmp_path / "a.zip"
    with zipfile.ZipFile(zipped, "w") as archive_zip:
        archive_zip.writestr("graphs/a/graph.json", "{}")
    assert unpack(zipped, tmp_path / "zip", max_bytes=1 << 20) == tmp_path / "zip"


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ([(member("../../evil.py"), b"x")], "with '..'"),
        ([(member("/etc/cron.d/evil"), b"x")], "an absolute path"),
        ([(member("proj/link", tarfile.SYMTYPE, "/etc/passwd"), b"")], "is a link"),
        ([(member("proj/hard", tarfile.LNKTYPE, "/etc/shadow"), b"")], "is a link"),
        ([(member("proj/dev", tarfile.CHRTYPE), b"")], "not a regular file"),
        ([(member("proj/fifo", tarfile.FIFOTYPE), b"")], "not a regular file"),
        ([(member("proj/a.py"), b"1"), (member("proj/a.py"), b"2")], "appears twice"),
        ([(member("proj/big"), bytes(70_000))], "expands past its limit"),
        ([(member(f"proj/{n}"), b"") for n in range(20)], "too many members"),
    ],
)
def test_a_hostile_tar_is_refused_whole(tmp_path: Path, members: list[Any], words: str) -> None:
    archive = tar_gz(tmp_path / "evil.tar.gz", members)
    with pytest.raises(UnsafeArchive, match=words):
        unpack(archive, tmp_path / "work" / "out", max_bytes=65_536, max_members=10)
    assert list((tmp_path / "work").iterdir()) == []  # nothing of it left, inside or out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.tar.gz", "work"]


def test_a_hostile_zip_is_refused_whole(tmp_path: Path) -> None:
    for number, (name, attributes) in enumerate([("../x", 0), ("proj/link", (stat.S_IFLNK | 0o777) << 16)]):
        zipped = tmp_path / f"evil{number}.zip"
        with zipfile.ZipFile(zipped, "w") as archive:
            info = zipfile.ZipInfo(name)
            info.external_attr = attributes
            archive.writestr(info, "/etc/passwd")
        with pytest.raises(UnsafeArchive):
            unpack(zipped, tmp_path / f"out{number}", max_bytes=1 << 20)
        assert not (tmp_path / f"out{number}").exists()
    (tmp_path / "not.zip").write_bytes(b"plain text")
    with pytest.raises(UnsafeArchive, match=r"not a \.tar\.gz or \.zip"):
        unpack(tmp_path / "not.zip", tmp_path / "plain", max_bytes=1 << 20)


# -- SiteWatch -----------------------------------------------------------------------------------------
def health(service: str, instance: str, state: str = "ready", uptime_s: float = 100.0, **detail: str) -> Health:
    return Health(
        service=service, instance=instance, state=state, ts_ns=time.time_ns(), uptime_s=uptime_s, detail=detail
    )  # type: ignore[arg-type]


def frame(camera: str = "hall") -> FrameRef:
    return FrameRef(
        camera=camera, seq=1, capture_ns=1, monotonic_ns=1, segment=f"edgesight.test.{camera}", slot=0,
        generation=2, width=4, height=4, stride=12,
    )  # fmt: skip


def detections(model: str, version: str) -> Detections:
    return Detections.from_arrays(frame(), model, np.zeros((0, 4)), [], [], model_version=version)


def test_the_watch_keeps_what_a_job_needs() -> None:
    watch = SiteWatch()
    watch.feed(health("ingest", "ingest-east"))
    watch.feed(health("inference", "edgesight-inference-1", state="degraded"))
    watch.feed(
        CameraStatus(camera="hall", state="stalled", instance="ingest-0", ts_ns=1, since_ns=1, error="no frames")
    )
    watch.feed(detections("people", "2"))
    watch.feed(detections("people", "2"))
    event = Event(id="e1", event_type="line_cross", site="test", camera="hall", rule="door", ts_ns=1)
    watch.feed(event)
    watch.feed(
        Event(id="e1", event_type="line_cross", lifecycle="end", site="test", camera="hall", rule="door", ts_ns=2)
    )
    assert sorted(watch.services) == ["inference@1", "ingest@east"]
    assert watch.detections[("people", "2")].count == 2 and watch.events_last_hour() == 1
    assert watch.last_error == "camera hall: no frames"
    assert service_key("apps", "apps") == "apps@apps" and watch.instance_of("ingest", "east") == "ingest-east"
    ready = watch.services["ingest@east"].ready_since
    watch.feed(health("ingest", "ingest-east", uptime_s=1.0))  # another process: ready anew
    assert watch.services["ingest@east"].ready_since != ready


def test_wait_for_wakes_on_a_message_and_gives_up_at_its_timeout() -> None:
    async def main() -> tuple[bool, float, bool, float]:
        watch = SiteWatch(wake_s=10.0)  # only a message wakes it here
        asyncio.get_running_loop().call_later(0.1, watch.feed, health("rules", "rules-0"))
        started = time.monotonic()
        heard = await watch.wait_for(lambda: "rules@0" in watch.services, 5.0)
        took = time.monotonic() - started
        started = time.monotonic()
        never = await watch.wait_for(lambda: False, 0.2)
        return heard, took, never, time.monotonic() - started

    heard, took, never, gave_up = asyncio.run(main())
    assert heard and took < 1.0
    assert not never and 0.2 <= gave_up < 1.0


# -- a site for the operations -------------------------------------------------------------------------
class Site:
    """A site file and a JobContext on it; ``answer`` stands in for the services: given each Control
    sent, it returns the messages they would put on the bus in answer."""

    def __init__(self, tmp_path: Path, extra: dict[str, Any] | None = None, **fleet_keys: object) -> None:
        fleet = {"mqtt": {"host": "127.0.0.1"}, "healthy_s": 0.5, "job_timeout_s": 10, **fleet_keys}
        self.path = write_site(tmp_path, {"fleet": fleet, **(extra or {})})
        self.config = load_config(self.path)
        self.state_dir = Path(self.config.site.state_dir)
        self.watch = SiteWatch(wake_s=0.05)
        self.sent: list[tuple[str, Control]] = []
        self.answer: Callable[[str, Control], list[object]] = lambda key, control: []

    async def publish(self, stream: str, key: str, message: Control) -> None:
        assert stream == "control"
        self.sent.append((key, message))
        loop = asyncio.get_running_loop()
        for number, reply in enumerate(self.answer(key, message)):
            loop.call_later(0.02 * (number + 1), self.watch.feed, reply)

    def context(self) -> JobContext:
        audit = AuditTrail(self.state_dir, "test", "fleet:test")
        return JobContext(self.config, audit, self.watch, self.publish, self.path, self.state_dir)

    def run(self, operation: str, args: dict[str, Any], *, before: Iterable[object] = ()) -> dict[str, str]:
        job = SignedJob(operation, args, OPERATOR, "00" * 16, time.time(), time.time() + 3600)
        steps: list[str] = []

        async def step(text: str) -> None:
            steps.append(text)

        async def main() -> dict[str, str]:
            for message in before:
                self.watch.feed(message)
            return await run_operation(job, self.context(), step)

        return asyncio.run(main())

    def audit(self) -> list[dict[str, Any]]:
        chunk = read_audit_tail(audit_path(self.state_dir), 1 << 20)
        return [line.record for line in chunk.lines()] if chunk is not None and chunk.raw else []  # type: ignore[misc]


# -- update_rules ------------------------------------------------------------------------------------
RULES = {
    "door": {
        "type": "line",
        "line": [[0.1, 0.5], [0.9, 0.5]],
        "actions": [
            {"type": "command", "argv": ["/usr/bin/true"]},
            {"type": "webhook", "url": "https://hooks.example/a"},
        ],
    }
}


@pytest.fixture
def rules_site(tmp_path: Path) -> Site:
    hall = {"url": "file:///dev/null", "rules": RULES}
    return Site(tmp_path, {"cameras": {"hall": hall}, "console": {"webhook_hosts": ["hooks.example"]}})


def changed(**action: Any) -> dict[str, Any]:
    door = yaml.safe_load(yaml.safe_dump(RULES["door"]))
    door["actions"].append(action)
    return {"door": door}


@pytest.mark.parametrize(
    ("rules", "words"),
    [
        (changed(type="command", argv=["/bin/sh", "-c", "curl evil | sh"]), "command action"),
        (changed(type="gpio", line=4), "gpio action"),
        (changed(type="webhook", url="https://hooks.example/b"), "webhook URL"),  # an allowed host: still new
        ({"door": {**RULES["door"], "classes": ["${SECRET}"]}}, "placeholders"),
    ],
)
def test_update_rules_refuses_what_the_console_may_not_and_leaves_the_file(
    rules_site: Site, rules: dict[str, Any], words: str
) -> None:
    before = rules_site.path.read_bytes()
    with pytest.raises(JobFailed, match=words):
        rules_site.run("update_rules", {"cameras": {"hall": rules}})
    assert rules_site.path.read_bytes() == before and rules_site.sent == []
    refused = [r for r in rules_site.audit() if r["action"] == "config.save_refused"]
    assert refused and refused[0]["actor"] == f"fleet:{OPERATOR}"


def reply_to_rules(outcome: str) -> Callable[[str, Control], list[object]]:
    def answer(key: str, control: Control) -> list[object]:
        return [health("rules", "rules-0", reload=f"{control.id} {outcome}")] if key == "rules" else []

    return answer


def test_update_rules_saves_reloads_and_succeeds_once_rules_applied_them(rules_site: Site) -> None:
    moved = {"door": {**RULES["door"], "line": [[0.1, 0.6], [0.9, 0.6]]}}
    rules_site.answer = reply_to_rules("applied")
    details = rules_site.run("update_rules", {"cameras": {"hall": moved}})
    assert details["operation"] == "update_rules" and details["step"] == "hall: added -; changed door; removed -"
    assert SiteFile(rules_site.path).rules("hall") == moved
    assert [(key, control.command) for key, control in rules_site.sent] == [("rules", "reload")]
    saved = [r for r in rules_site.audit() if r["action"] == "config.save"]
    assert saved[0]["actor"] == f"fleet:{OPERATOR}" and saved[0]["detail"]["changed"] == "door"


def test_update_rules_puts_the_rules_back_when_rules_refuses_them(rules_site: Site) -> None:
    moved = {"door": {**RULES["door"], "line": [[0.1, 0.6], [0.9, 0.6]]}}
    rules_site.answer = reply_to_rules("refused: cameras.hall: bad")
    with pytest.raises(JobFailed, match=r"rules refused: cameras\.hall: bad; the previous rules are back"):
        rules_site.run("update_rules", {"cameras": {"hall": moved}})
    assert SiteFile(rules_site.path).rules("hall") == RULES
    assert [control.command for _, control in rules_site.sent] == ["reload", "reload"]


def test_update_rules_of_a_camera_not_in_the_file_puts_back_the_ones_saved(rules_site: Site) -> None:
    with pytest.raises(JobFailed, match="camera 'yard' is not in the site file itself; nothing was changed"):
        rules_site.run("update_rules", {"cameras": {"yard": {}}})
    moved = {"door": {**RULES["door"], "line": [[0.1, 0.6], [0.9, 0.6]]}}
    with pytest.raises(JobFailed, match="camera 'yard' is not in the site file itself; the previous rules are back"):
        rules_site.run("update_rules", {"cameras": {"hall": moved, "yard": {}}})
    assert SiteFile(rules_site.path).rules("hall") == RULES and rules_site.sent == []


BAY = {"bay": {"type": "zone", "polygon": [[0.0, 0.0], [0.5, 0.0], [0.5, 0.5]]}}


def test_update_rules_merges_a_new_rule_into_the_cameras_rules(rules_site: Site) -> None:
    rules_site.answer = reply_to_rules("applied")
    details = rules_site.run("update_rules", {"cameras": {"hall": BAY}})
    assert SiteFile(rules_site.path).rules("hall") == {**RULES, **BAY}  # door kept, with its command action
    assert details["step"] == "hall: added bay; changed -; removed -" and "merged" in details["note"]
    moved = {"door": {**RULES["door"], "line": [[0.1, 0.6], [0.9, 0.6]]}}
    details = rules_site.run("update_rules", {"cameras": {"hall": moved}, "replace": False})
    assert SiteFile(rules_site.path).rules("hall") == {**moved, **BAY}  # same name: replaced; bay kept
    assert details["step"] == "hall: added -; changed door; removed -"


def test_update_rules_with_replace_makes_the_rules_exactly_the_given_ones(rules_site: Site) -> None:
    rules_site.answer = reply_to_rules("applied")
    details = rules_site.run("update_rules", {"cameras": {"hall": BAY}, "replace": True})
    assert SiteFile(rules_site.path).rules("hall") == BAY
    assert details["step"] == "hall: added bay; changed -; removed door" and "replaced" in details["note"]
    saved = [r for r in rules_site.audit() if r["action"] == "config.save"]
    assert saved[-1]["detail"]["removed"] == "door" and saved[-1]["detail"]["added"] == "bay"


def test_update_rules_checks_the_merged_rules_and_what_is_on_disk_when_it_saves(
    rules_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = rules_site.path.read_bytes()
    hook = {"bay": {**BAY["bay"], "actions": [{"type": "webhook", "url": "https://hooks.example/new"}]}}
    with pytest.raises(JobFailed, match="webhook URL"):
        rules_site.run("update_rules", {"cameras": {"hall": hook}})
    with pytest.raises(JobFailed, match=r"malformed: args\.replace is not true or false"):
        rules_site.run("update_rules", {"cameras": {"hall": BAY}, "replace": "yes"})
    monkeypatch.setattr(SiteFile, "rules", lambda self, camera: {})  # as read before the console saved door
    with pytest.raises(JobFailed, match="the rules of hall changed on disk while the job saved them; run it again"):
        rules_site.run("update_rules", {"cameras": {"hall": BAY}})
    assert rules_site.path.read_bytes() == before and rules_site.sent == []


# -- install_model and rollback_model ----------------------------------------------------------------
@pytest.fixture
def model_site(tmp_path: Path) -> Site:
    keys = tmp_path / "keys"
    generate_key_pair(keys, "signing", "signing")
    hall = {"url": "file:///dev/null", "models": ["people"]}
    extra = {"site": {"trusted_keys": [str(keys / "signing.pub")]}, "models": {"people": {"path": "people.espkg"}}}
    site = Site(tmp_path, {**extra, "cameras": {"hall": hall}})
    site.signer = load_signing_key(keys / "signing.key")  # type: ignore[attr-defined]
    return site


def people(shared_dir: Path, version: str, key: Ed25519PrivateKey) -> bytes:
    """A package as ``edgesight models package`` makes it, of a real model."""
    from services.inference.packages import collect

    members, manifest = collect(shared_dir / "models" / "yolov8n_int8.onnx", "people", version)
    return build_package(members, name=manifest.name, version=manifest.version, signing_key=key)


def install(site: Site, data: bytes, version: str = "2", name: str = "people", **more: object) -> dict[str, str]:
    files = Files({"p.espkg": data})

    async def main() -> dict[str, str]:
        runner = await serving(files)
        try:
            args = {"url": f"{files.url}/p.espkg", "sha256": hashlib.sha256(data).hexdigest(), "name": name}
            job = SignedJob("install_model", {**args, "version": version}, OPERATOR, "00" * 16, 0.0, 1e10)

            async def step(text: str) -> None:
                pass

            for message in more.get("before", ()):  # type: ignore[attr-defined]
                site.watch.feed(message)
            return await run_operation(job, site.context(), step)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


def inference_serving(site: Site, version: str, *, refusal: str | None = None, frames: int = 0) -> None:
    """Inference as it answers a reload: loading ``version`` (or refusing the new one, auditing why)."""

    def answer(key: str, control: Control) -> list[object]:
        if key != "inference" or control.command != "reload":
            return []
        if refusal is not None:
            AuditTrail(site.state_dir, "test", "inference:0").record("model.load_failed", "people", error=refusal)
        shown = {"people": f"{version} onnxruntime/CPUExecutionProvider", "reload": f"{control.id} done"}
        return [health("inference", "inference-0", **shown), *([detections("people", version)] * frames)]

    site.answer = answer


def test_install_model_refuses_a_package_no_trusted_key_signed(model_site: Site, shared_dir: Path) -> None:
    stranger = people(shared_dir, "2", Ed25519PrivateKey.generate())
    with pytest.raises(JobFailed, match=r"not signed by a trusted key: signed by key [0-9a-f]+, which is not"):
        install(model_site, stranger)
    with pytest.raises(JobFailed, match="not signed by a trusted key: not an EdgeSight model package"):
        install(model_site, (shared_dir / "models" / "yolov8n_int8.onnx").read_bytes())
    assert ModelStore(model_site.state_dir / "models").list() == [] and model_site.sent == []
    refused = [r for r in model_site.audit() if r["action"] == "model.install_refused"]
    assert len(refused) == 2 and refused[0]["actor"] == f"fleet:{OPERATOR}" and refused[0]["target"] == "people"
    assert list((model_site.state_dir / "fleet" / "downloads").iterdir()) == []  # nothing kept of them


def test_install_model_refuses_a_package_that_is_not_what_the_job_names(model_site: Site, shared_dir: Path) -> None:
    signed = people(shared_dir, "2", model_site.signer)  # type: ignore[attr-defined]
    with pytest.raises(JobFailed, match="the package is people 2, the job names people 3"):
        install(model_site, signed, version="3")
    assert ModelStore(model_site.state_dir / "models").list() == []


def test_install_model_installs_and_confirms_inference_loaded_it(model_site: Site, shared_dir: Path) -> None:
    inference_serving(model_site, "2")
    details = install(model_site, people(shared_dir, "2", model_site.signer))  # type: ignore[attr-defined]
    assert details["version"] == "2" and "no camera of it is streaming" in details["note"]
    assert [(key, control.command, control.args) for key, control in model_site.sent] == [
        ("inference", "reload", {"model": "people"})
    ]
    installed = [r for r in model_site.audit() if r["action"] == "model.install"]
    assert installed[0]["actor"] == f"fleet:{OPERATOR}" and installed[0]["detail"]["version"] == "2"


def test_a_model_of_that_name_running_another_file_fails_the_job_and_keeps_the_store(
    model_site: Site, shared_dir: Path
) -> None:
    inference_serving(model_site, "2")
    install(model_site, people(shared_dir, "2", model_site.signer))  # type: ignore[attr-defined]
    model_site.path.write_text(model_site.path.read_text().replace("people.espkg", "yolox_nano.onnx"))
    store = ModelStore(model_site.state_dir / "models")
    kept, model_site.sent = store.list(), []
    reason = (
        "models.people.path is yolox_nano.onnx, not people.espkg: the package would not be used; "
        "set models.people.path: people.espkg"
    )
    with pytest.raises(JobFailed) as failed:
        install(model_site, people(shared_dir, "3", model_site.signer), version="3")  # type: ignore[attr-defined]
    assert failed.value.reason == reason
    with pytest.raises(JobFailed) as failed:
        model_site.run("rollback_model", {"name": "people", "version": None})
    assert failed.value.reason == reason
    assert store.list() == kept and kept[0]["current"] == "2" and model_site.sent == []
    assert list((model_site.state_dir / "fleet" / "downloads").iterdir()) == []  # nothing was downloaded


def test_a_model_no_entry_of_models_names_is_installed_for_later(model_site: Site, shared_dir: Path) -> None:
    from services.inference.packages import collect

    members, _ = collect(shared_dir / "models" / "yolov8n_int8.onnx", "crowd", "1")
    signed = build_package(members, name="crowd", version="1", signing_key=model_site.signer)  # type: ignore[attr-defined]
    details = install(model_site, signed, version="1", name="crowd")
    assert details["note"] == "no model of this site uses crowd.espkg: installed, not loaded"
    assert ModelStore(model_site.state_dir / "models").list()[0]["current"] == "1" and model_site.sent == []


def test_install_model_waits_for_detections_of_the_new_version(model_site: Site, shared_dir: Path) -> None:
    streaming = CameraStatus(camera="hall", state="streaming", instance="ingest-0", ts_ns=1, since_ns=1)
    inference_serving(model_site, "2", frames=60)  # 1.2 s of detections of people 2, one each 20 ms
    details = install(model_site, people(shared_dir, "2", model_site.signer), before=[streaming])  # type: ignore[attr-defined]
    assert "note" not in details and details["version"] == "2"


@pytest.mark.parametrize(
    ("served", "frames", "words"),
    [
        ("2", 0, "no detections of it arrived although its cameras stream"),  # loaded, but nothing comes
        ("2", 10, "detections of people 2 stopped"),  # 0.2 s of them, then none
        (None, 0, "inference did not answer the reload of people"),
    ],
)
def test_install_model_fails_when_the_new_version_is_not_live(
    model_site: Site, shared_dir: Path, monkeypatch: pytest.MonkeyPatch, served: str | None, frames: int, words: str
) -> None:
    from services.fleet.operations import model_live

    monkeypatch.setattr(model_live, "RELOAD_WAIT_S", 1.0)
    monkeypatch.setattr(model_live, "_stale_after_s", lambda context, site, model: 0.3)
    streaming = CameraStatus(camera="hall", state="streaming", instance="ingest-0", ts_ns=1, since_ns=1)
    if served is not None:
        inference_serving(model_site, served, frames=frames)
    model_site.answer = _also_old_detections(model_site.answer)
    with pytest.raises(JobFailed, match=words) as failed:
        install(model_site, people(shared_dir, "2", model_site.signer), before=[streaming])  # type: ignore[attr-defined]
    assert "no earlier version of people to go back to: 2 stays installed" in failed.value.reason


def _also_old_detections(answer: Callable[[str, Control], list[object]]) -> Callable[[str, Control], list[object]]:
    """Detections of another version keep coming meanwhile: they do not count for this one."""
    return lambda key, control: [*answer(key, control), *([detections("people", "1")] * 20)]


def test_install_model_rolls_back_what_inference_refuses(model_site: Site, shared_dir: Path) -> None:
    inference_serving(model_site, "2")
    install(model_site, people(shared_dir, "2", model_site.signer))  # type: ignore[attr-defined]
    inference_serving(model_site, "2", refusal="people 3: the model does not load")  # it keeps serving 2
    with pytest.raises(JobFailed) as failed:
        install(model_site, people(shared_dir, "3", model_site.signer), version="3")  # type: ignore[attr-defined]
    assert "inference refused people 3: people 3: the model does not load" in failed.value.reason
    assert failed.value.reason.endswith("; rolled back to people 2")
    store = ModelStore(model_site.state_dir / "models")
    assert store.list()[0]["current"] == "2"
    assert [r["detail"]["version"] for r in model_site.audit() if r["action"] == "model.rollback"] == ["2"]

    inference_serving(model_site, "3")  # the operator's rollback_model to 3 (say, after a fix elsewhere)
    assert model_site.run("rollback_model", {"name": "people", "version": "3"})["version"] == "3"
    inference_serving(model_site, "2")
    assert model_site.run("rollback_model", {"name": "people", "version": None})["version"] == "2"
    assert store.list()[0]["current"] == "2"


# -- restart_service, and what is no operation -------------------------------------------------------
def test_restart_service_succeeds_once_a_new_process_stays_ready(tmp_path: Path) -> None:
    site = Site(tmp_path)
    site.answer = lambda key, control: [  # a new process: starting, then ready (uptimes as of its start)
        health("rules", "rules-0", state="starting", uptime_s=0.001),
        health("rules", "rules-0", uptime_s=0.002),
    ]
    details = site.run("restart_service", {"service": "rules"}, before=[health("rules", "rules-0")])
    assert "rules restarted" in details["note"]
    assert [(key, control.command, control.instance) for key, control in site.sent] == [("rules", "shutdown", None)]

    site.sent.clear()
    site.answer = lambda key, control: [health("ingest", "ingest-east", uptime_s=0.001)]
    site.run("restart_service", {"service": "ingest@east"}, before=[health("ingest", "ingest-east")])
    assert site.sent[0][1].instance == "ingest-east"


def test_restart_service_fails_without_the_service_and_for_the_broker(tmp_path: Path) -> None:
    site = Site(tmp_path)
    with pytest.raises(JobFailed, match="no uplink is running here"):
        site.run("restart_service", {"service": "uplink"})
    with pytest.raises(JobFailed, match="the broker is not restarted by a job"):
        site.run("restart_service", {"service": "broker"})
    with pytest.raises(JobFailed, match="no service 'mail'"):
        site.run("restart_service", {"service": "mail"})


def test_install_app_is_refused_unless_the_site_allows_apps(tmp_path: Path) -> None:
    site = Site(tmp_path)
    args = {"url": "http://127.0.0.1:9/app.tar.gz", "sha256": DIGEST, "app": "counter", "cameras": {}}
    with pytest.raises(JobFailed, match=r"fleet\.allow_apps is false"):
        site.run("install_app", args)
    with pytest.raises(JobFailed, match="'set_desired' is no operation a job runs"):
        site.run("set_desired", {"models": {}})


# -- install_app ---------------------------------------------------------------------------------------
def panorama_project(folder: Path) -> bytes:
    """A project shaped like AWS's samples (a code node between a camera and the HDMI output), as .tar.gz."""
    account = "123456789012"
    nodes = [
        {"name": "code_node", "interface": f"{account}::COUNTER.interface"},
        {"name": "camera_node", "interface": "panorama::abstract_rtsp_media_source.rtsp_v1_interface"},
        {"name": "output_node", "interface": "panorama::hdmi_data_sink.hdmi0"},
    ]
    edges = [
        {"producer": "camera_node.video_out", "consumer": "code_node.video_in"},
        {"producer": "code_node.video_out", "consumer": "output_node.video_in"},
    ]
    interface = {
        "name": "interface", "category": "business_logic", "asset": "code_asset",
        "inputs": [{"name": "video_in", "type": "media"}], "outputs": [{"name": "video_out", "type": "media"}],
    }  # fmt: skip
    code = f"packages/{account}-COUNTER-1.0"
    files = {
        "graphs/counter/graph.json": {"nodeGraph": {"envelopeVersion": "2021-01-01", "nodes": nodes, "edges": edges}},
        f"{code}/package.json": {"nodePackage": {"name": "COUNTER", "interfaces": [interface]}},
        f"{code}/descriptor.json": {"runtimeDescriptor": {"entry": {"path": "python3", "name": "/panorama/app.py"}}},
        f"{code}/src/app.py": "import panoramasdk\n",
    }
    members = [
        (member(f"counter-project/{name}"), (text if isinstance(text, str) else json.dumps(text)).encode())
        for name, text in files.items()
    ]
    return tar_gz(folder / "counter.tar.gz", members).read_bytes()


def apps_answering(site: Site, state: str) -> None:
    """The apps service as it restarts: a new process, then the app's status every 20 ms for a second."""

    def answer(key: str, control: Control) -> list[object]:
        if key != "apps" or control.command != "shutdown":
            return []
        status = AppStatus(app="counter", instance="apps-0", state=state, ts_ns=time.time_ns(), error="exit 1")
        return [health("apps", "apps-0", uptime_s=0.001), *([status] * 50)]  # type: ignore[arg-type]

    site.answer = answer


def install_app(site: Site, archive: bytes, app: str = "counter") -> dict[str, str]:
    files = Files({"counter.tar.gz": archive})

    async def main() -> dict[str, str]:
        runner = await serving(files)
        try:
            args = {
                "url": f"{files.url}/counter.tar.gz",
                "sha256": hashlib.sha256(archive).hexdigest(),
                "app": app,
                "cameras": {"camera_node": "hall"},
            }
            job = SignedJob("install_app", args, OPERATOR, "00" * 16, 0.0, 1e10)
            site.watch.feed(health("apps", "apps-0"))

            async def step(text: str) -> None:
                pass

            return await run_operation(job, site.context(), step)
        finally:
            await runner.cleanup()

    return asyncio.run(main())


@pytest.fixture
def apps_site(tmp_path: Path) -> Site:
    return Site(tmp_path, {"cameras": {"hall": {"url": "file:///dev/null"}}}, allow_apps=True)


def test_install_app_imports_the_project_and_waits_until_it_runs(apps_site: Site, tmp_path: Path) -> None:
    archive = panorama_project(tmp_path)
    apps_answering(apps_site, "running")
    details = install_app(apps_site, archive)
    assert details["step"] == "running"
    config = load_config(apps_site.path)
    unpacked = apps_site.state_dir / "fleet" / "apps" / "counter" / hashlib.sha256(archive).hexdigest()
    assert config.apps["counter"].cameras == ["hall"] and Path(config.apps["counter"].code).is_relative_to(unpacked)
    assert [(key, control.command) for key, control in apps_site.sent] == [("apps", "shutdown")]
    assert [r["action"] for r in apps_site.audit()] == ["config.save"]
    assert len(list((apps_site.state_dir / "fleet" / "backups").iterdir())) == 1


def test_install_app_puts_the_site_file_back_when_the_app_fails(apps_site: Site, tmp_path: Path) -> None:
    before = apps_site.path.read_text()
    apps_answering(apps_site, "failed")
    with pytest.raises(JobFailed, match="app counter failed: exit 1; the previous site file is back"):
        install_app(apps_site, panorama_project(tmp_path))
    assert apps_site.path.read_text() == before
    assert [control.command for _, control in apps_site.sent] == ["shutdown", "shutdown"]  # restarted on the old


def test_install_app_refuses_a_project_that_does_not_import(apps_site: Site, tmp_path: Path) -> None:
    before = apps_site.path.read_text()
    archive = tar_gz(tmp_path / "empty.tar.gz", [(member("nothing/README"), b"hello")]).read_bytes()
    with pytest.raises(JobFailed, match="the project does not import"):
        install_app(apps_site, archive)
    assert apps_site.path.read_text() == before and apps_site.sent == []


def test_install_app_refuses_a_project_whose_app_is_another(apps_site: Site, tmp_path: Path) -> None:
    before = apps_site.path.read_text()
    with pytest.raises(JobFailed, match="the project holds no app named 'dock-counter'"):
        install_app(apps_site, panorama_project(tmp_path), app="dock-counter")
    assert apps_site.path.read_text() == before and apps_site.sent == []

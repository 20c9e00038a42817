"""`edgesight fleet` against a real Mosquitto (retained mode) and moto (aws mode, S3): keygen; deployments whose
canary fails (the rest get nothing), that all succeed (exit 0), or that meet a silent site (exit 3, its
document stays retained and runs when the site is back); the status table from retained reports; jobs and
prune; desired models; fleet.yaml's and the arguments' errors. The sites are a small fake here: the real one is
services/fleet (tests/unit/test_fleet_service*.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from common._compat import timeout
from common.cli import fleet_aws, fleet_follow
from common.cli.main import main
from common.fleet.shapes import (
    encode,
    job_execution,
    notify_next,
    parse_desired,
    parse_execution,
    reported_update,
    status_update,
)
from common.fleet.signing import JobRefused, SignedJob, sign_document, verify_document
from common.fleet.topics import FleetTopics, thing_of
from common.trust.keys import load_signing_key, load_trusted_keys
from common.trust.package import build_package
from tests.integration.conftest import Mosquitto
from tests.integration.test_uplink import make_certificates, moto_server  # noqa: F401 - a fixture
from tests.support import scaled

ROOT = "$aws"


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """An operator key pair made by `edgesight fleet keygen`; returns the folder."""
    assert main(["fleet", "keygen", "--out", str(tmp_path / "keys")]) == 0
    out = capsys.readouterr().out
    assert f"operator_key: {tmp_path / 'keys' / 'operator.key'}" in out and "trusted_operators: [operator.pub]" in out
    [identity] = load_trusted_keys([tmp_path / "keys" / "operator.pub"])
    assert f"key id {identity}: " in out  # the id in the sites' audit records and "unknown operator <id>"
    return tmp_path / "keys"


def write_fleet(tmp_path: Path, broker_port: int, keys: Path | None, **sections: Any) -> Path:
    data: dict[str, Any] = {
        "broker": {"host": "127.0.0.1", "port": broker_port},
        "sites": {"plant-a": {}, "plant-b": {}, "plant-c": {"thing": "thing-c"}},
        **sections,
    }
    if keys is not None:
        data["operator_key"] = str(keys / "operator.key")
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def fleet(path: Path, *arguments: str) -> int:
    return main(["fleet", *arguments, "--file", str(path)])


async def _peek(port: int, pattern: str, seconds: float) -> dict[str, bytes]:
    found: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"peek-{secrets.token_hex(3)}") as client:
        await client.subscribe(pattern, qos=1)
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            async with timeout(seconds):
                async for message in client.messages:
                    if message.retain and message.payload:
                        found[message.topic.value] = bytes(message.payload)  # type: ignore[arg-type]
    return found


def retained(broker: Mosquitto, pattern: str) -> dict[str, bytes]:
    """What the broker retains under ``pattern`` (a fresh subscriber's first second)."""
    return asyncio.run(_peek(broker.port, pattern, scaled(1.5)))


def publish_retained(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    async def publish() -> None:
        async with aiomqtt.Client("127.0.0.1", broker.port, identifier=f"pub-{secrets.token_hex(3)}") as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1, retain=True)

    asyncio.run(publish())


SITE_STEP = "hall: added door; changed -; removed -"  # what a site says an update_rules did


HOSTILE = "\x1b[2J\x1b]0;owned\x07\x9b31m\u202egnp.exe\u2028\ud800"  # clears a screen, titles it, reverses text


class FakeSites:
    """The sites' side of retained mode, in short: each retained job document for a thing of ``answers`` is
    verified with the operator's public key and answered with retained statuses (``succeed``: IN_PROGRESS
    then SUCCEEDED; ``fail``: IN_PROGRESS then FAILED with ``reason``), then the site's reported state naming
    the job as its last, as services/fleet does. ``forge``: an attacker on the broker instead, who answers
    every document at once with retained statuses it makes up (SUCCEEDED, texts full of terminal escapes)
    and cannot publish the site's reported state. ``raw``: statuses as written, not through the builder that
    makes their texts printable (a site with a bug, or an attacker who may publish as the site)."""

    def __init__(
        self, broker: Mosquitto, keys: Path, answers: dict[str, str], reason: str = "no GPU", raw: bool = False
    ) -> None:
        self.broker = broker
        self.trusted = load_trusted_keys([keys / "operator.pub"])
        self.answers = answers
        self.reason, self.raw = reason, raw
        self.jobs: dict[str, list[SignedJob]] = defaultdict(list)
        self.answered: list[str] = []  # job ids whose last status is out
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.task: asyncio.Task[None] | None = None

    def __enter__(self) -> FakeSites:
        self.thread.start()
        assert self.ready.wait(scaled(30)), "the fake sites did not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.task is not None
        self.loop.call_soon_threadsafe(self.task.cancel)
        self.thread.join(scaled(10))

    def _main(self) -> None:
        self.task = self.loop.create_task(self._answer())
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self.task)
        self.loop.close()

    async def _answer(self) -> None:
        async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=f"sites-{secrets.token_hex(3)}") as client:
            await client.subscribe(FleetTopics.all_job_documents(ROOT), qos=1)
            self.ready.set()
            async for message in client.messages:
                thing = thing_of(message.topic.value, ROOT)
                execution = parse_execution(bytes(message.payload))  # type: ignore[arg-type]
                if execution is None or thing not in self.answers:
                    continue
                topic = FleetTopics(ROOT, thing).job_update(execution.job_id)
                if self.answers[thing] == "forge":
                    for status, details in (("IN_PROGRESS", {"step": HOSTILE}), ("SUCCEEDED", {"reason": HOSTILE})):
                        forged = json.dumps({"status": status, "statusDetails": details}).encode()
                        await client.publish(topic, forged, qos=1, retain=True)
                    self.answered.append(execution.job_id)
                    continue
                operation = execution.document.get("operation")
                try:
                    job = verify_document(execution.document, self.trusted, thing)
                except JobRefused as refused:
                    steps = [("REJECTED", {"reason": refused.reason})]
                else:
                    self.jobs[thing].append(job)
                    done = {"step": SITE_STEP} if job.operation == "update_rules" else {}
                    failed = ("FAILED", {"reason": self.reason})
                    succeeded = ("SUCCEEDED", done)
                    steps = [
                        ("IN_PROGRESS", {"step": "installing"}),
                        succeeded if self.answers[thing] == "succeed" else failed,
                    ]
                for status, details in steps:
                    shown = {"operation": operation, **details}
                    raw = {"status": status, "statusDetails": shown}
                    update = json.dumps(raw).encode() if self.raw else encode(status_update(status, shown))
                    await client.publish(topic, update, qos=1, retain=True)
                last = {"current": None, "last": execution.job_id, "last_status": steps[-1][0], "last_reason": None}
                report = reported(thing, thing, 0, job=last)  # right after the final status, as a site's reporter
                await client.publish(FleetTopics(ROOT, thing).reported, report, qos=1, retain=True)
                self.answered.append(execution.job_id)


def documents(broker: Mosquitto) -> dict[str, bytes]:
    return retained(broker, FleetTopics.all_job_documents(ROOT))


def test_keygen_refuses_to_overwrite(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (keys / "operator.key").stat().st_mode & 0o777 == 0o600
    assert main(["fleet", "keygen", "--out", str(keys)]) == 1
    assert "never overwritten" in capsys.readouterr().err


def test_a_failed_canary_stops_the_rollout(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys, groups={"canary": ["plant-b"], "all": ["plant-a", "plant-b"]})
    with FakeSites(broker, keys, {"plant-a": "succeed", "plant-b": "fail", "thing-c": "succeed"}) as sites:
        code = fleet(path, "restart", "rules", "--to", "all", "--to", "plant-c", "--timeout", "30")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "canary: plant-b (the fleet.yaml group canary)" in out
    assert "plant-b: FAILED  no GPU" in out and "canary failed (plant-b FAILED: no GPU)" in out
    assert "the other 2 site(s) get no job" in out
    assert list(sites.jobs) == ["plant-b"] and sites.jobs["plant-b"][0].args == {"service": "rules"}
    assert documents(broker) == {}  # the canary's cleared (it answered), none for the others


def test_a_model_rolls_out_canary_first_through_s3(
    tmp_path: Path,
    broker: Mosquitto,
    keys: Path,
    moto_server: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    for name, value in {
        "AWS_ACCESS_KEY_ID": "t",
        "AWS_SECRET_ACCESS_KEY": "t",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="fleet-models", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    package = tmp_path / "people.espkg"
    members = {"manifest.yaml": b"name: people\n", "model.onnx": b"onnx"}
    package.write_bytes(build_package(members, name="people", version="5", signing_key=Ed25519PrivateKey.generate()))
    bucket = {"name": "fleet-models", "endpoint_url": moto_server}
    path = write_fleet(tmp_path, broker.port, keys, bucket=bucket)
    monkeypatch.setenv("EDGESIGHT_FLEET_FILE", str(path))  # no --file: the variable names it
    assert main(["fleet", "desire", "model", "people", "4", "--to", "plant-b"]) == 0
    answers = {"plant-a": "succeed", "plant-b": "succeed", "thing-c": "succeed"}
    with FakeSites(broker, keys, answers) as sites:
        code = main(["fleet", "deploy", "model", str(package), "--to", "plant-a", "--to", "plant-b", "--canary", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "canary: the first 1 of --to/--group in order: plant-a" in out
    assert "site plant-b desires people 4: it will go back to it; `edgesight fleet desire model people none" in out
    lines = out.splitlines()
    canary_done = next(i for i, line in enumerate(lines) if "plant-a: SUCCEEDED" in line)
    assert any("plant-b: queued install_model-people-5-plant-b-" in line for line in lines[canary_done:]), out
    assert "2 site(s): 2 succeeded" in lines[-1]
    [job] = sites.jobs["plant-b"]
    assert job.args["url"] == "s3://fleet-models/edgesight/models/people/5.espkg"
    stored = s3.get_object(Bucket="fleet-models", Key="edgesight/models/people/5.espkg")["Body"].read()
    assert stored == package.read_bytes() and job.args["sha256"] == fleet_broker_sha(package)
    assert "thing-c" not in sites.jobs and documents(broker) == {}
    assert len(retained(broker, FleetTopics.all_job_updates(ROOT))) == 2  # statuses stay, for `fleet jobs`
    # the same package again: not uploaded twice; another under its name and version: refused
    assert main(["fleet", "deploy", "model", str(package), "--to", "plant-a", "--timeout", "0.5"]) == 3
    assert "uploaded already" in capsys.readouterr().out
    other = tmp_path / "other.espkg"
    other.write_bytes(
        build_package(members | {"x": b"1"}, name="people", version="5", signing_key=Ed25519PrivateKey.generate())
    )
    assert main(["fleet", "deploy", "model", str(other), "--to", "plant-a"]) == 2
    assert "holds another file; give the package a new version" in capsys.readouterr().err


def test_a_silent_canary_stops_the_rollout_and_keeps_its_job(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    code = fleet(path, "restart", "rules", "--to", "plant-b", "--to", "plant-a", "--canary", "1", "--timeout", "1")
    out = capsys.readouterr().out
    assert code == 1 and "canary failed (plant-b did not answer within 1 s: queued (offline?))" in out, out
    assert [thing_of(topic, ROOT) for topic in documents(broker)] == ["plant-b"]


def fleet_broker_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_silent_site_keeps_its_job_until_it_is_back(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    with FakeSites(broker, keys, {"plant-a": "succeed"}):
        code = fleet(path, "restart", "rules", "--to", "plant-a", "--to", "plant-b", "--timeout", "3")
    out = capsys.readouterr().out
    assert code == 3, out
    assert "plant-b did not answer within 3 s: queued (offline?)" in out
    [(topic, payload)] = documents(broker).items()
    execution = parse_execution(payload)
    assert execution is not None and thing_of(topic, ROOT) == "plant-b" and execution.job_id in topic

    assert fleet(path, "jobs", "--json") == 0
    rows = {row["site"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["plant-a"]["status"] == "SUCCEEDED" and rows["plant-a"]["operation"] == "restart_service"
    assert rows["plant-b"]["status"] == "QUEUED" and rows["plant-b"]["age_s"] is not None
    assert fleet(path, "jobs", "--prune") == 0
    out = capsys.readouterr().out
    assert "pruned 1 finished job(s)" in out and "plant-b" in out
    assert len(retained(broker, FleetTopics.all_job_updates(ROOT))) == 0  # plant-a's status cleared

    with FakeSites(broker, keys, {"plant-b": "succeed"}) as back:  # plant-b is back: its retained job runs
        end = time.monotonic() + scaled(30)
        while not back.answered and time.monotonic() < end:
            time.sleep(0.05)
    assert back.jobs["plant-b"][0].args == {"service": "rules"}
    assert fleet(path, "jobs", "--site", "plant-b") == 0
    assert "SUCCEEDED" in capsys.readouterr().out
    assert fleet(path, "jobs", "--prune") == 0 and documents(broker) == {}


def reported(site: str, thing: str, age_s: float, **extra: Any) -> bytes:
    state = {
        "schema": 1, "site": site, "thing": thing, "edgesight": "1.4.0", "reported_at": time.time() - age_s,
        "interval_s": 60.0, "models": {"people": {"version": "5", "signer": "k", "loaded": "ready"}},
        "cameras": {"dock": {"state": "streaming", "fps": 5.0}, "yard": {"state": "stalled", "fps": 0.0}},
        "events_last_hour": 12, **extra,
    }  # fmt: skip
    return encode(reported_update(state))


def test_status_shows_every_site_from_retained_reports(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, None)
    publish_retained(
        broker,
        [
            (FleetTopics(ROOT, "plant-a").reported, reported("plant-a", "plant-a", 5, console_url="https://a.example")),
            (FleetTopics(ROOT, "plant-b").reported, reported("plant-b", "plant-b", 121)),  # > 2 x 60 s: offline
            (FleetTopics(ROOT, "stray").reported, reported("stray-site", "stray", 1)),  # not in fleet.yaml
            (FleetTopics(ROOT, "junk").reported, b"\x00not json"),
        ],
    )
    assert fleet(path, "status", "--wait", "5") == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["SITE"].split()[:3] == ["SITE", "STATE", "VERSION"]
    assert (
        re.search(r"online \d+s ago", lines["plant-a"]) and "people 5" in lines["plant-a"] and "1/2" in lines["plant-a"]
    )
    assert "camera yard stalled" in lines["plant-a"] and "https://a.example" in lines["plant-a"]
    assert "offline 2m ago" in lines["plant-b"] and "offline; camera yard stalled" in lines["plant-b"]
    assert "never seen" in lines["plant-c"] and "never reported" in lines["plant-c"]
    assert "stray-site" in lines and "junk" not in lines
    assert fleet(path, "status", "--json") == 0
    rows = {row["site"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["plant-a"]["online"] and not rows["plant-b"]["online"] and rows["plant-c"]["thing"] == "thing-c"


def test_desired_models_are_signed_and_merged(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    assert fleet(path, "desire", "model", "people", "5", "--to", "plant-c") == 0
    assert fleet(path, "desire", "model", "vehicles", "2", "--to", "plant-c") == 0
    assert "plant-c: desired models people 5, vehicles 2" in capsys.readouterr().out
    desired = parse_desired(
        retained(broker, FleetTopics(ROOT, "thing-c").desired_delta)[FleetTopics(ROOT, "thing-c").desired_delta]
    )
    assert desired is not None and desired.models == {"people": "5", "vehicles": "2"} and desired.signed is not None
    job = verify_document(desired.signed, load_trusted_keys([keys / "operator.pub"]), "thing-c")
    assert job.operation == "set_desired" and job.args == {"models": {"people": "5", "vehicles": "2"}}
    assert job.expires_at - job.issued_at == 30 * 86400  # desired state outlives a job


def test_the_fleet_file_and_the_arguments_are_checked_before_anything_is_sent(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere.yaml"
    assert fleet(missing, "status") == 2
    assert f"no fleet file at {missing} (--file)" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    for text, message in (
        (
            "broker: {host: 127.0.0.1}\nsites: {plant-a: {}}\ngroups: {north: [plant-z]}\n",
            "3: groups.north[0]: 'plant-z' is not under sites:",
        ),
        ("broker: {host: 127.0.0.1}\nsites: {plant-a: {}}\nbrokr: 1\n", "3: brokr: unknown key"),
        ("sites: {plant-a: {}}\n", "1: broker: Field required"),
    ):
        bad.write_text(text)
        assert fleet(bad, "status") == 2
        assert f"{bad}:{message}" in capsys.readouterr().err

    path = write_fleet(tmp_path, broker.port, None)
    assert fleet(path, "restart", "rules", "--to", "plant-a") == 2
    assert "has no operator_key: make one with `edgesight fleet keygen" in capsys.readouterr().err
    path = write_fleet(tmp_path, broker.port, keys)
    for arguments, message in (
        (["restart", "rules"], "say which sites: --to SITE"),
        (["restart", "rules", "--to", "plant-z"], "'plant-z' is no site or group"),
        (["restart", "rules", "--group", "plant-a"], "--group 'plant-a': no such group"),
        (["restart", "no such service", "--to", "plant-a"], "malformed: args.service"),
        (["deploy", "model", str(keys / "operator.pub"), "--to", "plant-a"], "not an EdgeSight model package"),
        (["deploy", "rules", str(keys / "operator.pub"), "--to", "plant-a"], "expected {camera: {rule name:"),
        (
            ["deploy", "app", str(keys / "operator.pub"), "--app", "a", "--camera", "x", "--to", "plant-a"],
            "NODE=CAMERA",
        ),
    ):
        assert fleet(path, *arguments) == 2, arguments
        assert message in capsys.readouterr().err, arguments
    package = tmp_path / "people.espkg"
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    package.write_bytes(
        build_package({"manifest.yaml": b"x"}, name="people", version="5", signing_key=Ed25519PrivateKey.generate())
    )
    assert fleet(path, "deploy", "model", str(package), "--to", "plant-a") == 2
    assert "has no bucket: upload" in capsys.readouterr().err and documents(broker) == {}
    broker.stop()
    assert fleet(path, "status") == 1
    assert f"broker 127.0.0.1:{broker.port}" in capsys.readouterr().err


def test_aws_mode_creates_jobs_and_reads_the_named_shadow(
    tmp_path: Path,
    keys: Path,
    moto_server: str,  # noqa: F811 - the fixture
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iot.models import iot_backends

    environment = {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "eu-west-1"}
    for name, value in {**environment, "AWS_ENDPOINT_URL": moto_server}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(fleet_aws, "POLL_S", 0.1)
    iot, data = boto3.client("iot"), boto3.client("iot-data")
    for thing in ("plant-a", "plant-b", "thing-c"):
        iot.create_thing(thingName=thing)
    path = write_fleet(tmp_path, 8883, keys, jobs="aws")
    executions = iot_backends[DEFAULT_ACCOUNT_ID]["eu-west-1"].job_executions
    stop = threading.Event()

    def devices() -> (
        None
    ):  # AWS IoT Jobs and the shadows as the sites would leave them: plant-a succeeds, plant-b fails
        shadows = boto3.client("iot-data")
        while not stop.wait(0.05):
            for (job_id, thing), execution in list(executions.items()):
                if execution.status == "QUEUED":
                    execution.status = "SUCCEEDED" if thing == "plant-a" else "FAILED"
                    execution.status_details_map = {} if thing == "plant-a" else {"reason": "model did not load"}
                    last = {"current": None, "last": job_id, "last_status": execution.status, "last_reason": None}
                    report = reported(
                        thing, thing, 0 if thing == "plant-a" else 600, job=last
                    )  # plant-b: offline since
                    shadows.update_thing_shadow(thingName=thing, shadowName="edgesight", payload=report)

    worker = threading.Thread(target=devices, daemon=True)
    worker.start()
    try:
        code = fleet(path, "restart", "inference@1", "--to", "plant-a", "--to", "plant-b", "--canary", "1")
    finally:
        stop.set()
        worker.join()
    out = capsys.readouterr().out
    assert code == 1 and "plant-b: FAILED  model did not load" in out and "1 failed" in out, out
    documents = {job_id: json.loads(iot.get_job_document(jobId=job_id)["document"]) for job_id, _ in executions}
    for (job_id, thing), _ in executions.items():
        job = verify_document(documents[job_id], load_trusted_keys([keys / "operator.pub"]), thing)
        assert job.args == {"service": "inference@1"}
    assert fleet(path, "jobs", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert sorted((row["site"], row["status"], row["operation"]) for row in rows) == [
        ("plant-a", "SUCCEEDED", "restart_service"),
        ("plant-b", "FAILED", "restart_service"),
    ]
    assert fleet(path, "jobs", "--prune") == 0 and iot.list_jobs()["jobs"] == []
    capsys.readouterr()

    data.update_thing_shadow(thingName="plant-a", shadowName="edgesight", payload=reported("plant-a", "plant-a", 3))
    assert fleet(path, "status", "--json") == 0
    rows = {row["site"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["plant-a"]["online"] and rows["plant-a"]["models"] == "people 5" and not rows["plant-b"]["online"]

    assert fleet(path, "desire", "model", "people", "6", "--to", "plant-a") == 0
    shadow = json.loads(data.get_thing_shadow(thingName="plant-a", shadowName="edgesight")["payload"].read())
    desired = shadow["state"]["desired"]
    assert desired["models"] == {"people": "6"}
    job = verify_document(desired["signed"], load_trusted_keys([keys / "operator.pub"]), "plant-a")
    assert job.args == {"models": {"people": "6"}}
    capsys.readouterr()
    assert fleet(path, "rollback", "people", "--to", "plant-a", "--timeout", "0.5") == 3  # nobody answers here
    assert "site plant-a desires people 6: it will go back to it" in capsys.readouterr().out
    assert fleet(path, "desire", "model", "vehicles", "1", "--to", "plant-a") == 0
    assert fleet(path, "desire", "model", "people", "none", "--to", "plant-a") == 0
    assert "plant-a: desired models vehicles 1" in capsys.readouterr().out
    shadow = json.loads(data.get_thing_shadow(thingName="plant-a", shadowName="edgesight")["payload"].read())
    desired = shadow["state"]["desired"]  # merged by the shadow: people deleted with a null, signed args too
    assert desired["models"] == {"vehicles": "1"}
    job = verify_document(desired["signed"], load_trusted_keys([keys / "operator.pub"]), "plant-a")
    assert job.args == {"models": {"vehicles": "1"}}


def test_the_broker_is_reached_over_mutual_tls(tmp_path: Path, keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    certs = make_certificates(tmp_path / "certs")
    listener = f"cafile {certs['ca_cert']}\ncertfile {certs['server_cert']}\nkeyfile {certs['server_key']}\n"
    broker = Mosquitto(tmp_path / "tls", listener + "require_certificate true\n").start()
    try:
        tls = {
            "ca_file": str(certs["ca_cert"]),
            "cert_file": str(certs["client_cert"]),
            "key_file": str(certs["client_key"]),
        }
        path = write_fleet(tmp_path, broker.port, keys, broker={"host": "127.0.0.1", "port": broker.port, "tls": tls})
        assert fleet(path, "desire", "model", "people", "5", "--to", "plant-a") == 0
        assert fleet(path, "desire", "model", "ppe", "1", "--to", "plant-a") == 0  # read back over TLS: merged
        assert "plant-a: desired models people 5, ppe 1" in capsys.readouterr().out
        assert fleet(path, "status") == 0 and "never seen" in capsys.readouterr().out
        without = {"host": "127.0.0.1", "port": broker.port, "tls": {"ca_file": str(certs["ca_cert"])}}
        path = write_fleet(tmp_path, broker.port, keys, broker=without)
        assert fleet(path, "status") == 1
        assert f"edgesight fleet: broker 127.0.0.1:{broker.port}:" in capsys.readouterr().err
    finally:
        broker.stop()


def test_rules_are_checked_here_then_merged_or_replaced(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    rules = tmp_path / "rules.yaml"
    door = "  door:\n    type: zone\n    polygon: [[0, 0], [1, 0], [1, 1]]\n"
    rules.write_text(f"hall:\n{door}    min_scor: 0.5\n  exit:\n    type: dwell\n    zone: lobby\n    seconds: 5\n")
    assert fleet(path, "deploy", "rules", str(rules), "--to", "plant-a") == 2
    err = capsys.readouterr().err
    assert f"{rules}:5: hall.door.min_scor: unknown key (check its spelling)" in err and "nothing was sent" in err
    assert "lobby" not in err  # merged: the zone may be among the camera's rules on the site
    assert fleet(path, "deploy", "rules", str(rules), "--replace", "--to", "plant-a") == 2
    assert f"{rules}:8: hall.exit.zone: names zone 'lobby', which is not a zone rule here" in capsys.readouterr().err
    rules.write_text(f"hall:\n{door}  entry:\n    tpye: line\n")
    assert fleet(path, "deploy", "rules", str(rules), "--to", "plant-a") == 2
    assert f"{rules}:6: hall.entry.tpye: unknown key (did you mean 'type'?)" in capsys.readouterr().err
    assert documents(broker) == {}

    rules.write_text(f"hall:\n{door}")
    with FakeSites(broker, keys, {"plant-a": "succeed", "plant-b": "succeed"}) as sites:
        assert fleet(path, "deploy", "rules", str(rules), "--to", "plant-a") == 0
        assert fleet(path, "deploy", "rules", str(rules), "--to", "plant-b", "--replace") == 0
    out = capsys.readouterr().out
    assert f"plant-a: SUCCEEDED  {SITE_STEP}" in out and f"plant-b: SUCCEEDED  {SITE_STEP}" in out
    cameras = {"hall": {"door": {"type": "zone", "polygon": [[0, 0], [1, 0], [1, 1]]}}}
    assert sites.jobs["plant-a"][0].args == {"cameras": cameras}  # no replace key: the site merges
    assert sites.jobs["plant-b"][0].args == {"cameras": cameras, "replace": True}


def test_desire_none_and_what_a_rollback_would_meet(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    publish_retained(
        broker,
        [
            (FleetTopics(ROOT, "plant-a").reported, reported("plant-a", "plant-a", 5)),
            (FleetTopics(ROOT, "plant-b").reported, reported("plant-b", "plant-b", 600)),  # offline
        ],
    )
    assert fleet(path, "desire", "model", "people", "2", "--to", "plant-a") == 0
    assert fleet(path, "desire", "model", "vehicles", "1", "--to", "plant-a") == 0
    capsys.readouterr()
    with FakeSites(broker, keys, {"plant-a": "succeed"}):
        assert fleet(path, "rollback", "people", "--to", "plant-a", "--to", "plant-b", "--timeout", "3") == 3
        out = capsys.readouterr().out
        assert fleet(path, "rollback", "people", "--version", "2", "--to", "plant-a") == 0
        assert "desires" not in capsys.readouterr().out  # the version it desires: nothing undoes it
    notes = [
        "site plant-b last heard 10 min ago: its job waits until it is back",
        "site plant-a desires people 2: it will go back to it; "
        "`edgesight fleet desire model people none --to plant-a` to stop",
    ]
    lines = out.splitlines()
    assert lines[:2] == notes, out  # before the first job is sent
    assert not any("site plant-a last heard" in line for line in lines)  # online: nothing to say

    assert fleet(path, "desire", "model", "people", "none", "--to", "plant-a") == 0
    assert "plant-a: desired models vehicles 1" in capsys.readouterr().out
    topic = FleetTopics(ROOT, "plant-a").desired_delta
    desired = parse_desired(retained(broker, topic)[topic])
    assert desired is not None and desired.models == {"vehicles": "1"} and desired.signed is not None
    job = verify_document(desired.signed, load_trusted_keys([keys / "operator.pub"]), "plant-a")
    assert job.operation == "set_desired" and job.args == {"models": {"vehicles": "1"}}
    assert fleet(path, "desire", "model", "vehicles", "none", "--to", "plant-a") == 0
    assert "plant-a: desired models none" in capsys.readouterr().out


def test_jobs_are_listed_oldest_first_with_the_reason_cut(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    key, now = load_signing_key(keys / "operator.key"), int(time.time())
    messages = []
    for job_id, thing, age_s in (("job-new", "plant-a", 60), ("job-old", "plant-b", 7200), ("job-mid", "thing-c", 600)):
        document = sign_document("restart_service", {"service": "rules"}, [thing], key)
        execution = job_execution(job_id, thing, document, queued_at=now - age_s)
        messages.append((FleetTopics(ROOT, thing).job_document(job_id), encode(notify_next(execution))))
    reason = "rules did not answer the reload within 30 s; " * 5
    done = encode(status_update("FAILED", {"reason": reason}))  # its document cleared: no queuedAt any more
    publish_retained(broker, [*messages, (FleetTopics(ROOT, "plant-a").job_update("job-done"), done)])
    assert fleet(path, "jobs") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["JOB", "job-done", "job-old", "job-mid", "job-new"]
    assert reason[:79] + "…" in lines[1] and reason not in lines[1]
    assert fleet(path, "jobs", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["job_id"] for row in rows] == ["job-done", "job-old", "job-mid", "job-new"]
    assert rows[0]["reason"] == reason  # whole


def test_paths_in_fleet_yaml_are_its_folders_and_a_missing_one_says_how(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_fleet(tmp_path, broker.port, None, operator_key="keys/operator.key")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("EDGESIGHT_FLEET_FILE", raising=False)
    assert fleet(path, "desire", "model", "people", "5", "--to", "plant-a") == 0
    assert "plant-a: desired models people 5" in capsys.readouterr().out
    assert main(["fleet", "status"]) == 2
    assert "no fleet file at ./fleet.yaml: pass --file FILE or set EDGESIGHT_FLEET_FILE" in capsys.readouterr().err
    monkeypatch.setenv("EDGESIGHT_FLEET_FILE", "nowhere.yaml")
    assert main(["fleet", "status"]) == 2
    assert "no fleet file at nowhere.yaml ($EDGESIGHT_FLEET_FILE)" in capsys.readouterr().err


def until(condition: Any, seconds: float) -> None:
    end = time.monotonic() + scaled(seconds)
    while not condition() and time.monotonic() < end:
        time.sleep(0.05)


def test_a_status_alone_is_no_proof_the_sites_own_report_must_confirm_it(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet_follow, "CONFIRM_S", 0.5)
    path = write_fleet(tmp_path, broker.port, keys)
    with FakeSites(broker, keys, {"plant-a": "forge", "plant-b": "forge"}):  # an attacker answers, no site does
        code = fleet(path, "restart", "rules", "--to", "plant-a", "--to", "plant-b", "--canary", "1", "--timeout", "2")
    out = capsys.readouterr().out
    assert code == 1, out
    assert "canary failed (plant-a SUCCEEDED: status heard but not confirmed by the site's report: its job" in out
    assert "the other 1 site(s) get no job" in out and "plant-a: SUCCEEDED" not in out
    assert "plant-a: IN_PROGRESS   [2J ]0;owned  31m gnp.exe" in out  # the attacker's step, defanged
    assert all(line.isprintable() for line in out.splitlines()), out
    assert [thing_of(topic, ROOT) for topic in documents(broker)] == ["plant-a"]  # the site still gets its job
    with FakeSites(broker, keys, {"plant-b": "forge", "thing-c": "forge"}):
        code = fleet(path, "restart", "rules", "--to", "plant-b", "--to", "plant-c", "--timeout", "2")
    out = capsys.readouterr().out
    assert code == 3, out
    assert "plant-c SUCCEEDED: status heard but not confirmed by the site's report" in out
    assert "2 site(s): 0 succeeded, 2 not confirmed by their own report: their jobs stay queued" in out
    assert len(documents(broker)) == 3
    assert fleet(path, "jobs", "--prune") == 0  # a final status alone does not prune either
    out = capsys.readouterr().out
    assert "pruned 0 finished job(s)" in out and "kept 3 finished job(s) whose site's own report does not" in out
    assert len(documents(broker)) == 3 and all(line.isprintable() for line in out.splitlines())

    with FakeSites(broker, keys, {"plant-a": "succeed", "plant-b": "succeed", "thing-c": "succeed"}) as sites:
        until(lambda: len(sites.answered) == 3, 30)  # the real sites run the documents left for them
        assert sorted(sites.jobs) == ["plant-a", "plant-b", "thing-c"]
        started = time.monotonic()
        assert fleet(path, "restart", "rules", "--to", "plant-a", "--timeout", "60") == 0
        assert time.monotonic() - started < scaled(10)  # confirmed by the report right after: no wait
    assert "plant-a: SUCCEEDED" in capsys.readouterr().out
    assert fleet(path, "jobs", "--prune") == 0
    out = capsys.readouterr().out  # plant-a's first job: its report names the newer one now, and it has not expired
    assert "pruned 3 finished job(s)" in out and "kept 1 finished job(s)" in out
    key = load_signing_key(keys / "operator.key")
    old = sign_document("restart_service", {"service": "rules"}, ["plant-b"], key, now=time.time() - 2 * 86400)
    execution = job_execution("job-old", "plant-b", old, queued_at=int(time.time()) - 2 * 86400)
    forged = json.dumps({"status": "SUCCEEDED", "statusDetails": {}}).encode()
    publish_retained(
        broker,
        [
            (FleetTopics(ROOT, "plant-b").job_document("job-old"), encode(notify_next(execution))),
            (FleetTopics(ROOT, "plant-b").job_update("job-old"), forged),
        ],
    )
    assert fleet(path, "jobs", "--prune") == 0  # an expired document runs nowhere: no report needed
    assert "pruned 1 finished job(s)" in capsys.readouterr().out
    assert [thing_of(topic, ROOT) for topic in documents(broker)] == ["plant-a"]


def test_texts_from_the_network_are_printed_defanged(
    tmp_path: Path, broker: Mosquitto, keys: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, keys)
    with FakeSites(broker, keys, {"plant-a": "fail"}, reason=HOSTILE, raw=True):  # a site's own report confirms
        assert fleet(path, "restart", "rules", "--to", "plant-a", "--to", "plant-b", "--timeout", "3") == 1
    out = capsys.readouterr().out
    assert "plant-a: FAILED   [2J ]0;owned  31m gnp.exe" in out and "plant-a FAILED:  [2J ]0;owned" in out, out
    junk = json.dumps({"execution": {"jobId": "junk-1", "jobDocument": {"operation": HOSTILE}, "queuedAt": 5}})
    status = json.dumps({"status": "REJECTED", "statusDetails": {"reason": HOSTILE, HOSTILE: "x"}})
    publish_retained(
        broker,
        [
            (FleetTopics(ROOT, "plant-a").job_document("junk-1"), junk.encode()),
            (FleetTopics(ROOT, "plant-a").job_update("junk-1"), status.encode()),
        ],
    )
    assert fleet(path, "jobs") == 0
    out = capsys.readouterr().out
    assert all(line.isprintable() for line in out.splitlines()), out
    [junk_line] = [line for line in out.splitlines() if line.startswith("junk-1")]
    assert junk_line.split()[:4] == ["junk-1", "plant-a", "[2J", "]0;owned"] and "REJECTED" in junk_line
    assert fleet(path, "jobs", "--json") == 0  # JSON escapes every control character: safe as it is
    assert "\x1b" not in capsys.readouterr().out


BIG = "1" + "0" * 400  # an int JSON and Python read, and no float holds


def with_numbers(message: dict[str, Any], **numbers: str) -> bytes:
    """``message`` as JSON with ``numbers`` (dotted paths) written as they are: numbers no Python float writes."""
    text = json.dumps(message)
    for name, value in numbers.items():
        text = text.replace(f'"@{name}@"', value)
    return text.encode()


def test_numbers_no_float_holds_are_ignored_and_counted_never_a_traceback(
    tmp_path: Path, broker: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_fleet(tmp_path, broker.port, None)

    def report(thing: str, **fields: Any) -> dict[str, Any]:
        return json.loads(reported(thing, thing, 5, **fields))  # type: ignore[no-any-return]

    documents = {"jobId": "job-big", "thingName": "plant-a", "jobDocument": {}, "queuedAt": "@queued@"}
    publish_retained(
        broker,
        [
            (FleetTopics(ROOT, "plant-a").reported, with_numbers(report("plant-a", reported_at="@at@"), at=BIG)),
            (FleetTopics(ROOT, "plant-b").reported, with_numbers(report("plant-b", interval_s="@i@"), i="1e400")),
            (FleetTopics(ROOT, "thing-c").reported, with_numbers(report("thing-c", events_last_hour="@e@"), e=BIG)),
            (FleetTopics(ROOT, "dead").reported, reported("dead", "dead", 3 * 86400, interval_s=1e12)),
            (FleetTopics(ROOT, "liar").reported, reported("liar", "liar", -1e9, interval_s=1e12)),
            (FleetTopics(ROOT, "busy").reported, reported("busy", "busy", 5, events_last_hour=1e12)),
            (FleetTopics(ROOT, "absurd").reported, reported("absurd", "absurd", 5, events_last_hour=1e308)),
            (FleetTopics(ROOT, "plant-a").job_document("job-big"), with_numbers({"execution": documents}, queued=BIG)),
            (
                FleetTopics(ROOT, "plant-a").job_update("job-v"),
                with_numbers({"status": "FAILED", "expectedVersion": "@v@"}, v=BIG),
            ),
        ],
    )
    assert fleet(path, "status") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "edgesight fleet: 2 malformed messages ignored" in captured.err
    lines = {line.split()[0]: line for line in captured.out.splitlines()}
    assert "never seen" in lines["plant-a"] and "never seen" in lines["plant-b"]  # their reports were dropped
    assert re.search(r"online \d+s ago +1\.4\.0 +people 5 +1/2 +0 ", lines["thing-c"]), lines["thing-c"]
    assert "offline 3d ago" in lines["dead"]  # an interval of 1e12 s reads as a day
    assert re.search(r"online \ds ago .* clock 11574 days ahead", lines["liar"]), lines["liar"]
    assert " 1000000000 " in lines["busy"]  # events an hour: shown bounded
    assert re.search(r"1/2 +0 ", lines["absurd"]) and len(lines["absurd"]) < 200  # 1e308: beyond any count, absent
    assert fleet(path, "jobs", "--json") == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and "edgesight fleet: 2 malformed messages ignored" in captured.err
    rows = {row["job_id"]: row for row in json.loads(captured.out)}
    assert rows["job-big"]["status"] == "QUEUED" and rows["job-big"]["age_s"] is None
    assert rows["job-v"]["status"] == "QUEUED"  # its status did not parse: as if none

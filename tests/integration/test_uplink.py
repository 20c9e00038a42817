"""The uplink against real servers: Mosquitto (outage, SIGKILL, mutual TLS) and S3/CloudWatch via moto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from common._compat import timeout
from common.bus import EventSender, Publisher
from contracts import CameraStatus, Event, Snapshot, TrackedObject
from tests.integration.conftest import Mosquitto, Services
from tests.support import deadline, http_get, publish_until_counted, scaled

pytestmark = pytest.mark.slow


def make_event(
    index: int, *, rule: str = "door", snapshot: bytes | None = None, event_type: str = "line_cross"
) -> Event:
    return Event(
        id=f"evt-{index:05d}",
        event_type=event_type,
        site="test",
        camera="dock",
        rule=rule,
        ts_ns=time.time_ns(),
        object=TrackedObject(track_id=index, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
        counts={"in": index, "out": 0},
        attributes={"direction": "in"},
        snapshot=None if snapshot is None else Snapshot(width=2, height=2, data=snapshot),
    )


class Subscriber:
    """``mosquitto_sub`` with a persistent session (QoS 1): it gets what was published while it reconnected."""

    def __init__(self, broker: Mosquitto, topic: str, out: Path, extra: list[str] | None = None) -> None:
        self.out = out
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", topic, "-q", "1", "-c", "-i", "sub-test",
             *(extra or [])],
            stdout=out.open("w"),
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        broker.wait_subscribed(topic, "sub-test")

    def ids(self) -> list[str]:
        """Ids of the rules' events received (audit events, e.g. inference's model.load, are not theirs)."""
        events = [json.loads(line) for line in self.out.read_text().splitlines() if line.strip()]
        return [event["id"] for event in events if event.get("event_type") != "audit"]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()


def uplink_site(broker: Mosquitto, **mqtt: Any) -> dict[str, Any]:
    rules = {"door": {"type": "line", "line": [[0, 0.5], [1, 0.5]], "snapshot": True}, "bay": {"type": "presence"}}
    return {
        "cameras": {"dock": {"url": "rtsp://unused/1", "rules": rules}},
        "uplink": {"mqtt": {"host": "127.0.0.1", "port": broker.port, "topic_prefix": "edgesight", **mqtt}},
    }


async def send(
    site: Services, events: list[Event], pause_every: int = 0, pause: Callable[[], None] | None = None
) -> None:
    """Sends like the rules service does, and waits until every event is acknowledged."""
    bus = site.config.bus
    async with EventSender(bus.events.send, "rules-standin", ack_timeout_s=2) as sender:
        for index, event in enumerate(events):
            if pause is not None and index == pause_every:
                pause()
            await sender.send(event)
        async with timeout(scaled(90)):
            await sender.flush()


def wait_for_ids(subscriber: Subscriber, expected: set[str], seconds: float) -> list[str]:
    end = deadline(seconds)
    while time.monotonic() < end:
        ids = subscriber.ids()
        if expected <= set(ids):
            return ids
        time.sleep(0.2)
    missing = expected - set(subscriber.ids())
    raise AssertionError(f"{len(missing)} ids never arrived, e.g. {sorted(missing)[:5]}")


def uplink_with_subscriber(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> tuple[Mosquitto, Subscriber, Services]:
    """A Mosquitto, a subscriber to the site's events, and the bus broker + uplink publishing to it."""
    broker = mosquitto()
    subscriber = Subscriber(broker, "edgesight/test/events", tmp_path / "received.jsonl")
    site = services(uplink_site(broker))
    site.start("broker")
    site.start("uplink")
    return broker, subscriber, site


def test_broker_outage_of_20_s_loses_nothing(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    broker, subscriber, site = uplink_with_subscriber(tmp_path, mosquitto, services)
    events = [make_event(i) for i in range(1000)]
    try:
        asyncio.run(send(site, events[:500]))
        wait_for_ids(subscriber, {e.id for e in events[:500]}, 30)
        broker.stop()
        asyncio.run(send(site, events[500:]))  # acknowledged: they are in the spool
        time.sleep(20)
        broker.start()
        ids = wait_for_ids(subscriber, {e.id for e in events}, 60)
    finally:
        subscriber.stop()
    assert len(set(ids)) == 1000
    assert "sink unavailable; events stay in the spool" in site.log("uplink")


def test_uplink_killed_mid_burst_loses_nothing(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    _, subscriber, site = uplink_with_subscriber(tmp_path, mosquitto, services)
    events = [make_event(i) for i in range(600)]

    def kill_and_restart() -> None:
        site.processes["uplink"].kill()
        site.processes["uplink"].wait()
        site.start("uplink")

    try:
        asyncio.run(send(site, events, pause_every=300, pause=kill_and_restart))
        ids = wait_for_ids(subscriber, {e.id for e in events}, 60)
    finally:
        subscriber.stop()
    assert set(ids) == {e.id for e in events}  # every id at least once; a duplicate is the same id again


def test_count_topic_and_availability(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    broker = mosquitto()
    site = services(uplink_site(broker, stats_interval_s=0.5))
    site.start("broker")
    site.start("uplink")
    asyncio.run(send(site, [make_event(7)]))
    end = deadline(60)
    while True:  # retained: whoever subscribes gets them, once they are published
        seen = subprocess.run(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "edgesight/test/#", "-v", "-W", "2"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        # the retained stats list what the uplink has heard: its own Health may come after the first
        if ("/count " in seen and '"uplink/uplink-t"' in seen) or time.monotonic() > end:
            break
    assert 'edgesight/test/dock/door/count {"in": 7, "out": 0}' in seen
    assert "edgesight/test/available online" in seen
    stats = json.loads(
        next(line for line in seen.splitlines() if line.startswith("edgesight/test/stats ")).split(" ", 1)[1]
    )
    assert stats["services"]["uplink/uplink-t"]["state"] == "ready"
    assert stats["spool"]["events"] == 0  # delivered, so gone from the spool


def test_a_client_taking_over_the_client_id_is_noticed_and_the_uplink_reconnects(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    """A client connecting as ``edgesight-<site>`` makes the broker drop the uplink (no last will on a
    takeover): said, the gauge goes 0, and once the intruder is gone the uplink is back, stats and ``online``."""
    broker = mosquitto()
    site = services(uplink_site(broker, stats_interval_s=0.5))
    site.start("broker")
    base = site.start("uplink")
    asyncio.run(send(site, [make_event(1)]))
    end = deadline(60)
    while "mqtt connected" not in site.log("uplink"):
        assert time.monotonic() < end, site.log("uplink")
        time.sleep(0.2)
    seen = tmp_path / "seen.txt"
    watcher = subprocess.Popen(
        ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-t", "edgesight/test/#", "-v", "-i", "watcher"],
        stdout=seen.open("w"),
        stderr=subprocess.DEVNULL,
    )
    try:
        broker.wait_subscribed("edgesight/test/#", "watcher")
        end = deadline(30)
        while "edgesight/test/stats " not in seen.read_text():
            assert time.monotonic() < end, "no stats before the takeover"
            time.sleep(0.2)
        went_down = False
        intruder = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(broker.port), "-i", "edgesight-test", "-c", "-t", "nothing"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            end = time.monotonic() + 4
            while time.monotonic() < end:
                _, body = http_get(f"{base}/metrics")
                went_down |= 'edgesight_sink_connected{sink="mqtt"} 0.0' in body
                time.sleep(0.05)
        finally:
            intruder.kill()
            intruder.wait()
        end = deadline(60)
        while "mqtt: connection lost; reconnecting" not in site.log("uplink"):
            assert time.monotonic() < end, site.log("uplink")
            time.sleep(0.2)
        _, body = http_get(f"{base}/metrics")
        failures = next(
            line for line in body.splitlines() if line.startswith('edgesight_sink_failures_total{sink="mqtt"}')
        )
        assert went_down or float(failures.split()[-1]) > 0, body
        end = deadline(60)  # back: connected, said online again (a fresh retained message), stats flowing
        while 'edgesight_sink_connected{sink="mqtt"} 1.0' not in http_get(f"{base}/metrics")[1]:
            assert time.monotonic() < end, site.log("uplink")
            time.sleep(0.2)
        assert site.log("uplink").count("mqtt connected") >= 2
        end = deadline(30)
        while seen.read_text().count("edgesight/test/available online") < 2:
            assert time.monotonic() < end, seen.read_text()[-2000:]
            time.sleep(0.2)
        stats_before = seen.read_text().count("edgesight/test/stats ")
        end = deadline(30)
        while seen.read_text().count("edgesight/test/stats ") < stats_before + 3:
            assert time.monotonic() < end, "stats stopped after the takeover"
            time.sleep(0.2)
    finally:
        watcher.terminate()
        watcher.wait()


def make_certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with ``cryptography``."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.timezone.utc)

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = key()
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("edgesight test CA"))
        .issuer_name(name("edgesight test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(common: str, server: bool) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        leaf_key = key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common))
            .issuer_name(ca.subject)
            .public_key(leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
            )
        return builder.sign(ca_key, hashes.SHA256()), leaf_key

    files: dict[str, Path] = {}

    def write(label: str, certificate: x509.Certificate, private: ec.EllipticCurvePrivateKey | None) -> None:
        files[f"{label}_cert"] = folder / f"{label}.crt"
        files[f"{label}_cert"].write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        if private is not None:
            files[f"{label}_key"] = folder / f"{label}.key"
            files[f"{label}_key"].write_bytes(
                private.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
                )
            )

    folder.mkdir(parents=True, exist_ok=True)
    write("ca", ca, None)
    write("server", *issue("127.0.0.1", server=True))
    write("client", *issue("edgesight-test-device", server=False))
    return files


def test_mutual_tls_connects_with_a_client_certificate_and_is_refused_without(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    certs = make_certificates(tmp_path / "certs")
    tls_listener = (
        f"cafile {certs['ca_cert']}\ncertfile {certs['server_cert']}\nkeyfile {certs['server_key']}\n"
        "require_certificate true\n"
    )
    broker = mosquitto(tls_listener)
    tls = {
        "ca_file": str(certs["ca_cert"]),
        "cert_file": str(certs["client_cert"]),
        "key_file": str(certs["client_key"]),
    }
    site = services(uplink_site(broker, tls=tls))
    site.start("broker")
    base = site.start("uplink")
    asyncio.run(send(site, [make_event(1)]))
    end = deadline(60)
    while "mqtt connected" not in site.log("uplink") and time.monotonic() < end:
        time.sleep(0.2)
    assert "mqtt connected" in site.log("uplink")

    end = deadline(30)
    while 'edgesight_sink_sent_total{sink="mqtt"} 1.0' not in http_get(f"{base}/metrics")[1]:
        assert time.monotonic() < end, "the event was not confirmed over mutual TLS"
        time.sleep(0.2)

    # the same broker, a device without its certificate: refused, said once, clearly
    site.processes["uplink"].terminate()
    site.processes["uplink"].wait(timeout=scaled(30))
    refused = services({**uplink_site(broker, tls={"ca_file": str(certs["ca_cert"])})})
    refused.start("uplink")
    asyncio.run(send(refused, [make_event(2)]))  # spooled and acknowledged all the same
    end = deadline(60)
    while "sink unavailable" not in refused.log("uplink"):
        assert time.monotonic() < end, refused.log("uplink")
        time.sleep(0.2)
    time.sleep(3)  # retries go on, quietly
    log = refused.log("uplink")
    assert "mqtt connected" not in log
    assert "CERTIFICATE_REQUIRED" in log  # the broker's reason, in the log
    assert log.count("sink unavailable; events stay in the spool") == 1


@pytest.fixture
def moto_server() -> Any:
    from moto.server import ThreadedMotoServer

    from tests.conftest import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    url = f"http://127.0.0.1:{port}"
    # moto keeps its AWS state per process, not per server: without a reset a test sees an earlier one's
    # log events and metrics (the reports test's events were in this one's CloudWatch log stream)
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=10).close()
    yield url
    server.stop()


def test_snapshots_to_s3_events_to_cloudwatch_and_no_image_elsewhere(
    tmp_path: Path,
    moto_server: str,
    mosquitto: Callable[..., Mosquitto],
    services: Callable[[dict[str, Any]], Services],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    credentials = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-1"}
    for key, value in credentials.items():
        monkeypatch.setenv(key, value)
    s3 = boto3.client("s3", endpoint_url=moto_server)
    s3.create_bucket(Bucket="site-snapshots", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    broker = mosquitto()
    subscriber = Subscriber(broker, "edgesight/test/events", tmp_path / "received.jsonl")
    sections = uplink_site(broker)
    sections["uplink"] |= {
        "s3": {"bucket": "site-snapshots", "prefix": "snaps", "endpoint_url": moto_server},
        "cloudwatch": {"endpoint_url": moto_server, "namespace": "EdgeSightTest", "metrics_interval_s": 1},
        "jsonl": {"path": "uplink.jsonl"},
    }
    site = services(sections)
    site.start("broker")
    site.start("uplink", env=credentials)

    async def camera_status() -> None:  # what ingest says about a camera: its fps goes to CloudWatch
        async with Publisher(site.config.bus.publish, "ingest-standin") as publisher:
            status = CameraStatus(camera="dock", state="streaming", instance="i", ts_ns=1, since_ns=1, fps=12.5)
            # again until heard: the uplink subscribes once running, and ZeroMQ drops what comes before
            await publish_until_counted(publisher, "cameras", "dock", status, site.base("uplink"), "uplink")

    asyncio.run(camera_status())
    jpeg = b"\xff\xd8\xff\xe0" + b"JFIF-test-image" * 100 + b"\xff\xd9"
    asked = make_event(1, rule="door", snapshot=jpeg)  # the door rule asks for snapshots
    # the bay rule (presence) does not: its image must not leave
    unasked = make_event(2, rule="bay", event_type="presence", snapshot=jpeg)
    try:
        asyncio.run(send(site, [asked, unasked]))
        ids = wait_for_ids(subscriber, {asked.id, unasked.id}, 30)
    finally:
        subscriber.stop()
    assert sorted(ids) == [asked.id, unasked.id]
    published = {json.loads(line)["id"]: json.loads(line) for line in subscriber.out.read_text().splitlines()}
    day = time.strftime("%Y-%m-%d", time.gmtime(asked.ts_ns / 1e9))
    key = f"snaps/test/dock/{day}/{asked.id}.jpg"
    assert published[asked.id]["snapshot"]["s3_key"] == key  # MQTT names the object once it is uploaded
    stored = s3.get_object(Bucket="site-snapshots", Key=key)
    assert stored["Body"].read() == jpeg and stored["ServerSideEncryption"] == "AES256"
    listing = s3.list_objects_v2(Bucket="site-snapshots")
    assert [o["Key"] for o in listing["Contents"]] == [key]  # nothing for the rule that did not ask
    assert published[unasked.id]["snapshot"] is None
    # no image bytes anywhere but S3: not on MQTT, not in the jsonl sink
    for text in (subscriber.out.read_text(), (Path(site.config.site.state_dir) / "uplink.jsonl").read_text()):
        assert "JFIF-test-image" not in text and "/9j/" not in text

    logs = boto3.client("logs", endpoint_url=moto_server)
    cloudwatch = boto3.client("cloudwatch", endpoint_url=moto_server)
    end = deadline(60)
    while True:
        try:  # the uplink makes its log group on its first batch: on a loaded machine after this first look
            events = logs.get_log_events(logGroupName="/edgesight/events", logStreamName="test").get("events", [])
        except logs.exceptions.ResourceNotFoundException:
            events = []
        metrics = cloudwatch.list_metrics(Namespace="EdgeSightTest")["Metrics"]
        if len(events) == 2 and metrics:
            break
        assert time.monotonic() < end, (events, metrics)
        time.sleep(0.5)
    assert {json.loads(e["message"])["id"] for e in events} == {asked.id, unasked.id}
    end = deadline(30)
    while {m["MetricName"] for m in metrics} != {"Events", "CameraFps"}:
        assert time.monotonic() < end, metrics
        time.sleep(0.5)
        metrics = cloudwatch.list_metrics(Namespace="EdgeSightTest")["Metrics"]
    rules = {d["Value"] for m in metrics if m["MetricName"] == "Events" for d in m["Dimensions"] if d["Name"] == "Rule"}
    assert rules == {"door", "bay"}
    fps = cloudwatch.get_metric_statistics(
        Namespace="EdgeSightTest",
        MetricName="CameraFps",
        Dimensions=[{"Name": "Site", "Value": "test"}, {"Name": "Camera", "Value": "dock"}],
        StartTime=time.time() - 600,
        EndTime=time.time() + 600,
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert fps and fps[0]["Maximum"] == 12.5


def test_an_event_spooled_under_looser_rules_goes_to_dead_letters_and_the_rest_flow(
    tmp_path: Path, mosquitto: Callable[..., Mosquitto], services: Callable[[dict[str, Any]], Services]
) -> None:
    """Before names were strict, camera "x/#" made the count topic a wildcard: every publish of its
    batch failed as an outage, ids went out up to 16 times, and a restart did not clear it."""
    from services.uplink.spool import Spool

    broker = mosquitto()
    subscriber = Subscriber(broker, "edgesight/test/events", tmp_path / "received.jsonl")
    site = services(uplink_site(broker))
    good = [make_event(i) for i in range(40)]
    poisoned = msgspec.structs.replace(make_event(99), camera="x/#")  # constructs: patterns apply at decode
    spool = Spool(Path(site.config.site.state_dir) / "uplink-spool.sqlite", max_bytes=1 << 30)
    events = [*good[:20], poisoned, *good[20:]]
    spool.add(events, {event.id: ["mqtt"] for event in events})
    spool.close()
    site.start("broker")
    site.start("uplink")
    try:
        ids = wait_for_ids(subscriber, {e.id for e in good}, 30)
    finally:
        subscriber.stop()
    assert sorted(ids) == sorted(e.id for e in good)  # each once: nothing republished
    assert site.log("uplink").count("moved to dead_letters") == 1
    spool = Spool(Path(site.config.site.state_dir) / "uplink-spool.sqlite", max_bytes=1 << 30)
    try:
        assert [(i, s) for i, s, _ in spool.dead_letters()] == [(poisoned.id, "*")]
    finally:
        spool.close()


def spooled(site: Services) -> float:
    _, body = http_get(f"{site.base('uplink')}/metrics")
    return float(next(line for line in body.splitlines() if line.startswith("edgesight_spool_events ")).split()[1])


class WebhookReceiver:
    """A real HTTP server that refuses one event id with 400 and answers 503 once, at its ``fail_at``-th POST."""

    def __init__(self, refuse: str, fail_at: int) -> None:
        import http.server
        import threading

        self.ids: list[str] = []
        self.posts = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts += 1
                if body["id"] == refuse:
                    self.send_response(400)
                elif receiver.posts == fail_at:
                    self.send_response(503)
                else:
                    receiver.ids.append(body["id"])
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_refused_event_is_dead_lettered_and_a_retry_resends_only_the_unconfirmed(
    services: Callable[[dict[str, Any]], Services],
) -> None:
    events = [make_event(i) for i in range(60)]
    receiver = WebhookReceiver(refuse=events[10].id, fail_at=30)
    # the events' camera and rule are in the site file: the uplink refuses an event naming others (#31)
    cameras = {"dock": {"url": "rtsp://unused/1", "rules": {"door": {"type": "line", "line": [[0, 0.5], [1, 0.5]]}}}}
    site = services({"cameras": cameras, "uplink": {"webhook": {"url": receiver.url, "timeout_s": 5}}})
    try:
        site.start("broker")
        site.start("uplink")
        asyncio.run(send(site, events))
        end = deadline(60)
        while len(receiver.ids) < 59 or spooled(site) != 0:  # an empty spool: nothing more will be sent
            assert time.monotonic() < end, f"{len(receiver.ids)} delivered:\n{site.log('uplink')}"
            time.sleep(0.2)
    finally:
        receiver.close()
    assert sorted(receiver.ids) == sorted(e.id for i, e in enumerate(events) if i != 10)  # none twice
    log = site.log("uplink")
    assert log.count("event refused for good") == 1 and "HTTP 400" in log
    assert "sink unavailable" in log  # the 503: an outage, retried from the first unconfirmed event

"""The fleet's protocol (common/fleet): signed documents and every reason one is refused, the ledger
against replays, topics, the AWS shapes parsed from hostile payloads, and the roster."""

from __future__ import annotations

import base64
import json
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from common.fleet import shapes
from common.fleet.ledger import FINISHED_KEEP_S, MAX_FINISHED, Ledger, LedgerError
from common.fleet.roster import MAX_EVENTS_PER_HOUR, roster
from common.fleet.shapes import MAX_PAYLOAD_BYTES, MAX_REPORTED_BYTES, MalformedMessage, printable
from common.fleet.signing import (
    CLOCK_SKEW_S,
    MAX_DOCUMENT_BYTES,
    JobRefused,
    canonical,
    parse_time,
    sign_document,
    verify_document,
)
from common.fleet.topics import FleetTopics, job_id_of, jobs_mode, thing_of
from common.trust.keys import key_id

NOW = 1_800_000_000.0
KEY = Ed25519PrivateKey.generate()
OPERATOR = key_id(KEY.public_key())
TRUSTED: dict[str, Ed25519PublicKey] = {OPERATOR: KEY.public_key()}
SHA = "ab" * 32


def _doc(operation: str = "restart_service", args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return sign_document(operation, args or {"service": "rules"}, kw.pop("targets", ["site-a"]), KEY, now=NOW, **kw)


def _resign(doc: dict[str, Any], key: Ed25519PrivateKey = KEY) -> dict[str, Any]:
    """A document changed after signing, signed again by ``key`` (a trusted operator's careless tool)."""
    doc = {k: v for k, v in doc.items() if k != "signature"}
    doc["signature"] = base64.b64encode(key.sign(canonical(doc))).decode()
    return doc


def _refusal(doc: object, thing: str = "site-a", now: float = NOW + 60) -> str:
    with pytest.raises(JobRefused) as refused:
        verify_document(doc, TRUSTED, thing, now=now)
    return refused.value.reason


# Signing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("operation", "args"),
    [
        ("install_model", {"url": "s3://b/m/people/2.espkg", "sha256": SHA, "name": "people", "version": "2"}),
        ("rollback_model", {"name": "people", "version": None}),
        ("install_app", {"url": "https://x/app.tar", "sha256": SHA, "app": "counter", "cameras": {"cam": "dock"}}),
        ("update_rules", {"cameras": {"dock": {"door": {"type": "line"}}}}),
        ("update_rules", {"cameras": {"dock": {"door": {"type": "line"}}}, "replace": True}),
        ("restart_service", {"service": "inference@1"}),
        ("set_desired", {"models": {"people": "5"}}),
    ],
)
def test_every_operation_round_trips(operation: str, args: dict[str, Any]) -> None:
    doc = _doc(operation, args, targets=["site-a", "site-b"], ttl_s=3600)
    assert json.loads(json.dumps(doc)) == doc  # plain JSON, as it travels
    job = verify_document(json.loads(json.dumps(doc)), TRUSTED, "site-b", now=NOW + 10)
    assert (job.operation, job.args, job.operator, job.targets) == (operation, args, OPERATOR, ("site-a", "site-b"))
    assert job.issued_at == NOW and job.expires_at == NOW + 3600 and len(job.nonce) == 32
    assert doc["issued_at"] == "2027-01-15T08:00:00Z" and parse_time(doc["issued_at"]) == NOW


def test_two_documents_never_share_a_nonce() -> None:
    assert _doc()["nonce"] != _doc()["nonce"]


def test_unsigned() -> None:
    doc = _doc()
    del doc["signature"]
    assert _refusal(doc) == "unsigned"
    assert _refusal({**doc, "signature": ""}) == "unsigned"
    assert _refusal({"anything": 1}) == "unsigned"


def test_unknown_operator_is_named() -> None:
    stranger = Ed25519PrivateKey.generate()
    doc = sign_document("restart_service", {"service": "rules"}, ["site-a"], stranger, now=NOW)
    assert _refusal(doc) == f"unknown operator {key_id(stranger.public_key())}"
    # A stranger claiming to be a trusted operator fails at the signature.
    assert _refusal(_resign({**doc, "operator": OPERATOR}, stranger)) == "bad signature"
    assert _refusal({**doc, "operator": "\x1b[2J" * 40}).startswith("unknown operator '")  # never printed raw


def test_one_changed_byte_of_args_breaks_the_signature() -> None:
    doc = _doc(args={"service": "rules"})
    tampered = json.loads(json.dumps(doc).replace('"rules"', '"rulez"'))
    assert tampered["args"] == {"service": "rulez"}
    assert _refusal(tampered) == "bad signature"
    for changed in ({"targets": ["site-a", "site-b"]}, {"expires_at": "2099-01-01T00:00:00Z"}, {"nonce": "0" * 32}):
        assert _refusal({**doc, **changed}) == "bad signature"
    assert _refusal({**doc, "signature": "not base64!"}) == "bad signature"
    assert _refusal({**doc, "signature": base64.b64encode(b"short").decode()}) == "bad signature"


def test_expired_and_not_yet_valid_at_their_edges() -> None:
    doc = _doc(ttl_s=600)
    verify_document(doc, TRUSTED, "site-a", now=NOW + 599)
    assert _refusal(doc, now=NOW + 600) == "expired"
    verify_document(doc, TRUSTED, "site-a", now=NOW - CLOCK_SKEW_S)  # clocks disagree a little
    assert _refusal(doc, now=NOW - CLOCK_SKEW_S - 1) == "not yet valid"


def test_not_for_this_site() -> None:
    assert _refusal(_doc(targets=["site-b"]), thing="site-a") == "not for this site"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"targets": "site-a"}, "malformed: targets is a list"),
        ({"targets": []}, "malformed: targets is a list"),
        ({"targets": ["site-a", "a/#"]}, "malformed: a target is not a thing name"),
        ({"operation": "format_disk"}, "malformed: operation is not one of"),
        ({"args": ["service", "rules"]}, "malformed: args is a JSON object"),
        ({"args": {"service": "rules", "extra": 1}}, "malformed: restart_service args have no 'extra'"),
        ({"args": {}}, "malformed: restart_service args lack 'service'"),
        ({"args": {"service": "rules; rm -rf /"}}, "malformed: args.service is a service name"),
        ({"nonce": "xyz"}, "malformed: nonce is not 32 hex digits"),
        ({"edgesight_job": True}, "malformed: edgesight_job is not 1"),
        ({"edgesight_job": 2}, "malformed: edgesight_job is not 1"),
        ({"issued_at": 1800000000}, "malformed: a time is not"),
        ({"issued_at": "2027-02-30T00:00:00Z"}, "malformed: a time is not a date"),
        ({"expires_at": "2027-03-15T08:00:00Z"}, "malformed: expires_at is not within 30 days"),
        ({"expires_at": "2027-01-15T07:00:00Z"}, "malformed: expires_at is not within 30 days"),
        ({"surprise": 1}, "malformed: unknown key 'surprise'"),
    ],
)
def test_malformed_documents_signed_by_a_trusted_key_are_refused(change: dict[str, Any], reason: str) -> None:
    assert _refusal(_resign({**_doc(), **change})).startswith(reason)


@pytest.mark.parametrize(
    ("operation", "args", "reason"),
    [
        ("install_model", {"url": "file:///etc/passwd", "sha256": SHA, "name": "p", "version": "1"}, "args.url"),
        ("install_model", {"url": "s3://b/k", "sha256": "AB" * 32, "name": "p", "version": "1"}, "args.sha256"),
        ("install_model", {"url": "s3://b/k", "sha256": SHA, "name": "../../etc", "version": "1"}, "args.name"),
        ("install_model", {"url": "s3://b/k", "sha256": SHA, "name": "p", "version": "../1"}, "version '../1'"),
        ("rollback_model", {"name": "p", "version": 3}, "args.version"),
        ("install_app", {"url": "s3://b/k", "sha256": SHA, "app": "a", "cameras": {"n": 1}}, "args.cameras"),
        ("update_rules", {"cameras": {"dock": {"door": "line"}}}, "args.cameras"),
        ("update_rules", {"cameras": {}, "replace": "yes"}, "args.replace is true or false"),
        ("update_rules", {"cameras": {}, "replace": None}, "args.replace is true or false"),
        ("update_rules", {"cameras": {}, "merge": True}, "update_rules args have no 'merge'"),
        ("set_desired", {"models": {"people": "../5"}}, "version '../5'"),
    ],
)
def test_malformed_args_are_refused_before_signing(operation: str, args: dict[str, Any], reason: str) -> None:
    with pytest.raises(JobRefused, match=r"^malformed: ") as refused:
        sign_document(operation, args, ["site-a"], KEY, now=NOW)
    assert reason in refused.value.reason


def test_oversized_and_deep_documents_are_malformed() -> None:
    big = _resign({**_doc(), "args": {"cameras": {f"c{i}": {"r": {"x": "y" * 100}} for i in range(400)}}})
    assert len(canonical(big)) > MAX_DOCUMENT_BYTES
    assert _refusal(big) == f"malformed: over {MAX_DOCUMENT_BYTES} bytes"
    deep: dict[str, Any] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]
    assert _refusal(_resign({**_doc("update_rules", {"cameras": {}}), "args": {"cameras": {"c": {"r": deep}}}}))
    assert "deeper than" in _refusal(_resign({**_doc("update_rules", {"cameras": {}}), "args": {"cameras": deep}}))
    for hostile in (None, [], "doc", 7, {"signature": "x", "operator": 5}):
        assert _refusal(hostile).startswith("malformed: ")
    with pytest.raises(JobRefused, match="ttl_s"):
        _doc(ttl_s=0)
    with pytest.raises(JobRefused, match="ttl_s"):
        _doc(ttl_s=31 * 86400)


# Ledger --------------------------------------------------------------------------------------------


def test_ledger_remembers_nonces_and_jobs_across_instances(tmp_path: Path) -> None:
    path = tmp_path / "fleet" / "ledger.json"
    ledger = Ledger(path)
    now = 2_000_000_000.0
    assert not ledger.seen("a" * 32, now=now) and ledger.finished("job-1") is None
    ledger.remember("a" * 32, expires_at=now + 3600, now=now)
    ledger.finish("job-1", "SUCCEEDED", now=now)
    ledger.desired_issued_at = now - 5
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = Ledger(path)
    assert again.seen("a" * 32, now=now + 10)  # a replay after a restart
    assert again.finished("job-1") == "SUCCEEDED" and again.desired_issued_at == now - 5
    assert not again.seen("b" * 32, now=now)
    assert not (tmp_path / "fleet" / "ledger.json.tmp").exists()


def test_ledger_prunes_expired_nonces_and_old_jobs(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "ledger.json")
    now = 2_000_000_000.0
    ledger.remember("a" * 32, expires_at=now + 10, now=now)
    ledger.remember("b" * 32, expires_at=now + 1000, now=now + 20)  # saving drops the expired one
    ledger.finish("old", "FAILED", now=now - FINISHED_KEEP_S - 1)
    ledger.finish("new", "SUCCEEDED", now=now + 20)
    stored = json.loads((tmp_path / "ledger.json").read_text())
    assert set(stored["nonces"]) == {"b" * 32} and set(stored["finished"]) == {"new"}
    for i in range(MAX_FINISHED + 5):
        ledger._finished[f"j{i}"] = ("SUCCEEDED", now)
    ledger.finish("last", "SUCCEEDED", now=now)
    assert len(ledger._finished) == MAX_FINISHED and ledger.finished("last") and ledger.finished("j0") is None


@pytest.mark.parametrize("text", [b"{", b"[]", b'{"schema": 1}', b'{"schema": 9, "nonces": {}, "finished": {}}'])
def test_a_damaged_ledger_is_an_error_not_a_fresh_start(tmp_path: Path, text: bytes) -> None:
    (tmp_path / "ledger.json").write_bytes(text)
    with pytest.raises(LedgerError, match="move it away"):
        Ledger(tmp_path / "ledger.json")


# Topics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("root", ["$aws", "acme/fleet"])
def test_topics_have_aws_shapes_under_any_root(root: str) -> None:
    topics = FleetTopics(root, "site-a")
    shadow = f"{root}/things/site-a/shadow/name/edgesight"
    jobs = f"{root}/things/site-a/jobs"
    assert topics.reported == f"{shadow}/update"
    assert topics.desired_delta == f"{shadow}/update/delta"
    assert (topics.shadow_get, topics.shadow_get_accepted) == (f"{shadow}/get", f"{shadow}/get/accepted")
    assert topics.shadow_get_rejected == f"{shadow}/get/rejected"
    assert (topics.update_accepted, topics.update_rejected) == (
        f"{shadow}/update/accepted",
        f"{shadow}/update/rejected",
    )
    assert topics.notify_next == f"{jobs}/notify-next"
    assert topics.start_next == f"{jobs}/start-next"
    assert topics.start_next_accepted == f"{jobs}/start-next/accepted"
    assert topics.start_next_rejected == f"{jobs}/start-next/rejected"
    assert topics.job_updates_accepted == f"{jobs}/+/update/accepted"
    assert topics.job_updates_rejected == f"{jobs}/+/update/rejected"
    assert topics.job_update("j-1") == f"{jobs}/j-1/update"
    assert topics.job_document("j-1") == f"{jobs}/j-1/document"
    assert (topics.job_documents, topics.job_updates) == (f"{jobs}/+/document", f"{jobs}/+/update")
    assert FleetTopics.all_reported(root) == f"{root}/things/+/shadow/name/edgesight/update"
    assert FleetTopics.all_job_updates(root) == f"{root}/things/+/jobs/+/update"
    assert FleetTopics.all_job_documents(root) == f"{root}/things/+/jobs/+/document"
    assert topics.thing_of(topics.reported) == "site-a" and thing_of(topics.job_update("j-1"), root) == "site-a"
    assert topics.job_id_of(topics.job_update("j-1")) == "j-1" and job_id_of(topics.job_document("j-1"), root) == "j-1"
    assert job_id_of(topics.notify_next, root) is None and job_id_of(topics.start_next_accepted, root) is None
    assert thing_of("other/things/site-a/jobs/x/update", root) is None and job_id_of(topics.reported, root) is None


@pytest.mark.parametrize(
    ("root", "thing", "job_id"),
    [
        ("a/+", "t", "j"),
        ("", "t", "j"),
        ("/a", "t", "j"),
        ("a//b", "t", "j"),
        ("a", "t/x", "j"),
        ("a", "#", "j"),
        ("a", "t", "j/k"),
        ("a", "t", "+"),
        ("a", "t", "notify-next"),
        ("a", "t", ""),
    ],
)
def test_names_that_would_change_a_topics_shape_are_refused(root: str, thing: str, job_id: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - any of the three
        FleetTopics(root, thing).job_update(job_id)


def test_jobs_mode_follows_the_host() -> None:
    assert jobs_mode("auto", "a1b2-ats.iot.us-east-1.amazonaws.com.") == "aws"
    assert jobs_mode("auto", "broker.local") == jobs_mode("auto", None) == "retained"
    assert jobs_mode("retained", "x.amazonaws.com") == "retained" and jobs_mode("aws", "mosquitto") == "aws"


# Shapes --------------------------------------------------------------------------------------------

PARSERS = [shapes.parse_execution, shapes.parse_reported, shapes.parse_desired, shapes.parse_status_update]
BIG = b"1" + b"0" * 400  # an int Python reads (under 4300 digits) and no float holds: math.isfinite raises
REPORT = b'{"schema": 1, "site": "s", "thing": "t", "reported_at": %s, "interval_s": %s, "events_last_hour": %s}'
HUGE: list[object] = [  # numbers an attacker on the broker sends, each where a reader takes a number
    b'{"state": {"reported": ' + REPORT % (BIG, b"60", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1e400", b"60", b"1") + b"}}",  # JSON's 1e400 is Python's inf
    b'{"state": {"reported": ' + REPORT % (b"-" + BIG, b"60", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"true", b"60", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1", BIG, b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1", b"1e400", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1", b"false", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1", b"-1e400", b"1") + b"}}",
    b'{"state": {"reported": ' + REPORT % (b"1e16", b"60", b"1") + b"}}",
    b'{"execution": {"jobId": "j", "jobDocument": {}, "queuedAt": ' + BIG + b"}}",
    b'{"execution": {"jobId": "j", "jobDocument": {}, "lastUpdatedAt": 1e400}}',
    b'{"execution": {"jobId": "j", "jobDocument": {}, "versionNumber": ' + BIG + b"}}",
    b'{"execution": {"jobId": "j", "jobDocument": {}, "queuedAt": true}}',
    b'{"state": {"models": {"people": "5"}}, "timestamp": ' + BIG + b"}",
    b'{"state": {"models": {"people": "5"}}, "version": ' + BIG + b"}",
    b'{"state": {"models": {"people": "5"}}, "timestamp": -1e400}',
    b'{"status": "FAILED", "statusDetails": {}, "expectedVersion": ' + BIG + b"}",
    b'{"status": "FAILED", "statusDetails": {}, "expectedVersion": 1e400}',
]
HOSTILE: list[object] = [
    b"not json",
    b"\xff\xfe\x00",
    b"[1, 2]",
    b'"text"',
    b"null",
    b"NaN",
    b'{"state": NaN}',
    b"1" * 5000,  # Python refuses an int this long
    b"[" * 100_000 + b"]" * 100_000,
    b"{" * 60_000,
    b'{"a":' * 20 + b"1" + b"}" * 20,  # deeper than any shape
    b" " * (MAX_PAYLOAD_BYTES + 1),
    json.dumps({"x": "y" * MAX_PAYLOAD_BYTES}).encode(),
    b'{"execution": 5, "state": 5, "status": 5}',
    b'{"execution": {"jobId": 7}, "state": {"reported": []}}',
    b'{"execution": {"jobId": "j", "jobDocument": []}, "state": {"reported": {"schema": "1"}}}',
    b'{"execution": {"jobId": "j/../x", "jobDocument": {}}}',
    b'{"execution": {"jobId": "j", "jobDocument": {}, "versionNumber": true}}',
    b'{"execution": {"jobId": "j", "jobDocument": {}, "queuedAt": "yesterday"}}',
    b'{"execution": {"jobId": "j", "jobDocument": {}, "status": "DONE"}}',
    b'{"state": {"reported": {"schema": 1, "site": "s", "thing": "t/x", "reported_at": 1, "interval_s": 1}}}',
    b'{"state": {"reported": {"schema": 1, "site": "s", "thing": "t", "reported_at": 1, "interval_s": 0}}}',
    b'{"state": {"models": {"people": 5}}}',
    b'{"state": {"models": []}, "signed": 3}',
    b'{"state": {"desired": []}}',
    b'{"status": "SUCCEEDED", "statusDetails": {"a": 1}}',
    b'{"status": "SUCCEEDED", "statusDetails": [], "expectedVersion": -1}',
    *HUGE,
    "text, not bytes",
    12,
    None,
    {"a": 1},
]


@pytest.mark.parametrize("parse", PARSERS, ids=lambda parse: parse.__name__)
@pytest.mark.parametrize("payload", HOSTILE, ids=range(len(HOSTILE)))
def test_parsers_given_hostile_payloads_return_none_or_raise_malformed(parse: Any, payload: object) -> None:
    try:
        result = parse(payload)
    except MalformedMessage as bad:
        assert bad.reason in ("not JSON", "not an object", "too large", "too deep", "wrong type")
    else:
        assert result is None


@pytest.mark.parametrize("parse", PARSERS, ids=lambda parse: parse.__name__)
def test_parsers_given_mutated_valid_payloads_raise_nothing_else(parse: Any) -> None:
    valid = [
        shapes.encode(shapes.notify_next(shapes.job_execution("j", "t", _doc(), queued_at=1))),
        shapes.encode(shapes.reported_update(_reported())),
        shapes.encode(shapes.desired_delta({"people": "5"}, _doc(), version=3)),
        shapes.encode(shapes.status_update("FAILED", {"reason": "x"}, expected_version=2)),
    ]
    chance = random.Random(28)
    for _ in range(300):
        payload = bytearray(chance.choice(valid))
        for _ in range(chance.randint(1, 4)):
            payload[chance.randrange(len(payload))] = chance.choice(b'{}[]":,0123456789tfn\\ x\xff')
        try:
            parse(bytes(payload))
        except MalformedMessage:
            pass


@pytest.mark.parametrize("payload", HUGE, ids=range(len(HUGE)))
def test_numbers_no_float_holds_are_malformed_never_an_arithmetic_error(payload: bytes) -> None:
    if payload.startswith(b'{"state": {"reported"'):
        parse: Any = shapes.parse_reported
    elif payload.startswith(b'{"execution"'):
        parse = shapes.parse_execution
    else:
        parse = shapes.parse_desired if b"models" in payload else shapes.parse_status_update
    with pytest.raises(MalformedMessage) as bad:
        parse(payload)
    assert bad.value.reason == "wrong type"


def test_numbers_are_bounded_and_text_made_printable() -> None:
    assert [shapes.number(value) for value in (7, -2.5, 1e15, 10**15, 10**15 + 1, 1e308, 10**400, True)] == [
        7.0, -2.5, 1e15, 1e15, None, None, None, None,
    ]  # fmt: skip
    hostile = "ok\x1b[2J\x1b]0;owned\x07\x9b31m\u202egnp.exe\u2066\u2028\u200b\ud800\x00end"
    assert printable(hostile) == "ok [2J ]0;owned  31m gnp.exe     end"
    assert all(char.isprintable() for char in printable(hostile) or "")
    assert printable("é 中文 ok") == "é 中文 ok" and printable("x" * 500, 10) == "x" * 10
    assert printable("") is None and printable(None) is None and printable(b"bytes") is None


def test_a_report_is_read_as_of_when_it_was_read_with_its_interval_at_most_a_day() -> None:
    from_the_future = shapes.encode(shapes.reported_update(_reported(reported_at=NOW + 1e9, interval_s=1e12)))
    reported = shapes.parse_reported(from_the_future, read_at=NOW)
    assert reported is not None
    assert (reported["reported_at"], reported["interval_s"], reported["clock_ahead_s"]) == (NOW, 86400.0, 1e9)
    row = roster({"site-a": reported}, NOW + 2 * 86400 + 1)[0]
    assert not row.online and row.problems == ("offline", "clock 11574 days ahead")  # not online for ever
    assert roster({"site-a": reported}, NOW + 60)[0].online
    said = shapes.encode(shapes.reported_update(_reported(clock_ahead_s=5e9)))
    assert "clock_ahead_s" not in (shapes.parse_reported(said, read_at=NOW + 1) or {})  # the reader's, never the site's
    in_time = shapes.parse_reported(shapes.encode(shapes.reported_update(_reported())), read_at=NOW + 1)
    assert in_time is not None and in_time["reported_at"] == NOW and "clock_ahead_s" not in in_time
    huge = roster({"site-a": _reported(interval_s=1e12, reported_at=NOW - 3 * 86400)}, NOW)[0]  # not parsed first
    assert not huge.online and huge.last_seen_s == 3 * 86400


def test_job_shapes_round_trip() -> None:
    doc = _doc()
    execution = shapes.job_execution("job-7", "site-a", doc, queued_at=100, version=3)
    for message in (
        shapes.notify_next(execution, timestamp=5),
        {"execution": execution, "timestamp": 5, "clientToken": "t"},
    ):
        parsed = shapes.parse_execution(shapes.encode(message))
        assert parsed == shapes.Execution("job-7", doc, "QUEUED", "site-a", 100.0, 100.0, 3, 1)
    assert shapes.parse_execution(b"") is None  # a retained document cleared
    assert shapes.parse_execution(shapes.encode(shapes.notify_next(None))) is None  # nothing queued
    assert set(shapes.start_next()) == {"clientToken"} and set(shapes.shadow_get("t")) == {"clientToken"}


def test_status_updates_are_what_aws_takes() -> None:
    details = {f"k{i}": "v" for i in range(12)} | {"reason": "bad\nline\x1b[31m" + "x" * 2000, "step": "", "w@t": "x"}
    message = shapes.status_update("REJECTED", details, expected_version=4, token="tok")
    assert message["status"] == "REJECTED" and message["expectedVersion"] == 4 and message["clientToken"] == "tok"
    kept = message["statusDetails"]
    assert len(kept) == 10 and next(iter(kept)) == "reason" and "step" not in kept and "w@t" not in kept
    assert len(kept["reason"]) == 1024 and kept["reason"].startswith("bad line ")
    parsed = shapes.parse_status_update(shapes.encode(message))
    assert parsed is not None and parsed.status == "REJECTED" and parsed.details == kept
    assert shapes.parse_status_update(b"") is None
    with pytest.raises(ValueError, match="status"):
        shapes.status_update("QUEUED", {})


def _reported(**changes: Any) -> dict[str, Any]:
    reported: dict[str, Any] = {
        "schema": 1, "site": "plant-7", "thing": "site-a", "edgesight": "0.9.0", "reported_at": NOW,
        "interval_s": 60.0, "console_url": None, "models": {"people": {"version": "2", "signer": "k", "loaded": "ok"}},
        "apps": {}, "cameras": {"dock": {"state": "streaming", "fps": 5.0}}, "services": {},
        "spool": {"depth": 0, "oldest_s": 0.0}, "events_last_hour": 3, "last_error": None,
        "job": {"current": None, "last": None, "last_status": None, "last_reason": None}, "desired": None,
    }  # fmt: skip
    return reported | changes


def test_reported_fits_a_shadow_keeping_trouble_and_counting_the_rest() -> None:
    cameras = {f"camera-{i:03}": {"state": "streaming", "fps": 10.0} for i in range(300)}
    cameras["camera-250"] = {"state": "stalled", "fps": 0.0}
    message = shapes.reported_update(_reported(cameras=cameras, last_error="e" * 1000))
    assert len(shapes.encode(message["state"]["reported"])) <= MAX_REPORTED_BYTES
    reported = shapes.parse_reported(shapes.encode(message))
    assert reported is not None and reported["cut"] == {"cameras": {"total": 300, "ok": 299}}
    assert "camera-250" in reported["cameras"] and len(reported["last_error"]) == 256
    row = roster({"site-a": reported}, NOW)[0]
    assert row.cameras == "299/300" and "camera camera-250 stalled" in row.problems
    assert shapes.parse_reported(b"") is None


def test_desired_state_in_each_shape() -> None:
    signed = _doc("set_desired", {"models": {"people": "5"}})
    retained = shapes.parse_desired(
        shapes.encode(shapes.desired_delta({"people": "5"}, signed, version=3, timestamp=9))
    )
    assert retained == shapes.Desired({"people": "5"}, signed, 3, 9.0)
    aws_delta = {"state": {"models": {"people": "5"}, "signed": signed}, "version": 4, "timestamp": 10, "metadata": {}}
    assert shapes.parse_desired(shapes.encode(aws_delta)) == shapes.Desired({"people": "5"}, signed, 4, 10.0)
    update = shapes.desired_update({"people": "5"}, signed)
    get_accepted = {"state": {"desired": update["state"]["desired"], "reported": {}, "delta": {}}, "version": 5}
    assert shapes.parse_desired(shapes.encode(get_accepted)) == shapes.Desired({"people": "5"}, signed, 5, None)
    assert shapes.parse_desired(b"") is None and shapes.parse_desired(b'{"state": {}}') is None


# Roster --------------------------------------------------------------------------------------------


def test_online_until_exactly_twice_the_interval() -> None:
    reported = {"site-a": _reported()}
    at_edge = roster(reported, NOW + 120.0)[0]
    assert at_edge.online and at_edge.problems == () and at_edge.last_seen_s == 120.0
    past = roster(reported, NOW + 120.001)[0]
    assert not past.online and past.problems == ("offline",)


def test_a_site_that_said_it_stopped_is_offline_at_once() -> None:
    row = roster({"site-a": _reported(state="stopped")}, NOW + 1)[0]
    assert not row.online and row.problems == ("stopped",)
    assert roster({"site-a": _reported(state="running")}, NOW + 1)[0].online


def test_problems_an_operator_acts_on() -> None:
    reported = _reported(
        cameras={"dock": {"state": "streaming", "fps": 5.0}, "yard": {"state": "stalled", "fps": 0.0}},
        services={"inference@0": {"state": "degraded", "uptime_s": 5.0}, "rules": {"state": "ready", "uptime_s": 9.0}},
        spool={"depth": 40, "oldest_s": 7200.0},
        last_error="uplink: connection refused",
        job={"current": None, "last": "job-9", "last_status": "FAILED", "last_reason": "unhealthy after install"},
        console_url="https://plant-7.example/",
    )
    row = roster({"site-a": reported}, NOW + 5)[0]
    assert row.problems == (
        "camera yard stalled",
        "service inference@0 degraded",
        "spool oldest 2.0 h",
        "uplink: connection refused",
        "job job-9 failed: unhealthy after install",
    )
    assert (row.site, row.version, row.models, row.cameras, row.events_per_hour) == (
        "plant-7",
        "0.9.0",
        "people 2",
        "1/2",
        3,
    )
    assert row.job == "job-9 FAILED" and row.console_url == "https://plant-7.example/"


def test_roster_survives_hostile_reports_and_lists_silent_sites() -> None:
    hostile: dict[str, Any] = {
        "x": {"reported_at": "now", "interval_s": None, "cameras": [1], "models": {"m": 5}, "services": {"s": 1},
              "spool": 3, "job": "j", "site": 7, "last_error": "\x1b[2Jboom", "events_last_hour": float("nan")},
        "y": {"reported_at": float("inf"), "interval_s": -1, "cut": {"cameras": {"ok": "many"}}},
    }  # fmt: skip
    rows = roster(hostile | {"z": "not a report"}, NOW, expected={"x": "site-x", "q": "site-q"})  # type: ignore[dict-item]
    assert [row.thing for row in rows] == ["q", "x", "y"]
    assert rows[0].problems == ("never reported",) and not rows[0].online
    x = rows[1]
    assert not x.online and x.problems == ("offline", " [2Jboom") and x.events_per_hour == 0 and x.cameras == "0/0"


@pytest.mark.parametrize(
    "numbers",
    [
        {"reported_at": 10**400},
        {"reported_at": -(10**400), "interval_s": 10**400},
        {"events_last_hour": 10**400, "spool": {"depth": 10**400, "oldest_s": 10**400}},
        {"events_last_hour": 1e308, "cut": {"cameras": {"ok": 10**400, "total": 10**400}}},
        {"reported_at": float("inf"), "interval_s": float("nan"), "events_last_hour": -float("inf")},
        {"reported_at": True, "interval_s": True, "events_last_hour": True, "cut": {"cameras": {"ok": 5, "total": 2}}},
        {"cameras": {"dock": {"state": "streaming", "fps": 10**400}}, "services": {"s": {"uptime_s": 1e400}}},
    ],
    ids=range(7),
)
def test_roster_reads_numbers_no_float_holds_as_absent(numbers: dict[str, Any]) -> None:
    row = roster({"site-a": _reported(**numbers)}, NOW)[0]  # no OverflowError, no ValueError
    assert 0 <= row.events_per_hour <= MAX_EVENTS_PER_HOUR and len(row.cameras) < 10
    assert row.last_seen_s is None or row.last_seen_s <= 2 * shapes.MAX_NUMBER


def test_roster_shows_bounded_counts_and_only_printable_text() -> None:
    row = roster({"site-a": _reported(events_last_hour=1e12)}, NOW)[0]
    assert row.events_per_hour == MAX_EVENTS_PER_HOUR == 10**9
    bidi = "\u202e" + "exe.txt"
    hostile = _reported(
        site="plant\x1b[31m7", edgesight=bidi, models={"peo\x9bple": {"version": "2\x07"}},
        services={"in\u2028ference": {"state": "dead\x1b]0;x\x07"}}, console_url="https://x\x1b[0m/",
        job={"current": None, "last": "job\x1b", "last_status": "FAILED\x1b", "last_reason": "r\x1b[2J"},
    )  # fmt: skip
    row = roster({"site-a": hostile}, NOW)[0]
    texts = [row.site, row.version, row.models, row.console_url or "", row.job or "", *row.problems]
    assert all(text.isprintable() for text in texts), texts
    assert row.site == "plant [31m7" and row.models == "peo ple 2 " and row.version == " exe.txt"

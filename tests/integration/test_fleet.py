"""Three sites in a fleet, as issue #28 asks: three ``edgesight run`` (each its own state, bus and ports), one
real Mosquitto, moto's S3, and the operator's ``edgesight fleet``. Site B's fleet service runs on its own so
that the test can take it offline during a deploy.

The tests share one fleet (starting three sites takes a minute) and run in this file's order: each leaves
the fleet as the next expects it (models v2 everywhere, then v3 on A and B).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import load_config
from common.fleet.shapes import job_execution, notify_next
from common.fleet.signing import sign_document
from common.fleet.topics import FleetTopics
from common.trust.keys import load_signing_key
from tests.conftest import child_env, free_port, write_site
from tests.integration.conftest import Mosquitto
from tests.support import deadline, hall_camera, http_get, scaled

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SITES = ("site-a", "site-b", "site-c")
REPORT_INTERVAL_S = 3.0
BUCKET = "fleet-models"
PASSWORD = "fleet-console-password"
AWS = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "eu-west-1"}


class Fleet:
    """The three sites, their broker and bucket, and the operator's files."""

    def __init__(self, root: Path, env: dict[str, str], shared: Path) -> None:
        self.root, self.env, self.shared = root, env, shared
        self.processes: dict[str, subprocess.Popen[str]] = {}
        self.sites: dict[str, Path] = {}

    def edgesight(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        command = [str(Path(sys.executable).parent / "edgesight"), *args]
        return subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=scaled(timeout))

    def fleet(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.edgesight("fleet", *args, timeout=timeout)  # fleet.yaml: EDGESIGHT_FLEET_FILE

    def package(self, version: str, key: str) -> Path:
        out = self.root / f"people-{version}.espkg"
        if not out.exists():
            made = self.edgesight(
                "models", "package", str(self.shared / "models" / "yolox_nano.onnx"), "--key",
                str(self.root / key / "signing.key"), "-o", str(out), "--name", "people", "--version", version,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
        return out

    def start(self, name: str, what: str, command: list[str]) -> None:
        log = self.root / f"{name}.{what}.log"
        self.processes[f"{name}.{what}"] = subprocess.Popen(
            command, env=self.env, stdout=log.open("a"), stderr=subprocess.STDOUT, text=True
        )

    def stop(self, key: str) -> None:
        process = self.processes.pop(key)
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def start_fleet_service(self, name: str) -> None:
        self.start(name, "fleet", [sys.executable, "-m", "services.fleet", "--config", str(self.sites[name])])

    def log(self, name: str, what: str = "run") -> str:
        return (self.root / f"{name}.{what}.log").read_text()

    def audit(self, name: str) -> list[dict[str, Any]]:
        path = load_config(self.sites[name]).site.state_dir / "audit.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()]

    def status(self) -> dict[str, dict[str, Any]]:
        answer = self.fleet("status", "--json", timeout=60)
        assert answer.returncode == 0, answer.stderr
        return {row["site"]: row for row in json.loads(answer.stdout)}

    def jobs(self) -> list[dict[str, Any]]:
        answer = self.fleet("jobs", "--json", timeout=60)
        assert answer.returncode == 0, answer.stderr
        rows: list[dict[str, Any]] = json.loads(answer.stdout)
        return rows

    def wait_models(self, wanted: dict[str, str], seconds: float = 120) -> dict[str, dict[str, Any]]:
        """Until each named site reports its model ``people`` at the version given, and loaded in inference."""
        end = deadline(seconds)
        rows: dict[str, dict[str, Any]] = {}
        while time.monotonic() < end:
            rows = self.status()
            if all(f"people {version}" in str(rows.get(site, {}).get("models")) for site, version in wanted.items()):
                return rows
            time.sleep(1)
        raise AssertionError(f"wanted {wanted}; fleet status: {json.dumps(rows, indent=1)[:3000]}")


def _site_file(fleet: Fleet, name: str, mqtt_port: int, moto: str, trusted: list[str]) -> Path:
    folder = fleet.root / name
    folder.mkdir()
    extra: dict[str, Any] = {
        "site": {"name": name},
        "models": {"people": {"path": "people.espkg", "classes": ["person"]}},
        "cameras": {"hall": hall_camera(fps=3)},
        "uplink": {"jsonl": {"path": "uplink.jsonl"}},
        "fleet": {
            "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "client_id": f"{name}-fleet"},
            "trusted_operators": [str(fleet.root / "operator" / "operator.pub")],
            "report_interval_s": REPORT_INTERVAL_S,
            "min_report_interval_s": 0.5,
            "healthy_s": 3,
            "s3_endpoint_url": moto,
            "s3_region": AWS["AWS_DEFAULT_REGION"],
        },
    }
    if name == "site-a":
        extra["console"] = {"host": "127.0.0.1", "port": free_port(), "admin_password": PASSWORD, "fleet": True}
        extra["fleet"]["console_url"] = f"http://127.0.0.1:{extra['console']['port']}"
    if name == "site-b":  # its fleet service runs on its own, to be stopped and started by the test
        extra["run"] = {"services": ["broker", "ingest", "inference", "rules", "uplink"]}
    site = write_site(folder, extra)
    data = yaml.safe_load(site.read_text())
    data["site"]["trusted_keys"] = [str(fleet.root / key / "signing.pub") for key in trusted]
    site.write_text(yaml.safe_dump(data, sort_keys=False))
    return site


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, shared_dir: Path) -> Iterator[Fleet]:
    from moto.server import ThreadedMotoServer

    root = tmp_path_factory.mktemp("fleet")
    world = Fleet(root, {**child_env(), **AWS, "EDGESIGHT_FLEET_FILE": str(root / "fleet.yaml")}, shared_dir)
    moto_port = free_port()
    moto_server = ThreadedMotoServer(ip_address="127.0.0.1", port=moto_port)
    moto_server.start()
    moto = f"http://127.0.0.1:{moto_port}"
    urllib.request.urlopen(urllib.request.Request(f"{moto}/moto-api/reset", method="POST"), timeout=10).close()
    broker = Mosquitto(root / "mosquitto").start()
    try:
        import boto3

        s3 = boto3.client("s3", endpoint_url=moto, **_boto_credentials())
        s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": AWS["AWS_DEFAULT_REGION"]})
        for key in ("models-1", "models-2"):  # model signers: every site trusts models-1, site C not models-2
            keygen = world.edgesight("models", "keygen", "--out", str(root / key))
            assert keygen.returncode == 0, keygen.stderr
        for operator in ("operator", "rogue"):
            keygen = world.fleet("keygen", "--out", str(root / operator))
            assert keygen.returncode == 0, keygen.stderr
        fleet_file = {
            "broker": {"host": "127.0.0.1", "port": broker.port},
            "operator_key": str(root / "operator" / "operator.key"),
            "bucket": {"name": BUCKET, "region": AWS["AWS_DEFAULT_REGION"], "endpoint_url": moto},
            "sites": {name: {} for name in SITES},
            "groups": {"all": list(SITES), "c_first": ["site-c", "site-a", "site-b"], "ab": ["site-a", "site-b"]},
        }
        (root / "fleet.yaml").write_text(yaml.safe_dump(fleet_file, sort_keys=False))
        v1 = world.package("1", "models-1")
        for name in SITES:
            trusted = ["models-1"] if name == "site-c" else ["models-1", "models-2"]
            world.sites[name] = _site_file(world, name, broker.port, moto, trusted)
            installed = world.edgesight("models", "install", str(v1), "--config", str(world.sites[name]))
            assert installed.returncode == 0, installed.stderr
            world.start(name, "run", [str(Path(sys.executable).parent / "edgesight"), "run", str(world.sites[name])])
        world.start_fleet_service("site-b")
        world.wait_models({name: "1" for name in SITES}, seconds=180)
        yield world
    finally:
        for key in list(world.processes):
            world.stop(key)
        broker.stop()
        moto_server.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": AWS["AWS_DEFAULT_REGION"],
    }


def serves(fleet: Fleet, name: str) -> set[str]:
    """The versions of ``people`` the site's inference says it serves (its /metrics)."""
    config = load_config(fleet.sites[name])
    metrics = http_get(f"http://127.0.0.1:{config.metrics.port('inference')}/metrics")[1]
    return {
        line.split('version="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("edgesight_model_info{") and 'model="people"' in line and line.endswith(" 1.0")
    }


def test_a_model_goes_to_every_site_canary_first_and_an_offline_site_gets_it_when_back(fleet: Fleet) -> None:
    v2 = fleet.package("2", "models-1")
    fleet.stop("site-b.fleet")  # site B is offline for the fleet while the model is deployed
    deployed = fleet.fleet("deploy", "model", str(v2), "--group", "all", "--canary", "1", "--timeout", "150")
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 3, output  # A (the canary) and C succeeded; B did not answer
    assert "site-a" in output and "SUCCEEDED" in output and "site-b" in output, output
    rows = fleet.wait_models({"site-a": "2", "site-c": "2"})
    assert "people 1" in str(rows["site-b"]["models"])  # offline: still what it had
    queued = [job for job in fleet.jobs() if job["site"] == "site-b" and job["operation"] == "install_model"]
    assert queued and queued[0]["status"] == "QUEUED", queued

    fleet.start_fleet_service("site-b")  # back: it finds the retained job and runs it
    assert _final_status(fleet, queued[0]["job_id"], seconds=180)["status"] == "SUCCEEDED"
    fleet.wait_models({name: "2" for name in SITES})
    for name in SITES:  # each inference answers with v2, and each job was audited on its site
        assert serves(fleet, name) == {"2"}, name
        actions = [record["action"] for record in fleet.audit(name)]
        assert "fleet.job_received" in actions and "fleet.job_succeeded" in actions, (name, actions)
        assert any(r["action"] == "model.install" and r["detail"].get("version") == "2" for r in fleet.audit(name))


def test_a_site_that_cannot_load_the_package_fails_and_keeps_its_model_and_a_failed_canary_stops_the_rest(
    fleet: Fleet,
) -> None:
    v3 = fleet.package("3", "models-2")  # signed by a key site C does not trust
    deployed = fleet.fleet("deploy", "model", str(v3), "--group", "all", "--canary", "1", "--timeout", "150")
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 1, output
    assert "FAILED" in output and "trusted" in output, output  # the site's reason reaches the operator
    rows = fleet.wait_models({"site-a": "3", "site-b": "3", "site-c": "2"})
    assert "people 2" in str(rows["site-c"]["models"])
    refused = [r for r in fleet.audit("site-c") if r["action"] == "model.install_refused"]
    assert refused and refused[-1]["detail"].get("version") == "3", refused
    failed = [r for r in fleet.audit("site-c") if r["action"] == "fleet.job_failed"]
    assert failed and "trusted" in failed[-1]["detail"]["reason"], failed

    v4 = fleet.package("4", "models-2")
    deployed = fleet.fleet("deploy", "model", str(v4), "--group", "c_first", "--canary", "1", "--timeout", "150")
    output = deployed.stdout + deployed.stderr
    assert deployed.returncode == 1, output  # the canary (site C) failed: nobody else gets v4
    time.sleep(REPORT_INTERVAL_S * 2)
    rows = fleet.wait_models({"site-a": "3", "site-b": "3", "site-c": "2"})
    v4_jobs = [job for job in fleet.jobs() if "-4-" in job["job_id"]]
    assert {job["site"] for job in v4_jobs} == {"site-c"}, v4_jobs
    for name in ("site-a", "site-b"):
        assert not any(r["detail"].get("version") == "4" for r in fleet.audit(name) if r["action"].startswith("model."))


def _line_crossings(fleet: Fleet, name: str, rule: str) -> int:
    path = load_config(fleet.sites[name]).site.state_dir / "uplink.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
    return sum(1 for e in events if e.get("event_type") == "line_cross" and e.get("rule") == rule)


def _rules_started(fleet: Fleet, name: str) -> float:
    config = load_config(fleet.sites[name])
    metrics = http_get(f"http://127.0.0.1:{config.metrics.port('rules')}/metrics")[1]
    line = next(line for line in metrics.splitlines() if line.startswith("process_start_time_seconds "))
    return float(line.split()[1])


def _publish_job(fleet: Fleet, thing: str, job_id: str, document: dict[str, Any]) -> None:
    """What an attacker on the broker (or a replay) does: a retained job document, no CLI."""
    broker = yaml.safe_load((fleet.root / "fleet.yaml").read_text())["broker"]
    topic = FleetTopics("$aws", thing).job_document(job_id)
    payload = json.dumps(notify_next(job_execution(job_id, thing, document, queued_at=int(time.time()))))
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(broker["port"]), "-t", topic, "-m", payload, "-r", "-q", "1"],
        check=True,
        timeout=30,
    )


def _final_status(fleet: Fleet, job_id: str, seconds: float = 60) -> dict[str, Any]:
    end = deadline(seconds)
    while time.monotonic() < end:
        for job in fleet.jobs():
            if job["job_id"] == job_id and not job["queued"]:
                return job
        time.sleep(1)
    raise AssertionError(f"no final status for {job_id}: {fleet.jobs()}")


def test_rules_deployed_to_two_sites_count_without_a_restart_and_what_may_not_run_is_refused(fleet: Fleet) -> None:
    rules = hall_camera()["rules"] | {"door": {"type": "line", "line": [[0.5, 0.0], [0.5, 1.0]], "classes": ["person"]}}
    (fleet.root / "rules.yaml").write_text(yaml.safe_dump({"hall": rules}))
    started = {name: _rules_started(fleet, name) for name in ("site-a", "site-b")}
    deployed = fleet.fleet("deploy", "rules", str(fleet.root / "rules.yaml"), "--group", "ab", "--timeout", "120")
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    end = deadline(120)
    while time.monotonic() < end:  # people crossing the new vertical line are counted on both sites
        if all(_line_crossings(fleet, name, "door") > 0 for name in ("site-a", "site-b")):
            break
        time.sleep(2)
    else:
        raise AssertionError({name: _line_crossings(fleet, name, "door") for name in SITES})
    assert _line_crossings(fleet, "site-c", "door") == 0  # not deployed there
    assert {name: _rules_started(fleet, name) for name in started} == started  # reloaded, never restarted

    # a command action, through the operator's own CLI: signed, but beyond what a fleet job may change
    evil = rules | {"door": rules["door"] | {"actions": [{"type": "command", "argv": ["/bin/sh", "-c", "id"]}]}}
    (fleet.root / "evil.yaml").write_text(yaml.safe_dump({"hall": evil}))
    refused = fleet.fleet("deploy", "rules", str(fleet.root / "evil.yaml"), "--to", "site-a", "--timeout", "90")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "command" in refused.stdout + refused.stderr
    assert "command" not in json.dumps(load_config(fleet.sites["site-a"]).cameras["hall"].rules["door"].model_dump())

    key = load_signing_key(fleet.root / "operator" / "operator.key")
    harmless = {"cameras": {"hall": rules}}
    signed = sign_document("update_rules", harmless, ["site-a"], key)
    _publish_job(fleet, "site-a", "by-hand-1", signed)  # a document signed by hand is run...
    assert _final_status(fleet, "by-hand-1")["status"] == "SUCCEEDED"
    _publish_job(fleet, "site-a", "by-hand-2", signed)  # ...once: the same document again is a replay
    unsigned = {k: v for k, v in sign_document("update_rules", harmless, ["site-a"], key).items() if k != "signature"}
    _publish_job(fleet, "site-a", "by-hand-3", unsigned)
    rogue = sign_document("update_rules", harmless, ["site-a"], load_signing_key(fleet.root / "rogue" / "operator.key"))
    _publish_job(fleet, "site-a", "by-hand-4", rogue)
    status = _final_status(fleet, "by-hand-2")  # a trusted operator's document: its refusal is retained
    assert status["status"] == "REJECTED" and "replayed" in str(status["reason"]), status
    expected = {"by-hand-2": "replayed", "by-hand-3": "unsigned", "by-hand-4": "unknown operator"}
    end = deadline(60)
    while True:  # junk (unsigned, an unknown key) is refused without a retained status: the audit says it
        refusals = {r["detail"].get("job_id"): r["detail"].get("reason", "") for r in fleet.audit("site-a")
                    if r["action"] == "fleet.job_refused"}  # fmt: skip
        if all(reason in refusals.get(job_id, "") for job_id, reason in expected.items()) or time.monotonic() > end:
            break
        time.sleep(1)
    for job_id, reason in expected.items():
        assert reason in refusals.get(job_id, ""), refusals
    saves = [r for r in fleet.audit("site-a") if r["action"] == "config.save_refused"]
    assert saves and saves[-1]["actor"].startswith("fleet:"), saves


def row_of(browser: Any, site: str) -> str:
    """The text of the Fleet page's row for ``site`` ("" while it has none)."""
    # read in one script: the page redraws its rows every few seconds (an element found, then read, goes stale)
    rows = browser.execute_script("return [...document.querySelectorAll('table tbody tr')].map(r => r.innerText)")
    return next((text for text in rows if text.strip().startswith(site)), "")


def test_status_and_the_console_fleet_page_list_every_site_and_a_stopped_one_goes_offline(
    fleet: Fleet, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    from tests.integration.browser import page_waiter

    rows = fleet.status()
    assert set(SITES) <= set(rows)
    assert all(rows[name]["online"] for name in SITES), rows
    assert "people 3" in rows["site-a"]["models"] and "people 2" in rows["site-c"]["models"], rows
    config = load_config(fleet.sites["site-a"])
    base = f"http://127.0.0.1:{config.console.port}"  # type: ignore[union-attr]
    wait = page_waiter(browser, tmp_path)
    browser.get(base + "/fleet")
    wait(lambda d: d.current_url.startswith(base + "/login"), 10, "the login page")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    wait(lambda d: all(name in d.find_element(By.TAG_NAME, "table").text for name in SITES), 30, "three sites")
    table = browser.find_element(By.TAG_NAME, "table").text
    assert "people 3" in table and "people 2" in table, table
    browser.save_screenshot(str(tmp_path / "fleet-three-sites.png"))

    fleet.stop("site-c.run")  # site C stops cleanly: its fleet service says so as it goes
    stopped = time.monotonic()
    rows = fleet.status()
    assert not rows["site-c"]["online"] and rows["site-c"]["problems"] == ["stopped"], rows["site-c"]
    assert time.monotonic() - stopped < scaled(5)
    wait(lambda d: "stopped" in row_of(d, "site-c"), 10, "site C stopped on the page")

    fleet.processes["site-b.fleet"].kill()  # site B's fleet service dies without a word: silence tells
    killed = time.monotonic()
    while True:
        rows = fleet.status()
        if not rows["site-b"]["online"]:
            break
        assert time.monotonic() - killed < 2 * REPORT_INTERVAL_S + scaled(4), rows["site-b"]  # status takes ~1 s
        time.sleep(0.5)
    assert "offline" in rows["site-b"]["problems"] and rows["site-a"]["online"]
    wait(lambda d: "offline" in row_of(d, "site-b"), 2 * REPORT_INTERVAL_S + 10, "site B offline on the page")
    browser.save_screenshot(str(tmp_path / "fleet-offline.png"))

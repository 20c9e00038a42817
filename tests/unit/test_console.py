"""The console's parts without a server: its event history, the site file editor, the login limiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config
from contracts import Event, Snapshot, TrackedObject
from services.console.auth import LoginLimiter
from services.console.history import NS_PER_DAY, EventHistory, EventQuery
from services.console.site_file import RulesRejected, SiteFile

NOW = 1_800_000_000 * 10**9


def event(
    number: int, *, camera: str = "lobby", rule: str = "door", kind: str = "line_cross", age_s: float = 0
) -> Event:
    return Event(
        id=f"evt-{number}",
        event_type=kind,
        site="test",
        camera=camera,
        rule=rule,
        ts_ns=NOW - int(age_s * 1e9),
        object=TrackedObject(track_id=number, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.4)),
        counts={"in": number},
        snapshot=Snapshot(width=4, height=4, data=b"\xff\xd8jpeg" + bytes(1000)),
    )


@pytest.fixture
def history(tmp_path: Path) -> EventHistory:
    return EventHistory(tmp_path / "console", retention_days=7, max_mb=64)


def test_history_newest_first_filtered_and_paged(history: EventHistory) -> None:
    history.add([event(i, camera="lobby" if i % 2 else "dock", age_s=100 - i) for i in range(10)])
    assert history.add([event(3, age_s=97)]) == 0  # a resent event is stored once

    everything, cursor = history.query(EventQuery(limit=50))
    assert [e["id"] for e in everything] == [f"evt-{i}" for i in range(9, -1, -1)]
    assert cursor is None
    assert everything[0]["snapshot_url"] == "/api/events/evt-9/snapshot.jpg"
    assert "data" not in everything[0]["snapshot"] and everything[0]["snapshot"]["bytes"] == 1006

    lobby, _ = history.query(EventQuery(camera="lobby"))
    assert [e["id"] for e in lobby] == ["evt-9", "evt-7", "evt-5", "evt-3", "evt-1"]
    window, _ = history.query(EventQuery(since_ns=NOW - int(95e9), until_ns=NOW - int(92e9)))
    assert [e["id"] for e in window] == ["evt-7", "evt-6", "evt-5"]

    first, cursor = history.query(EventQuery(limit=4))
    second, cursor2 = history.query(EventQuery(limit=4, before=cursor))
    third, cursor3 = history.query(EventQuery(limit=4, before=cursor2))
    assert [e["id"] for e in first + second + third] == [e["id"] for e in everything]
    assert cursor3 is None
    assert history.facets() == {"camera": ["dock", "lobby"], "rule": ["door"], "event_type": ["line_cross"]}


def test_retention_prunes_old_events_and_their_snapshots(history: EventHistory) -> None:
    history.add([event(1, age_s=8 * 86400), event(2, age_s=6 * 86400), event(3)])
    snapshots = history.snapshots
    assert sorted(p.name for p in snapshots.iterdir()) == ["evt-1.jpg", "evt-2.jpg", "evt-3.jpg"]

    assert history.prune(now_ns=NOW) == 1
    assert [e["id"] for e in history.query(EventQuery())[0]] == ["evt-3", "evt-2"]
    assert sorted(p.name for p in snapshots.iterdir()) == ["evt-2.jpg", "evt-3.jpg"]
    assert history.snapshot("evt-1") is None and history.get("evt-1") is None
    assert history.snapshot("evt-3") is not None

    assert history.prune(now_ns=NOW + 2 * NS_PER_DAY) == 1  # evt-2 is now past 7 days
    assert [p.name for p in snapshots.iterdir()] == ["evt-3.jpg"]


def test_size_limit_prunes_the_oldest_first(tmp_path: Path) -> None:
    history = EventHistory(tmp_path / "console", retention_days=365, max_mb=1)
    big = Snapshot(width=4, height=4, data=bytes(300_000))
    for number in range(6):  # 6 x 300 kB: past 1 MiB
        history.add([Event(**{**_fields(event(number, age_s=60 - number)), "snapshot": big})])
    removed = history.prune(now_ns=NOW)
    assert removed == 3
    assert [e["id"] for e in history.query(EventQuery())[0]] == ["evt-5", "evt-4", "evt-3"]
    assert sorted(p.name for p in history.snapshots.iterdir()) == ["evt-3.jpg", "evt-4.jpg", "evt-5.jpg"]


def _fields(e: Event) -> dict[str, object]:
    return {f: getattr(e, f) for f in e.__struct_fields__}


SITE = """\
# The site's own comment at the top
site:
  name: test   # a trailing comment
  state_dir: {state}
cameras:
  lobby:
    url: rtsp://${{CAMERA_USER:-admin}}:${{CAMERA_PASSWORD:-secret}}@10.0.0.5/stream
    rules:
      # the door everybody uses
      door:
        type: line
        line: [[0.1, 0.5], [0.9, 0.5]]   # left to right
        classes: [person]
      desk:
        type: zone
        polygon: [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4]]
      waiting:
        type: dwell
        zone: desk
        seconds: 30
        actions:
          - {{type: webhook, url: "${{HOOK_URL:-http://127.0.0.1:9/hook}}"}}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(SITE.format(state=tmp_path / "state"))
    return path


def test_rules_are_read_as_written(site: Path) -> None:
    rules = SiteFile(site).rules("lobby")
    assert list(rules) == ["door", "desk", "waiting"]
    assert rules["door"] == {"type": "line", "line": [[0.1, 0.5], [0.9, 0.5]], "classes": ["person"]}
    assert rules["waiting"]["actions"][0]["url"] == "${HOOK_URL:-http://127.0.0.1:9/hook}"  # not substituted
    with pytest.raises(KeyError):
        SiteFile(site).rules("nowhere")


def test_saving_changes_only_what_changed(site: Path) -> None:
    editor = SiteFile(site)
    rules = editor.rules("lobby")
    rules["door"]["line"] = [[0.1, 0.6], [0.9, 0.55]]
    rules["door"]["in_side"] = "left"
    rules["exit"] = {"type": "line", "line": [[0.5, 0.0], [0.5, 1.0]], "classes": ["person", "forklift"]}
    del rules["desk"]["polygon"][2]
    rules["desk"]["polygon"] += [[0.4, 0.4], [0.2, 0.4]]
    config = editor.replace_rules("lobby", rules)

    text = site.read_text()
    for kept in ("# The site's own comment at the top", "# a trailing comment", "# the door everybody uses"):
        assert kept in text
    assert "${CAMERA_PASSWORD:-secret}" in text and "${HOOK_URL:-http://127.0.0.1:9/hook}" in text
    assert "line: [[0.1, 0.6], [0.9, 0.55]]" in text
    assert (
        "exit:\n        type: line\n        line: [[0.5, 0.0], [0.5, 1.0]]\n        classes: [person, forklift]" in text
    )
    assert text.index("waiting:") < text.index("exit:")  # new rules go last; the others keep their order
    reloaded = load_config(site)
    assert reloaded.cameras["lobby"].rules == config.cameras["lobby"].rules
    assert reloaded.cameras["lobby"].rules["door"].in_side == "left"  # type: ignore[union-attr]

    untouched = site.read_text()
    editor.replace_rules("lobby", editor.rules("lobby"))
    assert site.read_text() == untouched  # a save without changes changes nothing


def test_a_rule_that_does_not_validate_changes_nothing(site: Path) -> None:
    before = site.read_bytes()
    editor = SiteFile(site)
    rules = editor.rules("lobby")
    rules["door"]["line"] = [[0.1, 0.5], [1.7, 0.5]]  # past the frame
    rules["bad name"] = {"type": "line", "line": [[0, 0], [1, 1]]}
    with pytest.raises(RulesRejected) as rejected:
        editor.replace_rules("lobby", rules)
    keys = {problem["key"] for problem in rejected.value.problems}
    assert "cameras.lobby.rules.door.line[1][0]" in keys
    assert any(key.startswith("cameras.lobby.rules.bad name") for key in keys)
    assert all(problem["line"] for problem in rejected.value.problems)
    assert site.read_bytes() == before

    rules = editor.rules("lobby")
    del rules["desk"]  # the dwell rule names it
    with pytest.raises(RulesRejected, match="zone 'desk'"):
        editor.replace_rules("lobby", rules)
    assert site.read_bytes() == before


def test_login_limiter_per_client_and_overall() -> None:
    limiter = LoginLimiter(per_client=3, overall=5, window_s=60)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1", now=100) == 0
        limiter.failed("10.0.0.1", now=100)
    assert limiter.retry_after("10.0.0.1", now=101) == pytest.approx(59)
    assert limiter.retry_after("10.0.0.2", now=101) == 0  # another address may still try...
    limiter.failed("10.0.0.2", now=101)
    limiter.failed("10.0.0.3", now=101)
    assert limiter.retry_after("10.0.0.4", now=102) > 0  # ...until the overall limit
    assert limiter.retry_after("10.0.0.1", now=161) == 0  # the window passes


def test_openapi_file_is_valid_and_documents_every_api_route() -> None:
    import types

    import yaml
    from openapi_spec_validator import validate

    from services.console.auth import Auth
    from services.console.web import OPENAPI, build_app

    spec = yaml.safe_load(OPENAPI.read_text())
    validate(spec)
    app = build_app(types.SimpleNamespace(auth=Auth("password", [], session_s=60)))  # type: ignore[arg-type]
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith("/api/") and route.method != "HEAD"
    }
    documented = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert served == documented

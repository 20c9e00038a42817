"""The console's parts without a server: its event history, the site file editor, the login limiter."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.config import load_config
from common.config.site_file import RulesRejected, SiteFile
from contracts import Event, Snapshot, TrackedObject
from services.console.auth import LoginLimiter
from services.console.history import NS_PER_DAY, EventHistory, EventQuery

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


def test_size_limit_drops_the_oldest_first_as_events_arrive(tmp_path: Path) -> None:
    history = EventHistory(tmp_path / "console", retention_days=365, max_mb=1)
    big = Snapshot(width=4, height=4, data=bytes(250_000))
    for number in range(6):  # 6 x 250 kB: past 1 MiB, with no prune in between
        history.add([Event(**{**_fields(event(number, age_s=60 - number)), "snapshot": big})])
    assert [e["id"] for e in history.query(EventQuery())[0]] == ["evt-5", "evt-4", "evt-3"]
    assert sorted(p.name for p in history.snapshots.iterdir()) == ["evt-3.jpg", "evt-4.jpg", "evt-5.jpg"]
    assert history.prune(now_ns=NOW) == 0  # nothing left for the minute's prune


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
    config = editor.replace_rules("lobby", rules).config

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


def test_login_limiter_slows_an_address_and_never_others() -> None:
    limiter = LoginLimiter(per_client=3, overall=5, window_s=600, first_wait_s=30, max_wait_s=300)
    for _ in range(3):
        assert limiter.retry_after("10.0.0.1", now=100) == 0
        limiter.failed("10.0.0.1", now=100)
    assert limiter.retry_after("10.0.0.1", now=101) == pytest.approx(29)
    limiter.failed("10.0.0.1", now=131)  # it waited, and failed again: the wait doubles
    assert limiter.retry_after("10.0.0.1", now=131) == pytest.approx(60)
    for _ in range(10):
        limiter.failed("10.0.0.1", now=200)
    assert limiter.retry_after("10.0.0.1", now=200) == pytest.approx(300)  # at most max_wait_s
    for address in ("10.0.0.2", "10.0.0.3", "10.0.0.5"):
        limiter.failed(address, now=201)
    assert limiter.flooded(now=202)  # more than `overall` a minute, site-wide...
    assert limiter.retry_after("10.0.0.4", now=202) == 0  # ...still never holds up another address
    assert not limiter.flooded(now=262)
    assert limiter.retry_after("10.0.0.1", now=801) == 0  # the window passes
    limiter.failed("10.0.0.6", now=900)
    limiter.succeeded("10.0.0.6")
    assert limiter.retry_after("10.0.0.6", now=900) == 0


def test_openapi_file_is_valid_and_documents_every_api_route() -> None:
    import types

    import yaml
    from openapi_spec_validator import validate

    from services.console.auth import Auth
    from services.console.pages_web import OPENAPI
    from services.console.web import build_app

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


def test_a_lines_counts_are_drawn_over_the_track_labels() -> None:
    """A line's count label sat under the tracks' labels drawn after it; it is drawn last now."""
    import types

    import cv2
    import numpy as np

    from common.config import CameraConfig
    from contracts import LineCounts, Scene
    from services.console.live import LINE_COLOUR, TRACK_COLOUR, Live
    from tests.support import frame_ref

    camera = CameraConfig.model_validate(
        {"url": "people.mp4", "rules": {"door": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}}}
    )
    ref = frame_ref("hall", width=640, height=360, stride=640 * 3, monotonic_ns=10**9)
    live = Live(types.SimpleNamespace(copy=lambda ref, order=None: np.zeros((360, 640, 3), np.uint8)))  # type: ignore[arg-type]
    live.on_message(ref)
    # a track whose label lands exactly where the line's label is (the line's start, the left edge)
    track = TrackedObject(track_id=1, label="person", score=0.9, box=(0.0, 0.5, 0.2, 0.9))
    counts = {"door": {"person": LineCounts(in_=3, out=1)}}
    live.on_message(Scene(camera="hall", model="m", frame=ref, tracks=[track], lines=counts))
    picture = live.picture("hall", camera, overlay=True)
    assert picture is not None
    image = cv2.imdecode(np.frombuffer(picture, np.uint8), cv2.IMREAD_COLOR)
    pixel = image[176, 1].astype(int)  # inside both label boxes, left of the text
    assert np.abs(pixel - LINE_COLOUR).max() < 40, pixel
    assert np.abs(pixel - TRACK_COLOUR).max() > 60, pixel

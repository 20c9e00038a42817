"""The Analytics API on the console's real web application (aiohttp's test server, the real login), over a
rules.sqlite filled by SeriesWriter as rules fills it: series, totals and CSV agree, labels add up, the
dwell histogram and the heatmap show what was written; and what an attacker sends is refused plainly
(no login, bad or huge parameters, path traversal, SQL in a name) without touching the file."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import sqlite3
import time
import types
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.analytics import SeriesWriter
from common.config import SiteConfig, load_config
from common.config.site_file import SiteFile
from services.console.analytics import Analytics
from services.console.apps import Apps
from services.console.auth import Auth
from services.console.context import ConsoleContext
from services.console.history import EventHistory
from services.console.live import Live
from services.console.mjpeg import Changes
from services.console.web import build_app
from tests.conftest import write_site
from tests.support import frame_ref

PASSWORD = "analytics-unit-password"
TOKEN = "analytics-unit-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
HOUR_S = (int(time.time()) // 3600 - 5) * 3600  # five whole hours ago: within minute_days, so 15 minutes work
WALKED = (0.15, 0.85)  # where the test's people walk (x, y as fractions): the heatmap's hot corner
T = TypeVar("T")


def at(hour: int, minute: int = 0) -> int:
    return (HOUR_S + hour * 3600 + minute * 60) * 10**9


def hall_site(tmp_path: Path) -> SiteConfig:
    rules = {
        "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]},
        "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]},
        "queue": {"type": "dwell", "zone": "centre", "seconds": 2},
        "crowded": {"type": "crowd", "zone": "centre", "min_count": 3},
        "vests": {"type": "ppe", "required": ["vest"]},
    }
    cameras = {"hall": {"url": "people.mp4", "rules": rules}, "dock": {"url": "rtsp://10.9.9.10/stream"}}
    console = {"admin_password": PASSWORD, "api_tokens": [TOKEN]}
    return load_config(write_site(tmp_path, {"cameras": cameras, "console": console}))  # type: ignore[no-any-return]


def fill(config: SiteConfig) -> None:
    """What rules would have written over five hours: crossings of two labels, a zone's occupancy, dwells,
    a crowd, and people's anchor points all in one corner."""
    state = Path(config.site.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(state / "rules.sqlite")
    writer = SeriesWriter(db, config.analytics)
    crossings = [(0, 5, "person", "in")] * 3 + [(0, 10, "person", "out"), (0, 20, "car", "in"), (0, 21, "car", "in")]
    crossings += [(2, 50, "person", "in")] * 5
    with db:
        for hour, minute, label, direction in crossings:
            writer.crossing("hall", "middle", label, direction, at(hour, minute))
    for count in (2, 4):
        writer.occupancy("hall", "centre", "person", count, at(1))
    writer.occupancy("hall", "centre", "car", 1, at(1))
    for seconds, label in ((3, "person"), (4, "person"), (40, "person"), (700, "car")):
        writer.dwell("hall", "queue", label, seconds, at(1, 30))
    for count in (3, 7):
        writer.crowd("hall", "crowded", count, at(1, 40))
    rng = np.random.default_rng(7)
    for x, y in rng.uniform(-0.05, 0.05, (300, 2)) + WALKED:
        writer.heat("hall", "person", float(x), float(y), at(0, 30))
    writer.flush(time.time_ns())
    db.close()


def console_context(config: SiteConfig, tmp_path: Path, frame: np.ndarray | None = None) -> ConsoleContext:
    readers = types.SimpleNamespace(copy=lambda ref, order=None: frame)
    live = Live(readers)  # type: ignore[arg-type]
    if frame is not None:
        height, width = frame.shape[:2]
        live.on_message(frame_ref("hall", width=width, height=height, stride=width * 3, monotonic_ns=10**9))

    async def nothing(*args: Any, **kwargs: Any) -> None:
        return None

    return ConsoleContext(
        config=config,
        auth=Auth(PASSWORD, [TOKEN], session_s=3600),
        site_file=SiteFile(Path(config.source)),
        live=live,
        history=EventHistory(tmp_path / "history", retention_days=1, max_mb=8),
        apps=Apps(),
        analytics=Analytics(Path(config.site.state_dir) / "rules.sqlite"),
        changes=Changes(),
        audit=nothing,
        rules_saved=nothing,
    )


def serve(context: ConsoleContext, scenario: Callable[[TestClient[Any, Any]], Awaitable[T]]) -> T:
    async def run() -> T:
        async with TestClient(TestServer(build_app(context))) as client:
            return await scenario(client)

    return asyncio.run(run())


async def get_json(client: TestClient[Any, Any], path: str, **params: str) -> tuple[int, Any]:
    async with client.get(path, params=params, headers=BEARER) as response:
        return response.status, await response.json()


@pytest.fixture
def filled(tmp_path: Path) -> ConsoleContext:
    config = hall_site(tmp_path)
    fill(config)
    return console_context(config, tmp_path)


def window(hours: int = 5) -> dict[str, str]:
    return {"from": str(HOUR_S), "to": str(HOUR_S + hours * 3600)}


def test_a_lines_series_totals_and_csv_agree(filled: ConsoleContext) -> None:
    async def scenario(client: TestClient[Any, Any]) -> tuple[Any, Any, Any, str, dict[str, str]]:
        query = {"camera": "hall", "rule": "middle", "metric": "in,out", "bucket": "3600", **window()}
        _, person = await get_json(client, "/api/series", label="person", **query)
        _, everyone = await get_json(client, "/api/series", **query)
        _, quarters = await get_json(client, "/api/series", **{**query, "bucket": "900", "label": "person"})
        async with client.get("/api/series.csv", params={**query, "label": "person"}, headers=BEARER) as response:
            assert response.status == 200
            return person, everyone, quarters, await response.text(), dict(response.headers)

    person, everyone, quarters, text, headers = serve(filled, scenario)
    assert person["kind"] == "line" and person["labels"] == ["person"] and person["bucket_s"] == 3600
    assert [p["in"] for p in person["points"]] == [3, 0, 5, 0, 0]
    assert [p["out"] for p in person["points"]] == [1, 0, 0, 0, 0]
    assert person["totals"] == {"in": 8, "out": 1}
    assert person["from"].startswith(time.strftime("%Y-%m-%dT%H:00:00", time.gmtime(HOUR_S)))
    # no label: every label added up
    assert everyone["label"] is None and everyone["labels"] == ["car", "person"]
    assert [p["in"] for p in everyone["points"]] == [5, 0, 5, 0, 0] and everyone["totals"]["in"] == 10
    # 15-minute buckets: the five at 02:50 are in the fourth quarter of hour 2
    assert len(quarters["points"]) == 20 and quarters["points"][11]["in"] == 5 and quarters["totals"]["in"] == 8
    # the CSV is the JSON, row by row
    assert headers["Content-Type"].startswith("text/csv")
    assert headers["Content-Disposition"].startswith('attachment; filename="hall-middle-person-')
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0] == ["start", "in", "out"]
    assert rows[1:] == [[p["start"], str(p["in"]), str(p["out"])] for p in person["points"]]


def test_zone_dwell_and_crowd_series(filled: ConsoleContext) -> None:
    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, Any]]:
        return [
            await get_json(client, "/api/series", camera="hall", rule="centre", label="person", **window(3)),
            await get_json(client, "/api/series", camera="hall", rule="centre", **window(3)),
            await get_json(client, "/api/dwell", camera="hall", rule="queue", **window(3)),
            await get_json(client, "/api/dwell", camera="hall", rule="queue", label="person", **window(3)),
            await get_json(client, "/api/series", camera="hall", rule="crowded", **window(3)),
            await get_json(client, "/api/series", camera="hall", rule="queue", metric="dwell_count", **window(3)),
        ]

    (s1, zone), (s2, unlabelled), (s3, dwell), (s4, person_dwell), (s5, crowd), (s6, departures) = serve(
        filled, scenario
    )
    assert (s1, s3, s4, s5, s6) == (200,) * 5
    assert [p["occupancy_mean"] for p in zone["points"]] == [None, 3.0, None]  # unknown, not zero, where no rows
    assert [p["occupancy_max"] for p in zone["points"]] == [None, 4, None]
    assert zone["totals"] == {"occupancy_mean": 3.0, "occupancy_max": 4}
    # a zone's mean and peak do not add up across labels: which label, the answer says
    assert s2 == 400 and "label: required for occupancy_mean, occupancy_max" in unlabelled["error"]
    assert dwell["count"] == 4 and dwell["labels"] == ["car", "person"]
    assert [b["count"] for b in dwell["bins"]] == [0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 1, 0]
    assert dwell["bins"][-1]["upper_s"] is None and dwell["bins"][2]["upper_s"] == 5
    assert person_dwell["count"] == 3 and 2 < person_dwell["p50_s"] <= 5 and 30 < person_dwell["p90_s"] <= 60
    assert crowd["labels"] == ["all"] and [p["crowd_max"] for p in crowd["points"]] == [None, 7, None]
    assert departures["totals"] == {"dwell_count": 4}


def test_catalog_lists_the_site_files_rules_that_keep_series(filled: ConsoleContext) -> None:
    status, catalog = serve(filled, lambda client: get_json(client, "/api/analytics/catalog"))
    assert status == 200 and catalog["available"] is True
    hall, dock = catalog["cameras"]
    assert dock == {"name": "dock", "rules": [], "labels": []}
    rules = {rule["name"]: rule for rule in hall["rules"]}
    assert list(rules) == ["middle", "centre", "queue", "crowded"]  # ppe keeps no series
    assert rules["middle"] == {
        "name": "middle",
        "kind": "line",
        "labels": ["car", "person"],
        "in_site_file": True,
        "metrics": ["in", "out"],
    }
    assert rules["crowded"]["labels"] == ["all"] and hall["labels"] == ["car", "person"]
    assert catalog["recording"] is True
    assert catalog["buckets"] == [900, 3600, 86400] and catalog["max_points"] == 5000


def test_a_rule_removed_from_the_site_file_keeps_its_history(tmp_path: Path) -> None:
    config = hall_site(tmp_path)
    fill(config)
    db = sqlite3.connect(Path(config.site.state_dir) / "rules.sqlite")
    with db:
        SeriesWriter(db, config.analytics).crossing("hall", "old_door", "person", "in", at(1))
    db.close()

    async def scenario(client: TestClient[Any, Any]) -> tuple[Any, Any]:
        _, catalog = await get_json(client, "/api/analytics/catalog")
        _, series = await get_json(client, "/api/series", camera="hall", rule="old_door", **window())
        return catalog, series

    catalog, series = serve(console_context(config, tmp_path), scenario)
    removed = [rule for rule in catalog["cameras"][0]["rules"] if rule["name"] == "old_door"]
    assert removed == [
        {"name": "old_door", "kind": "line", "labels": ["person"], "in_site_file": False, "metrics": ["in", "out"]}
    ]
    assert series["totals"] == {"in": 1, "out": 0}


def test_before_rules_kept_anything_the_answers_are_empty_not_errors(tmp_path: Path) -> None:
    config = hall_site(tmp_path)  # no rules.sqlite

    async def scenario(client: TestClient[Any, Any]) -> list[Any]:
        answers = [
            await get_json(client, "/api/analytics/catalog"),
            await get_json(client, "/api/series", camera="hall", rule="middle", **window()),
        ]
        async with client.get("/api/cameras/hall/heatmap.png", headers=BEARER) as response:
            answers.append((response.status, response.headers["X-Heatmap-Peak"]))
        return answers

    (_, catalog), (status, series), heat = serve(console_context(config, tmp_path), scenario)
    assert catalog["available"] is False and catalog["cameras"][0]["rules"][0]["labels"] == []
    assert status == 200 and series["totals"] == {"in": 0, "out": 0} and len(series["points"]) == 5
    assert heat == (200, "0")
    assert not (Path(config.site.state_dir) / "rules.sqlite").exists()  # read-only: nothing made


def _heatmap(context: ConsoleContext, **params: str) -> tuple[np.ndarray, int]:
    """The heatmap as BGR pixels (ints), and its X-Heatmap-Peak."""

    async def scenario(client: TestClient[Any, Any]) -> tuple[bytes, int]:
        async with client.get("/api/cameras/hall/heatmap.png", params=params, headers=BEARER) as response:
            assert response.status == 200 and response.content_type == "image/png"
            return await response.read(), int(response.headers["X-Heatmap-Peak"])

    png, peak = serve(context, scenario)
    picture = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None
    return picture.astype(int), peak


def test_the_heatmap_is_hot_where_people_walked(tmp_path: Path) -> None:
    config = hall_site(tmp_path)
    fill(config)
    frame = np.full((360, 640, 3), 128, np.uint8)  # a grey frame: any colour on it is the heatmap's
    over_frame, peak = _heatmap(console_context(config, tmp_path, frame), **window())
    assert over_frame.shape == (360, 640, 3) and peak > 10
    walked = over_frame[int(360 * WALKED[1]), int(640 * WALKED[0])]
    empty = over_frame[int(360 * 0.2), int(640 * 0.8)]
    assert np.abs(empty - 128).max() <= 2, empty  # where nobody went, the frame as it was
    assert np.abs(walked - 128).max() > 60, walked  # where they walked, strongly coloured
    # without a frame: a dark background, strongly coloured where they walked
    dark, _ = _heatmap(console_context(config, tmp_path), **window())
    assert dark.shape == (720, 1280, 3)
    walked, empty = dark[int(720 * WALKED[1]), int(1280 * WALKED[0])], dark[int(720 * 0.2), int(1280 * 0.8)]
    assert walked.max() - walked.min() > 100 and empty.max() - empty.min() < 15, (walked, empty)
    # nobody walked there as a car, nor in the hours before: the background alone
    cars, peak = _heatmap(console_context(config, tmp_path), label="car", **window())
    assert peak == 0 and np.abs(cars - cars[0, 0]).max() <= 2
    before, peak = _heatmap(console_context(config, tmp_path), **{"from": str(HOUR_S - 86400), "to": str(HOUR_S)})
    assert peak == 0 and np.abs(before - cars[0, 0]).max() <= 2


def test_the_heatmaps_frame_is_masked_as_the_live_view(tmp_path: Path) -> None:
    config = hall_site(tmp_path)
    hall = config.cameras["hall"].model_dump()
    hall["privacy_masks"] = [{"polygon": [[0.5, 0.0], [1.0, 0.0], [1.0, 0.4], [0.5, 0.4]]}]
    config.cameras["hall"] = type(config.cameras["hall"]).model_validate(hall)
    fill(config)  # cars crossed, none left heat: the frame
    frame = np.full((360, 640, 3), 200, np.uint8)
    picture, _ = _heatmap(console_context(config, tmp_path, frame), label="car", **window())
    assert picture[60, 600].max() < 40, picture[60, 600]  # inside the mask: blacked out
    assert np.abs(picture[300, 100] - 200).max() <= 3  # outside: as it was


# -- what an attacker sends -------------------------------------------------------------------------------

ROUTES = [
    "/api/analytics/catalog",
    "/api/series?camera=hall&rule=middle",
    "/api/series.csv?camera=hall&rule=middle",
    "/api/dwell?camera=hall&rule=queue",
    "/api/cameras/hall/heatmap.png",
]


def test_nothing_without_a_login(filled: ConsoleContext) -> None:
    async def scenario(client: TestClient[Any, Any]) -> list[tuple[str, int, int, int, int]]:
        answers = []
        for path in ROUTES:
            statuses = []
            for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Cookie": "edgesight_session=x"}):
                async with client.get(path, headers=headers, allow_redirects=False) as response:
                    statuses.append(response.status)
                    assert "person" not in await response.text()
            async with client.get(path, headers=BEARER) as response:
                statuses.append(response.status)
            answers.append((path, *statuses))
        async with client.get("/analytics", allow_redirects=False) as response:
            answers.append(("/analytics", response.status, 0, 0, 0))
            assert response.headers["Location"] == "/login?next=/analytics"
        return answers

    for path, *statuses in serve(filled, scenario):
        if path == "/analytics":
            assert statuses[0] == 302
        else:
            assert statuses == [401, 401, 401, 200], path


def test_a_login_session_sees_the_page_and_the_api(filled: ConsoleContext) -> None:
    async def scenario(client: TestClient[Any, Any]) -> tuple[int, str, int]:
        async with client.post("/api/login", json={"password": PASSWORD}) as response:
            assert response.status == 200
        async with client.get("/analytics") as page:
            text = await page.text()
            csp = page.headers["Content-Security-Policy"]
            assert "script-src 'self'" in csp
        async with client.get("/api/series", params={"camera": "hall", "rule": "middle", **window()}) as series:
            return page.status, text, series.status

    status, text, series = serve(filled, scenario)
    assert status == 200 and '<script type="module" src="/static/analytics.js">' in text and series == 200


BAD = [
    # (query, status, words the answer's error holds)
    ({"rule": "middle"}, 400, "camera: required"),
    ({"camera": "hall"}, 400, "rule: required"),
    ({"camera": "../../etc/passwd", "rule": "middle"}, 400, "camera: not a name"),
    ({"camera": "hall", "rule": "middle' OR '1'='1"}, 400, "rule: not a name"),
    ({"camera": "hall", "rule": "middle", "label": "person; DROP TABLE series_keys; --"}, 400, "label: not a label"),
    ({"camera": "hall", "rule": "middle", "label": "x" * 65}, 400, "label: not a label"),
    ({"camera": "nosuch", "rule": "middle"}, 404, "no camera 'nosuch'"),
    ({"camera": "hall", "rule": "nosuch"}, 404, "has no rule 'nosuch'"),
    ({"camera": "hall", "rule": "vests"}, 404, "has no rule 'vests' that keeps series"),
    ({"camera": "hall", "rule": "middle", "metric": "crowd_max"}, 400, "a line rule keeps in, out"),
    ({"camera": "hall", "rule": "middle", "metric": "in,value) FROM counts --"}, 400, "metric: one of"),
    ({"camera": "hall", "rule": "middle", "bucket": "60"}, 400, "bucket: one of 900, 3600, 86400"),
    ({"camera": "hall", "rule": "middle", "bucket": "1e3"}, 400, "bucket: one of"),
    ({"camera": "hall", "rule": "middle", "from": "yesterday"}, 400, "from: not an ISO 8601 time"),
    ({"camera": "hall", "rule": "middle", "from": "9" * 400}, 400, "from: not an ISO 8601 time"),
    ({"camera": "hall", "rule": "middle", "to": "99999999999"}, 400, "to: not an ISO 8601 time"),
    ({"camera": "hall", "rule": "middle", "from": "-5"}, 400, "from: not an ISO 8601 time"),
    ({"camera": "hall", "rule": "middle", "from": "2026-01-02", "to": "2026-01-01"}, 400, "from: must be before to"),
    ({"camera": "hall", "rule": "middle", "from": "2020-01-01", "to": "2026-01-01"}, 400, "at most 400 days apart"),
    (
        {"camera": "hall", "rule": "middle", "from": "2025-01-01", "to": "2026-01-01", "bucket": "3600"},
        400,
        "8760 buckets; at most 5000",
    ),
    (
        {"camera": "hall", "rule": "middle", "from": "2020-01-01", "to": "2020-01-02", "bucket": "900"},
        400,
        "kept 7 days",
    ),
]


@pytest.mark.parametrize(("query", "status", "words"), BAD)
def test_bad_questions_are_refused_plainly(
    filled: ConsoleContext, query: dict[str, str], status: int, words: str
) -> None:
    database = Path(filled.config.site.state_dir) / "rules.sqlite"
    before = hashlib.sha256(database.read_bytes()).hexdigest()

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, str, str]]:
        answers = []
        for path in ("/api/series", "/api/series.csv"):
            async with client.get(path, params=query, headers=BEARER) as response:
                answers.append((response.status, response.content_type, await response.text()))
        return answers

    for answer_status, content_type, text in serve(filled, scenario):
        assert answer_status == status and content_type == "application/json", text
        error = json.loads(text)["error"]
        assert words in error, error
        assert "Traceback" not in text and "sqlite" not in text.lower()
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before


def test_bad_dwell_and_heatmap_questions(filled: ConsoleContext) -> None:
    cases = [
        ("/api/dwell?camera=hall&rule=middle", 400, "middle is a line rule"),
        ("/api/dwell?camera=hall&rule=queue&from=2020-01-01&to=2026-01-01", 400, "at most 400 days"),
        ("/api/cameras/nosuch/heatmap.png", 404, "no camera 'nosuch'"),
        ("/api/cameras/..%2F..%2Fetc/heatmap.png", 400, "camera: not a name"),
        ("/api/cameras/%2E%2E/heatmap.png", 404, "Not Found"),  # normalised to /api/heatmap.png: no route
        ("/api/cameras/hall/heatmap.png?label=a%27%20OR%201%3D1", 400, "label: not a label"),
        ("/api/cameras/hall/heatmap.png?from=2020-01-01&to=2026-01-01", 400, "at most 400 days"),
        ("/api/cameras/hall/heatmap.png?to=1%27", 400, "to: not an ISO 8601 time"),
    ]

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[str, int, str]]:
        answers = []
        for path, _, _ in cases:
            async with client.get(path, headers=BEARER) as response:
                answers.append((path, response.status, await response.text()))
        return answers

    for (path, status, words), (_, answer_status, text) in zip(cases, serve(filled, scenario), strict=True):
        assert answer_status == status, (path, text)
        assert words in (json.loads(text)["error"] if text.startswith("{") else text), (path, text)


def test_under_k3s_the_console_reads_rules_folder_read_only() -> None:
    """The console's pod mounts rules' state folder from the node read-only, where the k3s site files'
    console.analytics_db points (compose shares one state volume: the default, state_dir/rules.sqlite)."""
    import yaml

    repo = Path(__file__).resolve().parents[2]

    def pod(name: str) -> dict[str, Any]:
        deployment = next(yaml.safe_load_all((repo / "k3s" / "base" / f"{name}.yaml").read_text()))
        return deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]

    rules, console = pod("rules"), pod("console")
    (rules_state,) = (v["hostPath"]["path"] for v in rules["volumes"] if v["name"] == "state")
    (mount,) = (m for m in console["containers"][0]["volumeMounts"] if m["name"] == "rules-state")
    (volume,) = (v for v in console["volumes"] if v["name"] == "rules-state")
    assert volume["hostPath"]["path"] == rules_state and mount["readOnly"] is True
    for site_file in (repo / "k3s" / "base" / "site.yaml", repo / "k3s" / "overlays" / "jetson" / "site.yaml"):
        console_section = yaml.safe_load(site_file.read_text())["console"]
        assert console_section["analytics_db"] == f"{mount['mountPath']}/rules.sqlite", site_file
    compose = yaml.safe_load((repo / "compose" / "docker-compose.yml").read_text())["services"]
    assert (
        "state:/var/lib/edgesight" in compose["console"]["volumes"]
        and "state:/var/lib/edgesight" in compose["rules"]["volumes"]
    )
    assert "analytics_db" not in (yaml.safe_load((repo / "compose" / "site.yaml").read_text())["console"] or {})


def test_times_are_read_as_iso_or_epoch_seconds_and_widened_to_whole_buckets(filled: ConsoleContext) -> None:
    async def scenario(client: TestClient[Any, Any]) -> list[Any]:
        answers = []
        for start, end in (("0", "7200"), ("1970-01-01T00:20:00", "1970-01-01T01:10:00+00:00")):
            _, answer = await get_json(
                client, "/api/series", camera="hall", rule="middle", **{"from": start, "to": end}
            )
            answers.append((answer["from"], answer["to"], [p["start"] for p in answer["points"]]))
        return answers

    first, second = serve(filled, scenario)
    assert (
        first
        == second
        == (
            "1970-01-01T00:00:00+00:00",
            "1970-01-01T02:00:00+00:00",
            ["1970-01-01T00:00:00+00:00", "1970-01-01T01:00:00+00:00"],
        )
    )


def test_the_catalog_says_when_series_are_not_recorded(tmp_path: Path) -> None:
    config = hall_site(tmp_path)
    fill(config)
    config.analytics = type(config.analytics).model_validate({"enabled": False})
    status, catalog = serve(
        console_context(config, tmp_path), lambda client: get_json(client, "/api/analytics/catalog")
    )
    assert status == 200 and catalog["recording"] is False and catalog["available"] is True


def test_a_label_listed_in_the_rules_classes_but_not_yet_counted_is_zeros(tmp_path: Path) -> None:
    config = hall_site(tmp_path)
    hall = config.cameras["hall"].model_dump()
    hall["rules"]["middle"]["classes"] = ["person", "car", "bicycle"]
    config.cameras["hall"] = type(config.cameras["hall"]).model_validate(hall)
    fill(config)

    async def scenario(client: TestClient[Any, Any]) -> list[tuple[int, Any]]:
        return [
            await get_json(client, "/api/analytics/catalog"),
            await get_json(client, "/api/series", camera="hall", rule="middle", label="bicycle", **window()),
            await get_json(client, "/api/series", camera="hall", rule="middle", label="dog", **window()),
        ]

    (_, catalog), (status, bicycle), (unknown, error) = serve(console_context(config, tmp_path), scenario)
    middle = next(rule for rule in catalog["cameras"][0]["rules"] if rule["name"] == "middle")
    assert middle["labels"] == ["bicycle", "car", "person"]
    assert status == 200 and bicycle["totals"] == {"in": 0, "out": 0}
    assert unknown == 404 and "no label 'dog'" in error["error"] and "bicycle, car, person" in error["error"]


UNKNOWN_LABELS = [
    # (path, status, words the answer's error holds)
    ("/api/series?camera=hall&rule=middle&label=persn", 404, "rule 'middle' of camera 'hall' has no label 'persn'"),
    ("/api/series?camera=hall&rule=middle&label=persn", 404, "known: car, person"),
    ("/api/series.csv?camera=hall&rule=middle&label=persn", 404, "has no label 'persn'"),
    ("/api/dwell?camera=hall&rule=queue&label=bus", 404, "has no label 'bus'; known: car, person"),
    ("/api/series?camera=hall&rule=crowded&label=person", 400, "its only label is 'all'"),
    ("/api/series?camera=hall&rule=crowded&label=all", 200, ""),
    ("/api/cameras/hall/heatmap.png?label=dog", 404, "camera 'hall' has no heatmap of 'dog'; known: car, person"),
    ("/api/cameras/hall/heatmap.png?label=car", 200, ""),
]


@pytest.mark.parametrize(("path", "status", "words"), UNKNOWN_LABELS)
def test_an_unknown_label_is_not_found_and_names_the_known_ones(
    filled: ConsoleContext, path: str, status: int, words: str
) -> None:
    async def scenario(client: TestClient[Any, Any]) -> tuple[int, str]:
        async with client.get(path, headers=BEARER) as response:
            return response.status, await response.text() if response.content_type != "image/png" else ""

    answer_status, text = serve(filled, scenario)
    assert answer_status == status, text
    if words:
        assert words in json.loads(text)["error"], text


def test_a_label_with_a_space_is_asked_for_and_named_in_the_csv_file(tmp_path: Path) -> None:
    """COCO's "traffic light": a label may hold a space (contracts), so the API takes one; the CSV's file
    name carries it as "_" (nothing to quote in a header)."""
    config = hall_site(tmp_path)
    hall = config.cameras["hall"].model_dump()
    hall["rules"]["middle"]["classes"] = ["person", "traffic light"]
    config.cameras["hall"] = type(config.cameras["hall"]).model_validate(hall)
    fill(config)
    db = sqlite3.connect(Path(config.site.state_dir) / "rules.sqlite")
    writer = SeriesWriter(db, config.analytics)
    with db:
        writer.crossing("hall", "middle", "traffic light", "in", at(1))
    writer.flush(time.time_ns())
    db.close()

    async def scenario(client: TestClient[Any, Any]) -> tuple[Any, str, int]:
        query = {"camera": "hall", "rule": "middle", "label": "traffic light", **window()}
        _, answer = await get_json(client, "/api/series", **query)
        async with client.get("/api/series.csv", params=query, headers=BEARER) as response:
            disposition = response.headers["Content-Disposition"]
        async with client.get("/api/series", params={**query, "label": "person\n"}, headers=BEARER) as response:
            newline = response.status
        return answer, disposition, newline

    answer, disposition, newline = serve(console_context(config, tmp_path), scenario)
    assert answer["totals"] == {"in": 1, "out": 0}
    assert 'filename="hall-middle-traffic_light-' in disposition
    assert newline == 400  # "$" would have let the trailing newline through (into a header)

"""The Panorama SDK as apps meet it, through the real apps service and its sandbox: a v0 app (``panoramasdk.base``
and ``panoramasdk.model``) counting people, the first ``video_in.get()`` holding every camera, cached and stale
media, ``call()`` casting and reshaping feeds as Neo's runtime did (and saying what an input takes when it
cannot), an app's own package in its own environment, and an empty string parameter."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.apps.environments import environment_dir
from services.apps.requirements import requirements_file
from tests.integration.conftest import Services
from tests.integration.test_app_environments import edgesight_env, tiny_project
from tests.integration.test_apps import BusWatch, app_site, feed, write_app
from tests.media import frame_at
from tests.support import deadline
from tests.unit.test_panorama_v0 import V0_PEOPLE_APP

pytestmark = pytest.mark.slow

# Records what every video_in.get() returned: how many media, their cameras, is_cached and is_stale.
GETS_APP = """
import json
import panoramasdk

node = panoramasdk.node()
out = open("/opt/aws/panorama/storage/gets.jsonl", "a")
while True:
    streams = node.inputs.video_in.get()
    record = {"count": len(streams), "ids": [s.stream_id for s in streams],
              "cached": [bool(s.is_cached) for s in streams], "stale": [bool(s.is_stale) for s in streams]}
    out.write(json.dumps(record) + "\\n")
    out.flush()
    node.outputs.video_out.put(streams)
"""

# call() with feeds Neo's runtime took: rank 3 float64, uint8 with the batch dimension, in both call orders;
# then one of the wrong element count, whose ModelError must say what the input takes; then a call again.
CALL_APP = """
import json
import time

import numpy as np
import panoramasdk

node = panoramasdk.node()
picture = (np.arange(3 * 416 * 416) % 251).astype(np.uint8).reshape(1, 3, 416, 416)
result = {}
rank3 = node.call({"whatever": picture[0].astype(np.float64)}, "model_node")  # [3, 416, 416] float64
batched = node.call("model_node", {"images": picture})  # [1, 3, 416, 416] uint8
result["rank3_float64"] = [[list(o.shape), o.dtype.name] for o in rank3]
result["uint8"] = [[list(o.shape), o.dtype.name] for o in batched]
result["same_outputs"] = float(np.abs(rank3[0] - batched[0]).max())
try:
    node.call({"images": np.zeros((1, 3, 400, 400), np.float32)}, "model_node")
    result["wrong"] = None
except Exception as exc:
    result["wrong"] = {"type": type(exc).__name__, "model_error": isinstance(exc, panoramasdk.ModelError),
                       "runtime_error": isinstance(exc, RuntimeError), "message": str(exc)}
after = node.call({"images": picture.astype(np.float32)}, "model_node")  # the channel serves on
result["after"] = [list(o.shape) for o in after]
with open("/opt/aws/panorama/storage/calls.json", "w") as out:
    json.dump(result, out)
while True:
    time.sleep(1)
"""

# Its own package, from its own environment, and numpy; where each comes from.
OWN_PACKAGE_APP = """
import json
import sys
import time
from importlib import metadata

import numpy
import panoramasdk
import tiny_pkg

panoramasdk.node()
found = {"version": metadata.version("tiny-pkg"), "greeting": tiny_pkg.GREETING, "package": tiny_pkg.__file__,
         "numpy": numpy.__file__, "numpy_version": numpy.__version__, "executable": sys.executable}
with open("/opt/aws/panorama/storage/found.json", "w") as out:
    json.dump(found, out)
while True:
    time.sleep(1)
"""

PARAMETER_APP = """
import json
import time
import panoramasdk

node = panoramasdk.node()
values = {port: getattr(node.inputs, port).get() for port in ("empty", "title", "threshold")}
with open("/opt/aws/panorama/storage/parameters.json", "w") as out:
    json.dump({port: [value, type(value).__name__] for port, value in values.items()}, out)
while True:
    time.sleep(1)
"""


def storage(site: Services, app: str, name: str) -> Path:
    return Path(site.config.site.state_dir) / "apps" / app / "storage" / name


def json_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines of a JSON-lines file the app is writing (none while it does not exist)."""
    try:
        text = path.read_text()
    except OSError:
        return []
    return [json.loads(line) for line in text.splitlines(keepends=True) if line.endswith("\n")]


def wait_json(site: Services, path: Path, seconds: float = 30) -> Any:
    end = deadline(seconds)
    while True:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            assert time.monotonic() < end, f"{path.name} was not written: {site.log('apps')[-3000:]}"
            time.sleep(0.1)


def test_a_v0_app_runs_in_its_sandbox(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    apps = {
        "v0people": {
            "code": str(write_app(tmp_path / "v0_code", V0_PEOPLE_APP)),
            "cameras": ["hall", "door"],
            "models": {"people_model": {"path": "yolox_nano.onnx"}},
            "parameters": {  # batch_size is not given: interface()'s default (1)
                "threshold": {"type": "float32", "value": 0.3},
                "person_model": {"type": "string", "value": "people_model"},  # a v0 "model" parameter
            },
        }
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    records_file = storage(site, "v0people", "v0.jsonl")
    with BusWatch(site) as watch:
        site.start("apps")

        def ready() -> bool:
            cameras = {record["camera"] for record in json_lines(records_file)}
            pictures = {camera for app, camera in watch.video if app == "v0people"}
            status = watch.status.get("v0people")
            return cameras == pictures == {"hall", "door"} and status is not None and status.frames >= 2

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 60, ready))
        assert ready(), (json_lines(records_file)[-4:], sorted(watch.video), site.log("apps")[-3000:])
        records = json_lines(records_file)
        for record in records:
            assert record["output_shape"] == [1, 3549, 85] and record["outputs"] == 1, record
            assert record["threshold"] == 0.30000001192092896  # the site file's float32, not interface()'s 0.5
        hall = [record for record in records if record["camera"] == "hall"]
        assert min(record["people"] for record in hall) >= 10, hall  # frame 60 shows about 20 people
        assert hall[0]["stream_uri"] == "rtsp://viewer:***@192.0.2.1/hall?token=***"
        assert hall[0]["entry"] == 1 and hall[0]["frame"] == 1 and not hall[0]["cached"]
        assert [record["camera"] for record in records[:2]] == ["hall", "door"]  # entry() loops in graph order
        picture = watch.picture("v0people", "hall")
        assert picture is not None and picture.shape == (480, 854, 3)
        green = (picture[:, :, 1] > 150) & (picture[:, :, 0] < 80) & (picture[:, :, 2] < 80)
        assert green.sum() > 500, "its add_rect boxes are drawn on the output"
        status = watch.state("v0people")
        assert status.state == "running" and status.restarts == 0 and status.frames >= 2, status
    log = site.log("apps")
    assert "Loading model: people_model" in log
    assert "Initialization complete: threshold=0.30000001192092896 cameras=2" in log  # a float32, typed
    assert "Exception" not in log and "returned False" not in log, log[-3000:]


def test_the_first_get_holds_every_camera(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    # hall sends first, alone; door is first in the graph: the gets follow the graph, not the arrivals
    graph = ["door", "hall"]
    apps = {"gets": {"code": str(write_app(tmp_path / "gets_code", GETS_APP)), "cameras": graph}}
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    gets = storage(site, "gets", "gets.jsonl")
    frame = frame_at(shared_dir / "media" / "people.mp4", 60)
    with BusWatch(site) as watch:
        site.start("apps")

        # 1. only hall: the app is inside get() (running) and stays there
        asyncio.run(
            feed(site, frame, ["hall"], 30, lambda: getattr(watch.status.get("gets"), "state", "") == "running")
        )
        assert watch.state("gets").state == "running", site.log("apps")[-3000:]
        asyncio.run(feed(site, frame, ["hall"], 3, lambda: bool(json_lines(gets))))
        assert json_lines(gets) == [], "get() returned before every camera had a frame"
        time.sleep(2.5)  # a status or two more: still nothing handed over
        assert watch.state("gets").frames == 0 and watch.state("gets").restarts == 0, watch.state("gets")

        # 2. both cameras
        asyncio.run(feed(site, frame, ["hall", "door"], 30, lambda: len(json_lines(gets)) >= 15))
        both = json_lines(gets)
        assert len(both) >= 15, site.log("apps")[-3000:]
        assert both[0] == {"count": 2, "ids": graph, "cached": [False, False], "stale": [False, False]}
        for record in both:
            assert record["count"] == 2 and record["ids"] == graph, record  # every get: every camera
            assert not all(record["cached"]), record  # a get returns on something new
            assert not any(record["stale"]), record

        # 3. door stops: its last frame comes again, cached, and stale after ~3 s; hall's are new
        started = time.monotonic()

        def door_stale_a_while() -> bool:
            later = json_lines(gets)[len(both) :]
            return sum(1 for record in later if record["stale"][0]) >= 5

        asyncio.run(feed(site, frame, ["hall"], 30, door_stale_a_while))
        seconds = time.monotonic() - started
        later = json_lines(gets)[len(both) :]
        assert door_stale_a_while(), (later[-5:], site.log("apps")[-3000:])
        assert seconds >= 2.5, f"door was stale after {seconds:.1f} s"  # silent for STALE_AFTER_S (3 s) first
        # door's last frames may still come in the first gets (a get returns on hall's frame of a round before
        # door's of the same round arrives); from its first cached frame on, door is cached and hall is new
        settled = next(index for index, record in enumerate(later) if record["cached"][0])
        assert settled <= 3, later[:5]
        for record in later[settled:]:
            assert record["ids"] == graph and record["cached"] == [True, False], record
            assert record["stale"][1] is False, record  # hall sends on
        stale = [record["stale"][0] for record in later]
        assert stale[0] is False and stale == sorted(stale), stale  # fresh at first, then stale for good
        assert watch.state("gets").restarts == 0


def test_call_reshapes_and_casts_as_neo_did(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    apps = {
        "caller": {
            "code": str(write_app(tmp_path / "caller_code", CALL_APP)),
            "cameras": ["hall"],
            "models": {"model_node": {"path": "yolox_nano.onnx"}},
        }
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    site.start("apps")
    calls = wait_json(site, storage(site, "caller", "calls.json"))
    assert calls["rank3_float64"] == [[[1, 3549, 85], "float32"]]  # reshaped to [1, 3, 416, 416], cast
    assert calls["uint8"] == [[[1, 3549, 85], "float32"]]  # cast
    assert calls["same_outputs"] < 1e-4  # the same picture, however it was fed
    wrong = calls["wrong"]
    assert wrong is not None, "a feed of the wrong element count ran"
    assert wrong["type"] == "ModelError" and wrong["model_error"] and wrong["runtime_error"], wrong
    assert "'images' takes [1x3x416x416] float32" in wrong["message"], wrong  # what the input takes
    assert "[1, 3, 400, 400]" in wrong["message"], wrong  # and what it was given
    assert calls["after"] == [[1, 3549, 85]]  # the channel serves on after the error
    assert "Traceback" not in site.log("apps")


def test_an_app_with_its_own_package_runs_in_its_own_environment(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str], services: Callable[[dict[str, Any]], Services]
) -> None:
    version = "2.7.1"  # not the template's 0.1: the version found is the one built here
    tiny = tiny_project(tmp_path / "tiny")
    for name in ("backend.py", "pyproject.toml"):
        path = tiny / name
        path.write_text(path.read_text().replace("0.1", version))
    code = write_app(tmp_path / "counter_code", OWN_PACKAGE_APP)
    (code / "requirements.txt").write_text(f"# the app's own\ntiny-pkg @ {tiny.as_uri()}\n")
    (code / "requirements.txt").chmod(0o644)
    problems: list[str] = []
    requirements = requirements_file(code / "requirements.txt", problems)  # as `panorama import` reads it
    assert problems == [] and requirements == [f"tiny-pkg @ {tiny.as_uri()}"]
    apps = {"counter": {"code": str(code), "cameras": ["hall"], "requirements": requirements}}
    site = services(app_site(tmp_path, shared_dir, apps))

    built = edgesight_env(site.site, python_env)  # `edgesight panorama env --config SITE counter`, offline
    assert built.returncode == 0, built.stdout + built.stderr
    env = environment_dir(Path(site.config.site.state_dir), "counter")
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")
        found = wait_json(site, storage(site, "counter", "found.json"), 60)
        assert watch.state("counter").restarts == 0
    assert found["version"] == version and found["greeting"] == "hello from the app's own package", found
    assert found["executable"] == str(env / "bin" / "python"), found  # its environment's interpreter
    assert Path(found["package"]).is_relative_to(env), found  # its package, installed there
    assert Path(found["numpy"]).is_relative_to(sys.prefix), found  # EdgeSight's numpy, shared
    assert not Path(found["numpy"]).is_relative_to(env), found

    def config_check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "common.cli.main", "config", "check", str(site.site)],
            capture_output=True,
            text=True,
            env=python_env,
            check=False,
            timeout=120,
        )

    first = config_check()
    assert first.returncode == 0, first.stdout + first.stderr  # built for these requirements: nothing to say
    changed = yaml.safe_load(site.site.read_text())
    changed["apps"]["counter"]["requirements"].append("shapely")
    site.site.write_text(yaml.safe_dump(changed, sort_keys=False))
    check = config_check()
    assert check.returncode == 2, check.stdout + check.stderr
    assert "app 'counter''s environment" in check.stderr and "is stale" in check.stderr, check.stderr
    assert f"edgesight panorama env --config {site.site} counter" in check.stderr, check.stderr


def test_an_empty_string_parameter_reaches_the_app(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    parameters = {
        "empty": {"type": "string", "value": ""},
        "title": {"type": "string", "value": "people"},
        "threshold": {"type": "float32", "value": 0.5},
    }
    apps = {
        "params": {
            "code": str(write_app(tmp_path / "params_code", PARAMETER_APP)),
            "cameras": ["hall"],
            "parameters": parameters,
        }
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    site.start("apps")
    received = wait_json(site, storage(site, "params", "parameters.json"))
    assert received == {"empty": ["", "str"], "title": ["people", "str"], "threshold": [0.5, "float"]}

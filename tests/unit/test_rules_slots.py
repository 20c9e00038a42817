"""Model slots: sixteen made-up model names on one camera once filled its tracker slots
for good, and the site's own model was dropped from then on. The models the site names (``models:``, the
camera's ``models:``, any rule's ``model:``) always get a tracker; other names share the slots, and one
silent past ``tracker.max_age_s`` is evicted by the sweep (its tracks ended, the rules' state of them
gone), so a new name gets its slot; a reserved model is never evicted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from common.config import load_config
from contracts import Detections, Event
from services.rules import silence
from services.rules.service import MAX_MODELS_PER_CAMERA, RulesService
from services.rules.slots import MAX_ZEROED_MODELS
from tests.conftest import write_site
from tests.support import frame_ref

LINE: dict[str, Any] = {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}
BAY = {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 1}
MODELS = {"people": {"path": "people.onnx"}}
JUNK = [f"junk-{n}" for n in range(MAX_MODELS_PER_CAMERA)]
MAX_AGE_S = 0.3


def _service(
    tmp_path: Path, rules: dict[str, Any], camera: dict[str, Any] | None = None, **sections: Any
) -> RulesService:
    cameras = {"cam": {"url": "rtsp://h/1", "rules": rules, **(camera or {})}}
    sections.setdefault("tracker", {"max_age_s": MAX_AGE_S})
    return RulesService(load_config(write_site(tmp_path, {"cameras": cameras, **sections})))


def _detections(model: str, seq: int, y: float = 0.3, x: float = 0.4) -> Detections:
    at_ns = seq * 100_000_000
    ref = frame_ref("cam", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=640, height=480)
    boxes = np.array([[x, y - 0.15, x + 0.1, y]], "<f4")
    return Detections.from_arrays(ref, model, boxes, [0], [0.9], labels={0: "person"})


async def _walk(service: RulesService, model: str, first_seq: int = 1) -> None:
    """One person walks down across y=0.5 into the bay, seen by ``model``."""
    for step in range(12):
        await service.handle(_detections(model, first_seq + step, 0.3 + 0.05 * step))


def _dropped() -> float:
    return (
        REGISTRY.get_sample_value("edgesight_rules_detections_dropped_total", {"camera": "cam", "reason": "models"})
        or 0.0
    )


def _events(service: RulesService) -> list[Event]:
    return [event for _, event in service.outbox.after(0, limit=1000)]


def _close(service: RulesService) -> None:
    service.outbox.close()
    service.store.close()


@pytest.mark.parametrize(
    ("rules", "camera", "sections", "model"),
    [
        ({"door": LINE}, None, {"models": MODELS}, "people"),  # the site's models:
        ({"door": LINE}, {"models": ["people"]}, {"models": MODELS}, "people"),  # the camera's models:
        ({"door": {**LINE, "model": "their-detector"}}, None, {}, "their-detector"),  # a rule's model:
    ],
    ids=["site-models", "camera-models", "rule-model"],
)
def test_made_up_names_cannot_shut_out_a_model_the_site_names(
    tmp_path: Path, rules: dict[str, Any], camera: dict[str, Any] | None, sections: dict[str, Any], model: str
) -> None:
    service = _service(tmp_path, rules, camera, **sections)
    before = _dropped()

    async def scenario() -> None:
        for name in JUNK:  # standing still, above the line: nothing of theirs is counted
            await service.handle(_detections(name, 1, y=0.2, x=0.8))
        await service.handle(_detections("one-too-many", 1, y=0.2, x=0.8))
        await _walk(service, model)

    try:
        asyncio.run(scenario())
        crossings = [event for event in _events(service) if event.event_type == "line_cross"]
        assert _dropped() == before + 1  # only the seventeenth made-up name; before #31, every frame of the model
        assert model in service.cameras["cam"].trackers
        assert [(event.rule, event.counts) for event in crossings] == [("door", {"in": 1, "out": 0})]
        assert crossings[0].object is not None and crossings[0].object.track_id == MAX_MODELS_PER_CAMERA + 1
    finally:
        _close(service)


def test_the_sweep_evicts_a_silent_made_up_model_and_never_a_reserved_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(silence, "SWEEP_S", 0.05)
    service = _service(tmp_path, {"door": LINE, "bay": BAY}, models=MODELS)
    camera = service.cameras["cam"]

    async def scenario() -> None:
        for name in JUNK:
            await service.handle(_detections(name, 1, y=0.2, x=0.8))
        await _walk(service, "people")
        people = camera.trackers["people"]
        assert await _dropped_now(service, "late") == 1  # every shared slot taken
        sweep = asyncio.create_task(service.silent.run())
        try:
            await asyncio.sleep(MAX_AGE_S + 0.4)  # everybody silent past max_age_s, and swept
        finally:
            sweep.cancel()
        assert set(camera.trackers) == {"people"}  # the made-up ones gave their slots up
        assert camera.trackers["people"] is people  # never evicted: the same tracker, its tracks kept
        assert people.tracks
        assert await _dropped_now(service, "late") == 0  # a new name gets a slot now

    try:
        asyncio.run(scenario())
    finally:
        _close(service)
    for name in JUNK:
        assert _tracks(name) == 0
    assert _tracks("people") == 0  # silent: the gauge drops (decision 5) though the tracker stays


async def _dropped_now(service: RulesService, model: str) -> float:
    """How many Detections of ``model`` (one sent now) were dropped: 1 or 0."""
    before = _dropped()
    await service.handle(_detections(model, 1, y=0.2, x=0.8))
    return _dropped() - before


def _tracks(model: str) -> float | None:
    return REGISTRY.get_sample_value("edgesight_tracks_active", {"camera": "cam", "model": model})


def test_an_evicted_models_tracks_end_and_the_rules_forget_them(tmp_path: Path) -> None:
    """Its tracks would otherwise stay in the rules' state for ever (names made up one after another:
    without bound); they end as the tracker would have ended them, a zone exit included."""
    service = _service(tmp_path, {"bay": BAY})
    camera = service.cameras["cam"]

    async def scenario() -> None:
        await _walk(service, "junk")  # into the bay, and stays there
        assert camera.rules.zones["bay"].inside()
        await service._model_silent("cam", "junk")  # what the sweep does for it

    try:
        asyncio.run(scenario())
        events = _events(service)
    finally:
        _close(service)
    assert [(e.event_type, e.lifecycle) for e in events] == [("zone_enter", "new"), ("zone_exit", "end")]
    assert events[1].frame is not None and events[1].frame.seq == 12  # dated by its last frame
    assert camera.rules.zones["bay"].tracks == {}
    assert camera.last_seen == {} and camera.items == {} and camera.last == {}
    assert "junk" not in camera.rules.models


def test_names_made_up_one_after_another_leave_a_bounded_trace(tmp_path: Path) -> None:
    """Each round of made-up names is evicted in turn: trackers, kept Detections and tracks gauges stay bounded."""
    service = _service(tmp_path, {"door": LINE}, models=MODELS)
    camera = service.cameras["cam"]
    rounds = 5

    async def scenario() -> None:
        await service.handle(_detections("people", 1, y=0.2))
        for round_ in range(rounds):
            names = [f"r{round_}-{n}" for n in range(MAX_MODELS_PER_CAMERA)]
            for name in names:
                await service.handle(_detections(name, 1, y=0.2, x=0.8))
            for name in names:
                await service._model_silent("cam", name)

    try:
        before = _dropped()
        asyncio.run(scenario())
    finally:
        _close(service)
    assert _dropped() == before  # every round found its slots free
    assert set(camera.trackers) == {"people"} and set(camera.last) == {"people"}
    gauges = [
        sample.labels["model"]
        for metric in REGISTRY.collect()
        if metric.name == "edgesight_tracks_active"
        for sample in metric.samples
        if sample.labels["camera"] == "cam" and sample.labels["model"].startswith("r")
    ]
    assert len(gauges) == MAX_ZEROED_MODELS  # the latest evicted still read 0; older ones' series are gone
    assert set(gauges) == {f"r{rounds - 1}-{n}" for n in range(MAX_MODELS_PER_CAMERA)}


def test_a_reload_that_names_a_model_reserves_it(tmp_path: Path) -> None:
    service = _service(tmp_path, {"door": LINE})
    site = Path(service.config.source)
    assert "theirs" not in service.cameras["cam"].reserved
    content = yaml.safe_load(site.read_text())
    content["cameras"]["cam"]["rules"]["door"]["model"] = "theirs"
    site.write_text(yaml.safe_dump(content))
    try:
        assert asyncio.run(_reload(service)) is None
        assert "theirs" in service.cameras["cam"].reserved
    finally:
        _close(service)


async def _reload(service: RulesService) -> str | None:
    service.audit = _no_audit  # type: ignore[method-assign]
    return await service.reload()


async def _no_audit(*args: Any, **fields: Any) -> None:
    return None

"""Rules and models (issue #31): a rule with ``model:`` sees only that model's objects, so two detectors of
the same people count each of them once; a rule without it warns (once) and is counted when it sees one
label from two models; a detector the site does not run is counted by a rule naming it; an ``external``
rule loads, has no state and refuses actions; ``config check`` warns; the refused events leave the outbox."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import REGISTRY

from common.cli import main as cli
from common.config import load_config, parse_config
from common.errors import ConfigError
from contracts import Detections, Event, Refusal
from services.rules.counts import CountStore
from services.rules.engine import MAX_OVERLAP_LABELS, CameraRules
from services.rules.moment import Moment, Observed
from services.rules.reports import reported_rules
from services.rules.service import RulesService
from tests.conftest import write_site
from tests.support import frame_ref

LINE: dict[str, Any] = {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}
BAY = {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 1}


def _service(tmp_path: Path, rules: dict[str, Any], **sections: Any) -> RulesService:
    site = write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}, **sections})
    return RulesService(load_config(site))


def _walk(service: RulesService, models: tuple[str, ...], people: int = 1, frames: int = 12) -> list[Event]:
    """``people`` walk down across y=0.5 into the bay; every model in ``models`` detects each of them at
    each frame (boxes a little apart, as two detectors' are); returns the events decided."""

    async def frames_() -> None:
        for seq in range(1, frames + 1):
            y = 0.25 + 0.05 * seq
            at_ns = seq * 100_000_000
            ref = frame_ref("cam", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=640, height=480)
            for index, model in enumerate(models):
                shift = 0.004 * index
                boxes = [[0.1 + 0.3 * p + shift, y - 0.15, 0.2 + 0.3 * p + shift, y + shift] for p in range(people)]
                detections = Detections.from_arrays(
                    ref,
                    model,
                    np.array(boxes, "<f4"),
                    class_ids=[0] * people,
                    scores=[0.9] * people,
                    labels={0: "person"},
                )
                await service.handle(detections)

    try:
        asyncio.run(frames_())
        return [event for _, event in service.outbox.after(0, limit=1000)]
    finally:
        service.outbox.close()
        service.store.close()


def _crossings(events: list[Event], rule: str) -> int:
    return sum(1 for event in events if event.event_type == "line_cross" and event.rule == rule)


def _overlaps(camera: str, rule: str) -> float:
    value = REGISTRY.get_sample_value("edgesight_rules_models_overlap_total", {"camera": camera, "rule": rule})
    return value or 0.0


def test_a_rule_with_a_model_counts_each_person_once_whatever_else_detects_them(tmp_path: Path) -> None:
    service = _service(tmp_path, {"door": {**LINE, "model": "people"}, "both": LINE})
    events = _walk(service, ("people", "people-2"))
    assert _crossings(events, "door") == 1  # before #31: 2, a crossing per model
    assert _crossings(events, "both") == 2  # the documented choice: once per model, and warned
    door = next(event for event in events if event.rule == "door" and event.event_type == "line_cross")
    assert door.counts == {"in": 1, "out": 0}


def test_a_rule_without_model_seeing_two_models_warns_once_and_is_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = _overlaps("cam", "twice")
    quiet_before = _overlaps("cam", "one")
    with caplog.at_level(logging.WARNING, logger="services.rules.engine"):
        _walk(_service(tmp_path, {"twice": LINE, "one": {**LINE, "model": "people"}}), ("people", "people-2"))
    warned = [r for r in caplog.records if "set `model:` on the rule" in r.getMessage()]
    assert [(r.camera, r.rule, r.label, r.models) for r in warned] == [("cam", "twice", "person", "people,people-2")]
    assert _overlaps("cam", "twice") == before + 1
    assert _overlaps("cam", "one") == quiet_before  # a rule with model: sees one model: nothing to say


def test_one_model_never_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.rules.engine"):
        events = _walk(_service(tmp_path, {"solo": LINE}), ("people",), people=2)
    assert _crossings(events, "solo") == 2
    assert not [r for r in caplog.records if "model" in r.getMessage()]


def test_an_external_detector_is_counted_by_a_rule_naming_it(tmp_path: Path) -> None:
    """A model the site does not run (``models:`` names only ``people``) is fine: its Detections are
    tracked and a rule with ``model:`` naming it counts them, and only them."""
    models = {"people": {"path": "people.onnx"}}
    rules = {"theirs": {**LINE, "model": "their-detector"}, "ours": {**LINE, "model": "people"}}
    events = _walk(_service(tmp_path, rules, models=models), ("their-detector",), people=2)
    assert _crossings(events, "theirs") == 2
    assert _crossings(events, "ours") == 0


def test_rules_built_on_a_zone_see_only_their_models_objects_in_it(tmp_path: Path) -> None:
    """A crowd rule with ``model:`` counts that model's objects in a zone that has none (and sees them all)."""
    crowd = {"type": "crowd", "zone": "bay", "min_count": 2}
    rules = {"bay": BAY, "crowd_one": {**crowd, "model": "people"}, "crowd_any": crowd}
    events = _walk(_service(tmp_path, rules), ("people", "people-2"), frames=14)
    crowded = {event.rule for event in events if event.event_type == "overcrowded"}
    assert crowded == {"crowd_any"}  # one person, seen by two models: 2 to a rule that sees both


def _parse(rules: dict[str, Any], models: dict[str, Any] | None = None) -> Any:
    site = {"site": {"name": "s"}, "cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}}
    if models is not None:
        site["models"] = models
    return parse_config(yaml.safe_dump(site))


def test_an_external_rule_loads_and_has_no_state() -> None:
    config = _parse({"theirs": {"type": "external", "snapshot": True}, "door": LINE})
    rules = CameraRules("cam", config.cameras["cam"], CountStore())
    assert [rule.name for rule in rules.rules] == ["door"]
    assert rules.step(_moment()) == []
    assert [r.rule for r in reported_rules({"cam": _Held(config.cameras["cam"])})] == ["door"]  # no reports


def _moment() -> Moment:
    person = Observed(1, "person", 0.9, (0.4, 0.3, 0.5, 0.6), model="people")
    return Moment(0.0, dt.datetime(2026, 11, 23, 12, 0), [person], model="people")


class _Held:
    def __init__(self, config: Any) -> None:
        self.config = config


@pytest.mark.parametrize(
    "action",
    [
        {"type": "webhook", "url": "https://hooks.example/a"},
        {"type": "command", "argv": ["/bin/true"]},
        {"type": "gpio", "line": 4},
    ],
)
def test_an_external_rule_refuses_actions_at_the_file_line_and_key(tmp_path: Path, action: dict[str, Any]) -> None:
    rules = {"theirs": {"type": "external", "snapshot": True, "actions": [action]}}
    site = write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})
    line = next(n for n, text in enumerate(site.read_text().splitlines(), 1) if "actions:" in text)
    with pytest.raises(ConfigError) as raised:
        load_config(site)
    message = str(raised.value)
    assert f"site.yaml:{line}: cameras.cam.rules.theirs.actions: an external rule cannot have actions" in message
    assert "decides" in message


def test_an_external_rule_with_no_actions_written_out_is_fine() -> None:
    config = _parse({"theirs": {"type": "external", "actions": []}})
    assert config.cameras["cam"].rules["theirs"].type == "external"


def test_config_check_warns_of_a_rule_without_model_on_a_camera_of_two_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    models = {"people": {"path": "people.onnx"}, "vests": {"path": "vests.onnx"}}
    rules = {"door": LINE, "door_people": {**LINE, "model": "people"}, "theirs": {"type": "external"}}
    site = write_site(tmp_path, {"models": models, "cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})
    monkeypatch.setattr(cli, "installed_services", lambda: [])  # the schema and this warning, not models' files
    assert cli.main(["config", "check", str(site)]) == 0  # a warning, not an error
    err = capsys.readouterr().err
    assert re.search(r"warning: .*site\.yaml:\d+: cameras\.cam\.rules\.door: the camera runs models people, vests", err)
    assert "set `model:` on the rule" in err
    assert "door_people" not in err and "theirs" not in err
    site = {"site": {"name": "s"}, "models": models}
    site["cameras"] = {"cam": {"url": "rtsp://h/1", "models": ["people"], "rules": {"door": LINE}}}
    assert cli.model_overlaps(parse_config(yaml.safe_dump(site))) == []  # the camera runs one of the two


def test_refused_events_leave_the_outbox(tmp_path: Path) -> None:
    service = _service(tmp_path, {"door": LINE})
    try:
        asyncio.run(_walk_without_closing(service))
        stored = [event for _, event in service.outbox.after(0)]
        assert stored and len(service.outbox) == len(stored)
        service._refused([Refusal(id=stored[0].id, reason="unknown_rule", detail="no such rule")])
        assert [event.id for _, event in service.outbox.after(0)] == [event.id for event in stored[1:]]
        assert REGISTRY.get_sample_value("edgesight_events_queued") == len(stored) - 1
    finally:
        service.outbox.close()
        service.store.close()
    reopened = RulesService(service.config)  # what a restart would send again
    try:
        assert stored[0].id not in {event.id for _, event in reopened.outbox.after(0)}
    finally:
        reopened.outbox.close()
        reopened.store.close()


async def _walk_without_closing(service: RulesService) -> None:
    for seq in range(1, 13):
        y = 0.25 + 0.05 * seq
        ref = frame_ref("cam", seq, capture_ns=seq * 10**8, monotonic_ns=seq * 10**8, width=640, height=480)
        boxes = np.array([[0.4, y - 0.15, 0.5, y]], "<f4")
        await service.handle(Detections.from_arrays(ref, "people", boxes, [0], [0.9], labels={0: "person"}))


def test_a_sender_inventing_labels_keeps_the_overlap_check_bounded() -> None:
    """Labels are whatever a sender puts in its Detections: what the check remembers stays bounded, and a
    label it already holds still warns."""
    rules = CameraRules("cam", _parse({"any": LINE}).cameras["cam"], CountStore())
    when = dt.datetime(2026, 11, 23, 12, 0)
    rules.step(Moment(0.0, when, [], model="b"))  # two models: the check is on
    for index in range(MAX_OVERLAP_LABELS + 500):
        track = Observed(index, f"thing-{index}", 0.9, (0.1, 0.1, 0.2, 0.2), model="a")
        rules.step(Moment(index / 10, when, [track], model="a"))
    assert len(rules.overlap_seen["any"]) == MAX_OVERLAP_LABELS
    assert "any" not in rules.overlap_warned
    again = Observed(99_999, "thing-0", 0.9, (0.1, 0.1, 0.2, 0.2), model="b")
    rules.step(Moment(100.0, when, [again], model="b"))
    assert "any" in rules.overlap_warned and "any" not in rules.overlap_seen  # warned once: nothing kept

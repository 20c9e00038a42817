"""The site file: errors name file, line and key; the schema describes the example."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from common.config import SiteConfig, load_config, parse_config
from common.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"


def test_example_loads_with_defaults_and_overrides() -> None:
    config = load_config(EXAMPLE, environ={"DOCK1_PASSWORD": "s3cret"})
    assert config.site.name == "plant-7"
    assert config.cameras["dock-1"].fps == 5  # own value wins
    assert config.cameras["yard"].fps == 10  # inherited from camera_defaults
    dock = config.cameras["dock-1"]
    assert dock.password is not None and dock.password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(dock) and "s3cret" not in str(dock.model_dump())  # a secret stays secret
    assert config.uplink.mqtt is not None and config.uplink.mqtt.host == "localhost"  # ${MQTT_HOST:-localhost}


def _problems(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml", environ or {})
    return caught.value.problems


@pytest.mark.parametrize(
    ("needle", "replacement", "expected"),
    [
        ("  fps: 5 ", "  fps: -5 ", "cameras.dock-1.fps: Input should be greater than 0"),
        (
            "        seconds: 120",
            "        seconds: soon",
            "cameras.dock-1.rules.loitering.seconds: Input should be a valid number",
        ),
        ("        in_side: right", "        in_sid: right", "cameras.dock-1.rules.door.in_sid: unknown key"),
        ("  frames_hwm: 4 ", "  frames_hwm: 0 ", "bus.frames_hwm: Input should be greater than or equal to 1"),
        ("    port: 1883", "    port: 99999", "uplink.mqtt.port: Input should be less than or equal to 65535"),
        (
            "        zone: bay",
            "        zone: nowhere",
            "cameras.dock-1.rules.loitering.zone: rule 'loitering' names zone 'nowhere'",
        ),
        ("  publish: pub+connect:", "  publish: pub+sideways:", "bus.publish: bad endpoint"),
        (
            "  report_interval_s: 900",
            "  report_interval_s: 420",
            "analytics.report_interval_s: must be whole minutes that divide a day (60, 300, 900, 3600, ...), "
            "so intervals align to days (got 420)",
        ),
    ],
)
def test_broken_example_names_line_and_key(needle: str, replacement: str, expected: str) -> None:
    lines = EXAMPLE.read_text().splitlines()
    [index] = [i for i, line in enumerate(lines) if needle in line]
    lines[index] = lines[index].replace(needle, replacement, 1)
    problems = _problems("\n".join(lines))
    assert any(expected in p for p in problems), problems
    if not expected.startswith("cameras.dock-1: "):
        assert any(p.startswith(f"site.yaml:{index + 1}: ") and expected in p for p in problems), problems


def test_line_points_outside_the_frame_are_rejected_at_their_line() -> None:
    text = (
        "site: {name: s}\ncameras:\n  c:\n    url: x.mp4\n    rules:\n"
        "      l:\n        type: line\n        line: [[0, 0.5], [1.5, 0.5]]\n"
    )
    assert _problems(text) == [
        "site.yaml:8: cameras.c.rules.l.line[1][0]: Input should be less than or equal to 1 (got 1.5)"
    ]


def test_missing_required_field_points_at_its_parent() -> None:
    text = "site: {name: s}\ncameras:\n  c:\n    url: x.mp4\n    rules:\n      l: {type: line}\n"
    assert _problems(text) == ["site.yaml:6: cameras.c.rules.l.line: Field required"]


def test_missing_environment_variable_is_reported_at_its_line() -> None:
    text = "site: {name: s}\ncameras:\n  c:\n    url: rtsp://u:${CAM_PASSWORD}@h/s\n"
    problems = _problems(text)
    assert problems == [
        "site.yaml:4: cameras.c.url: environment variable CAM_PASSWORD is not set "
        "(use ${CAM_PASSWORD:-default} for a default)"
    ]


def test_secret_file_substitution(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    config = parse_config(f"site: {{name: s}}\ncameras:\n  c: {{url: 'rtsp://u:${{file:{secret}}}@h/s'}}\n", environ={})
    assert config.cameras["c"].url == "rtsp://u:hunter2@h/s"


def test_duplicate_keys_and_yaml_syntax_errors_have_lines() -> None:
    assert _problems("site: {name: s}\ncameras:\n  c: {url: a}\n  c: {url: b}\n") == [
        "site.yaml:4: cameras.c: duplicate key"
    ]
    assert _problems("site: {name: s}\ncameras: [\n")[0].startswith("site.yaml:3: (yaml):")


def test_camera_using_an_undefined_model() -> None:
    problems = _problems("site: {name: s}\ncameras:\n  c: {url: a, models: [ppe]}\n")
    assert any("uses models ['ppe'] not defined" in p for p in problems)


def test_two_cameras_whose_names_make_one_frame_ring_are_refused() -> None:
    # "." is not kept in a ring's file name: both would write edgesight.s.dock_1 and read each other's frames
    problems = _problems("site: {name: s}\ncameras:\n  dock.1: {url: a}\n  dock_1: {url: b}\n")
    assert any("'dock.1' and 'dock_1' would share the frame ring 'edgesight.s.dock_1'" in p for p in problems)
    parse_config("site: {name: s}\ncameras:\n  dock.1: {url: a}\n  dock-1: {url: b}\n", environ={})  # apart


def test_schema_validates_the_example_and_catches_a_bad_one() -> None:
    schema = SiteConfig.model_json_schema()
    document = yaml.safe_load(EXAMPLE.read_text())
    jsonschema.validate(document, schema)
    document["cameras"]["dock-1"]["fps"] = "fast"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, schema)


def test_cli_config_check_and_schema(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "common.cli.main"]
    good = subprocess.run([*cli, "config", "check", str(EXAMPLE)], capture_output=True, text=True, check=False)
    assert good.returncode == 0, good.stderr
    assert "ok" in good.stdout
    broken = tmp_path / "site.yaml"
    broken.write_text(EXAMPLE.read_text().replace("  fps: 5 ", "  fps: -5 "))
    bad = subprocess.run([*cli, "config", "check", str(broken)], capture_output=True, text=True, check=False)
    assert bad.returncode == 2
    line = next(i for i, text in enumerate(EXAMPLE.read_text().splitlines(), 1) if "  fps: 5 " in text)
    assert f"{broken}:{line}: cameras.dock-1.fps: Input should be greater than 0 (got -5)" in bad.stderr
    schema = subprocess.run([*cli, "config", "schema"], capture_output=True, text=True, check=True)
    assert json.loads(schema.stdout)["title"] == "EdgeSight site configuration"


def test_a_missing_zone_is_reported_at_the_rule_and_no_secret_is_echoed() -> None:
    """It used to name the camera and print the camera's mapping, password included."""
    text = EXAMPLE.read_text().replace("        zone: bay", "        zone: nowhere")
    problems = _problems(text, {"DOCK1_PASSWORD": "hunter2-secret"})
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "zone: nowhere" in row)
    assert problems == [
        f"site.yaml:{line}: cameras.dock-1.rules.loitering.zone: rule 'loitering' names zone 'nowhere', "
        "which is not a zone rule of this camera (zones: ['bay'])"
    ]
    wrong_type = _problems(
        EXAMPLE.read_text().replace("    username: viewer", "    username: [viewer]"),
        {"DOCK1_PASSWORD": "hunter2-secret"},
    )
    assert wrong_type and not any("hunter2" in problem for problem in wrong_type)
    bad_password = _problems(EXAMPLE.read_text().replace("${DOCK1_PASSWORD:-changeme}", "[1, 2]"))
    assert not any("(got" in problem for problem in bad_password)


def test_non_utf8_file_and_ports_are_config_errors(tmp_path: Path) -> None:
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"site: {name: s}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1.yaml:2: \(file\): not UTF-8 text"):
        load_config(latin)
    assert _problems("site: {name: s}\nmetrics: {ports: {rules: 70000}}\n") == [
        "site.yaml:2: metrics.ports.rules: Input should be less than or equal to 65535 (got 70000)"
    ]
    shared = _problems("site: {name: s}\nmetrics: {ports: {rules: 9500, uplink: 9500}}\n")
    assert len(shared) == 1 and "port 9500 is given to both rules and uplink" in shared[0]


def test_config_check_loads_models_and_finds_media(tmp_path: Path) -> None:
    """What the schema cannot know: a model file that is missing or does not load, a class the model
    lacks, a media file that is not there — each at its line, exit 2."""
    cli = [sys.executable, "-m", "common.cli.main"]
    text = (
        EXAMPLE.read_text()
        .replace("    path: yolox_nano.onnx", "    path: nosuch.onnx")
        .replace("media/people.mp4", "media/nosuch.mp4")
        .replace("        classes: [person]\n      door:", "        classes: [unicorn]\n      door:")
    )
    broken = tmp_path / "site.yaml"
    broken.write_text(text)
    result = subprocess.run([*cli, "config", "check", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 2, result.stderr
    line = {needle: next(i for i, row in enumerate(text.splitlines(), 1) if needle in row)
            for needle in ("nosuch.onnx", "nosuch.mp4")}  # fmt: skip
    assert f"{broken}:{line['nosuch.onnx']}: models.people.path: " in result.stderr
    assert f"{broken}:{line['nosuch.mp4']}: cameras.yard.url: " in result.stderr
    assert "Traceback" not in result.stderr
    broken.write_text(EXAMPLE.read_text().replace("classes: [person]\n      door:", "classes: [unicorn]\n      door:"))
    result = subprocess.run([*cli, "config", "check", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert "cameras.dock-1.rules.bay.classes[0]: no model of this camera has the class 'unicorn'" in result.stderr
    # a rule of an external detector (a model the site does not run): its labels are not known here
    external = "classes: [forklift]\n        model: forklift-detector\n      door:"
    broken.write_text(EXAMPLE.read_text().replace("classes: [person]\n      door:", external))
    result = subprocess.run([*cli, "config", "check", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_config_check_wants_bus_keys_only_of_the_services_that_will_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CurveZMQ site made before the fleet service existed has no fleet key: it stays valid until
    it gets a fleet: section (an optional service runs only where its section is), or run.services names it."""
    from common.bus import security
    from common.cli.main import main

    keys = tmp_path / "keys"
    security.generate_bus_keys(keys, [name for name in security.DEFAULT_CLIENTS if name != "fleet"])
    site = tmp_path / "site.yaml"
    secured = (
        "site: {name: s}\n"
        f"bus: {{curve: {{server_key: {keys / 'server.key'}, client_key: '{keys}/{{service}}.key_secret', "
        f"authorized_keys: {keys / 'clients'}}}}}\n"
    )
    site.write_text(secured)
    assert main(["config", "check", str(site)]) == 0
    fleet = "fleet: {mqtt: {host: mq.example}}\n"
    for wanting_fleet in (secured + fleet, secured + "run: {services: [broker, fleet]}\n"):
        site.write_text(wanting_fleet)
        assert main(["config", "check", str(site)]) == 2
        assert f"bus.curve.client_key: {keys}/fleet.key_secret does not exist" in capsys.readouterr().err
    site.write_text(secured + "run: {services: [broker, rules]}\n" + fleet)  # run.services leaves fleet out
    assert main(["config", "check", str(site)]) == 0


RULE_TYPES = "zone, line, dwell, crowd, ppe, presence, external"


def test_config_check_says_a_misspelt_rule_type_in_plain_words(tmp_path: Path) -> None:
    """It said `Unable to extract tag using discriminator 'type'`."""
    cli = [sys.executable, "-m", "common.cli.main"]
    text = EXAMPLE.read_text().replace("        type: line\n", "        tpye: line\n", 1)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "tpye: line" in row)
    broken = tmp_path / "site.yaml"
    broken.write_text(text)
    result = subprocess.run([*cli, "config", "check", str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert (
        f"{broken}:{line}: cameras.dock-1.rules.door.tpye: unknown key (did you mean 'type'?); "
        f"a rule needs a type: one of {RULE_TYPES}"
    ) in result.stderr, result.stderr
    assert "discriminator" not in result.stderr and "Unable to extract" not in result.stderr


def test_rule_and_action_types_in_plain_words() -> None:
    def problems(old: str, new: str, environ: dict[str, str] | None = None) -> tuple[int, list[str]]:
        text = EXAMPLE.read_text()
        line = text[: text.index(old)].count("\n") + 1  # of the first line changed
        return line, _problems(text.replace(old, new, 1), {"DOCK1_PASSWORD": "x", **(environ or {})})

    line, found = problems("        type: line\n", "        type: tpye\n")
    assert found == [f"site.yaml:{line}: cameras.dock-1.rules.door.type: rule type 'tpye' is not one of: {RULE_TYPES}"]
    line, found = problems("      door:\n        type: line\n", "      door:\n        kind: line\n")
    assert found == [f"site.yaml:{line}: cameras.dock-1.rules.door: a rule needs a type: one of {RULE_TYPES}"]
    line, found = problems("        type: line\n", "        type: ${RULE_TYPE}\n", {"RULE_TYPE": "hunter2"})
    assert found == [f"site.yaml:{line}: cameras.dock-1.rules.door.type: rule type is not one of: {RULE_TYPES}"]
    line, found = problems("{type: webhook,", "{type: webhok,")
    assert found == [
        f"site.yaml:{line}: cameras.dock-1.rules.loitering.actions[0].type: "
        "action type 'webhok' is not one of: webhook, gpio, command"
    ]
    line, found = problems("{type: webhook,", "{")
    assert found == [
        f"site.yaml:{line}: cameras.dock-1.rules.loitering.actions[0]: "
        "an action needs a type: one of webhook, gpio, command"
    ]


def test_a_bad_name_is_explained_without_a_regex() -> None:
    """The console's editor showed `String should match pattern '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$'`."""
    text = EXAMPLE.read_text().replace("      door:\n", "      .door:\n", 1)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if ".door:" in row)
    assert _problems(text, {"DOCK1_PASSWORD": "x"}) == [
        f"site.yaml:{line}: cameras.dock-1.rules..door[key]: "
        "a name may use letters, digits, '_', '.', '-' (at most 64, not starting with '.' or '-')"
    ]

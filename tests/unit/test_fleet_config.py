"""The site file's ``fleet:`` section and the operator's ``fleet.yaml``: what is left out is filled in,
and every problem names file, line and key."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from common.config import FleetConfig, load_config, parse_config
from common.errors import ConfigError
from common.fleet.fleet_file import load_fleet_file, parse_fleet_file

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "site.yaml"
AWS_HOST = "a1b2c3-ats.iot.eu-west-1.amazonaws.com"


def _site(
    fleet: str, uplink: str = "uplink:\n  mqtt: {host: mosquitto, client_id: dev-7}\n", name: str = "plant-7"
) -> str:
    return f"site: {{name: {name}}}\n{uplink}fleet:\n{textwrap.indent(textwrap.dedent(fleet), '  ')}"


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "site.yaml", {})
    return caught.value.problems


def test_the_examples_commented_fleet_section_loads_once_uncommented(tmp_path: Path) -> None:
    text = EXAMPLE.read_text()
    section = re.search(r"^# fleet:\n((?:#   .*\n)+)", text, re.MULTILINE)
    assert section, "examples/site.yaml shows a commented fleet: section"
    uncommented = "fleet:\n" + "".join(line[1:] + "\n" for line in section.group(1).splitlines())
    site = tmp_path / "site.yaml"
    site.write_text(text.replace("\nrun:\n", "\n" + uncommented + "\nrun:\n"))
    config = load_config(site, environ={"DOCK1_PASSWORD": "x"})
    fleet = config.fleet
    assert fleet is not None and fleet.thing == "plant-7" and fleet.jobs == "retained"  # localhost: no AWS
    assert (
        fleet.mqtt is not None and fleet.mqtt.host == "localhost" and fleet.mqtt.client_id == "edgesight-plant-7-fleet"
    )
    assert fleet.packages == "s3://my-bucket/edgesight/models/{name}/{version}.espkg"
    assert load_config(EXAMPLE, environ={}).fleet is None  # commented out: no fleet service


def test_what_the_section_leaves_out_comes_from_the_site() -> None:
    uplink = f"uplink:\n  mqtt: {{host: {AWS_HOST}, port: 8883, client_id: dev-7, password: pw}}\n"
    uplink += "  s3: {bucket: events-bucket, region: eu-west-1, endpoint_url: 'http://minio:9000'}\n"
    fleet = parse_config(_site("report_interval_s: 30\n", uplink), "site.yaml", {}).fleet
    assert isinstance(fleet, FleetConfig)
    assert (fleet.thing, fleet.jobs, fleet.jobs_mode, fleet.topic_root) == ("plant-7", "aws", "aws", "$aws")
    assert fleet.mqtt is not None and (fleet.mqtt.host, fleet.mqtt.port, fleet.mqtt.password) == (AWS_HOST, 8883, "pw")
    assert fleet.mqtt.client_id == "dev-7-fleet" and not fleet.mqtt.home_assistant
    assert (fleet.s3_region, fleet.s3_endpoint_url) == ("eu-west-1", "http://minio:9000")
    own = parse_config(_site("mqtt: {host: other}\nthing: p7\n", uplink=""), "site.yaml", {}).fleet
    assert own is not None and own.mqtt is not None and own.mqtt.client_id == "edgesight-plant-7-fleet"
    assert own.thing == "p7" and own.jobs == "retained" and own.s3_region is None


def test_a_fleet_without_any_broker_names_fleet_mqtt() -> None:
    assert _problems("site: {name: plant-7}\nfleet:\n  allow_apps: true\n") == [
        "site.yaml:2: fleet.mqtt: no MQTT broker: give fleet.mqtt (host, port, tls...) or uplink.mqtt"
    ]
    assert _problems("site: {name: plant-7}\nfleet: {}\n")[0].startswith("site.yaml:2: fleet.mqtt: no MQTT broker")


ON_AWS = f"uplink:\n  mqtt: {{host: {AWS_HOST}}}\n"


@pytest.mark.parametrize(
    ("fleet", "uplink", "name", "expected"),
    [
        ("jobs: auto\n", ON_AWS, "plant.7", "site.yaml:4: fleet.thing: 'plant.7' is no AWS IoT thing"),
        ("topic_root: acme\n", ON_AWS, "p", "site.yaml:5: fleet.topic_root: jobs: aws needs topic_root $aws"),
        ("jobs: retained\n", ON_AWS, "p", "site.yaml:4: fleet.topic_root: jobs: retained on AWS IoT Core"),
        ("topic_root: 'a/#'\n", None, "p", "site.yaml:5: fleet.topic_root: a topic root is one or more levels"),
        ("thing: 'a/b'\n", None, "p", "site.yaml:5: fleet.thing: String should match pattern"),
        ("packages: 's3://b/{name}.espkg'\n", None, "p", "site.yaml:5: fleet.packages: must hold {name} and"),
        (
            "packages: 's3://b/{name}/{version}/{x.y}'\n",
            None,
            "p",
            "fleet.packages: must hold {name} and {version}, and",
        ),
        ("packages: 'ftp://b/{name}/{version}'\n", None, "p", "fleet.packages: must be an s3://, https:// or http://"),
        ("packages: 's3://b/{name}/{version'\n", None, "p", "fleet.packages: has a lone { or }"),
        ("console_url: 'javascript:alert(1)'\n", None, "p", "fleet.console_url: must be an http:// or https:// URL"),
        (
            "report_interval_s: 10\nmin_report_interval_s: 20\n",
            None,
            "p",
            "site.yaml:4: fleet: fleet.min_report_interval_s",
        ),
        ("report_interval_s: 0.5\n", None, "p", "site.yaml:5: fleet.report_interval_s: Input should be greater than"),
        ("jobs: sometimes\n", None, "p", "site.yaml:5: fleet.jobs: Input should be 'auto', 'aws' or 'retained'"),
        ("alow_apps: true\n", None, "p", "site.yaml:5: fleet.alow_apps: unknown key"),
        ("mqtt: {port: 1883}\n", None, "p", "site.yaml:5: fleet.mqtt.host: Field required"),
    ],
)
def test_fleet_problems_name_file_line_and_key(fleet: str, uplink: str | None, name: str, expected: str) -> None:
    problems = _problems(_site(fleet, uplink if uplink is not None else "uplink:\n  mqtt: {host: mosquitto}\n", name))
    assert any(problem.startswith(expected) or expected in problem for problem in problems), problems


def test_jobs_aws_on_another_broker_needs_trusted_operators() -> None:
    """Unsigned jobs come only from AWS IoT itself (its policies say who creates jobs): on any other
    broker, any client could answer start-next with one."""
    problems = _problems(_site("jobs: aws\n"))
    assert problems == [
        "site.yaml:4: fleet.trusted_operators: jobs: aws on a broker that is not AWS IoT Core (mosquitto) would "
        "run unsigned jobs any client sends: list the operators' keys in fleet.trusted_operators (or use jobs: "
        "retained)"
    ]
    signed = parse_config(_site("jobs: aws\ntrusted_operators: [ops.pub]\n"), "site.yaml", {}).fleet
    assert signed is not None and signed.jobs == "aws"
    on_aws = parse_config(_site("jobs: aws\n", ON_AWS, "p7"), "site.yaml", {}).fleet  # AWS's policies decide
    assert on_aws is not None and on_aws.jobs == "aws" and on_aws.trusted_operators == []


FLEET_YAML = """\
broker:
  host: ${FLEET_BROKER:-mosquitto.example}
  port: 8883
  tls: {ca_file: ca.pem}
topic_root: acme
bucket: {name: fleet-models, region: eu-west-1}
operator_key: keys/ops.key
sites:
  plant-7: {console: "https://plant-7.example/"}
  plant-9: {thing: p9}
  plant-11: {}
groups:
  north: [plant-7, plant-9]
  all: [plant-7, plant-9, plant-11]
"""


def test_fleet_yaml_loads_and_names_targets(tmp_path: Path) -> None:
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET_YAML)
    fleet = load_fleet_file(path, environ={})
    assert fleet.source == str(path) and fleet.broker.host == "mosquitto.example" and fleet.jobs_mode == "retained"
    assert fleet.bucket is not None and fleet.bucket.prefix == "edgesight/models"
    assert fleet.operator_key == tmp_path / "keys/ops.key"  # relative: to fleet.yaml's folder, not the cwd
    assert fleet.broker.tls is not None and fleet.broker.tls.ca_file == str(tmp_path / "ca.pem")
    assert parse_fleet_file(FLEET_YAML, "fleet.yaml", {}).operator_key == Path("keys/ops.key")  # no file, no folder
    assert fleet.targets(["north", "plant-11", "plant-7"]) == ["plant-7", "p9", "plant-11"]
    assert fleet.things() == {"plant-7": "plant-7", "p9": "plant-9", "plant-11": "plant-11"}
    assert fleet.topics("plant-9").reported == "acme/things/p9/shadow/name/edgesight/update"
    with pytest.raises(ValueError, match="'south' is no site or group"):
        fleet.targets(["south"])


BROKER = "broker:\n  host: ${FLEET_BROKER:-mosquitto.example}\n  port: 8883\n  tls: {ca_file: ca.pem}\n"


@pytest.mark.parametrize(
    ("needle", "replacement", "expected"),
    [
        ("  port: 8883", "  port: 0", "fleet.yaml:3: broker.port: Input should be greater than or equal to 1"),
        ("topic_root: acme", "topic_root: acme/+", "fleet.yaml:5: topic_root: a topic root is"),
        ("operator_key:", "operator_keys:", "fleet.yaml:7: operator_keys: unknown key"),
        ("  plant-9: {thing: p9}", "  plant-9: {thing: p/9}", "fleet.yaml:10: sites.plant-9.thing: String should"),
        ("north: [plant-7, plant-9]", "north: [plant-7, plant-8]", "fleet.yaml:13: groups.north[1]: 'plant-8' is not"),
        ("  all: [", "  plant-7: [", "fleet.yaml:14: groups.plant-7: 'plant-7' names a site too"),
        ("  plant-11: {}", "  plant-11: {thing: p9}", "fleet.yaml:11: sites.plant-11: thing 'p9' is also site"),
        ("bucket: {name: fleet-models", "bucket: {name: x", "fleet.yaml:6: bucket.name: String should have at least 3"),
        ("${FLEET_BROKER:-mosquitto.example}", "${FLEET_BROKER}", "fleet.yaml:2: broker.host: environment variable"),
        (BROKER, "", "fleet.yaml:1: broker: Field required"),
        ("sites:", "sites: [", "fleet.yaml:"),
    ],
)
def test_fleet_yaml_problems_name_file_line_and_key(needle: str, replacement: str, expected: str) -> None:
    assert needle in FLEET_YAML
    with pytest.raises(ConfigError) as caught:
        parse_fleet_file(FLEET_YAML.replace(needle, replacement), "fleet.yaml", {})
    assert any(problem.startswith(expected) for problem in caught.value.problems), caught.value.problems


def test_fleet_yaml_on_aws_needs_aws_thing_names_and_root(tmp_path: Path) -> None:
    text = FLEET_YAML.replace("plant-9: {thing: p9}", "plant.9: {}").replace("plant-9]", "plant.9]")
    text = text.replace("plant-9, plant-11]", "plant.9, plant-11]")
    with pytest.raises(ConfigError) as caught:
        parse_fleet_file(text, "fleet.yaml", {"FLEET_BROKER": AWS_HOST})
    assert (
        "fleet.yaml:5: topic_root: jobs: aws needs topic_root $aws (AWS IoT answers only there)"
        in caught.value.problems
    )
    assert any(
        problem.startswith("fleet.yaml:10: sites.plant.9: 'plant.9' is no AWS IoT") for problem in caught.value.problems
    )
    with pytest.raises(ConfigError, match=r"nowhere\.yaml: cannot read"):
        load_fleet_file(tmp_path / "nowhere.yaml")
    (tmp_path / "latin1.yaml").write_bytes(b"broker: {host: \xe9}\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_fleet_file(tmp_path / "latin1.yaml")


def test_fleet_yaml_paths_absolute_or_home_stay_theirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    tls = "tls: {ca_file: /etc/ssl/ca.pem, cert_file: certs/op.crt, key_file: ~/op.pem}"
    path = tmp_path / "ops" / "fleet.yaml"
    path.parent.mkdir()
    path.write_text(f"broker: {{host: mq.example, {tls}}}\noperator_key: ~/.edgesight/operator.key\n")
    monkeypatch.chdir(tmp_path)
    fleet = load_fleet_file(Path("ops/fleet.yaml"), environ={})
    assert fleet.operator_key == tmp_path / "home/.edgesight/operator.key"
    assert fleet.broker.tls is not None
    assert (fleet.broker.tls.ca_file, fleet.broker.tls.cert_file, fleet.broker.tls.key_file) == (
        "/etc/ssl/ca.pem",
        str(tmp_path / "ops/certs/op.crt"),
        str(tmp_path / "home/op.pem"),
    )

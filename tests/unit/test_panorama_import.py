"""`edgesight panorama import`: empty parameters, parameter overrides, ports, v0 apps, an app's own packages."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from common.config import AppConfig, parse_config
from services.apps.environments import environment_dir, environment_problems, environment_python
from services.apps.panorama import NotTranslatable, Translation, main, translate
from services.apps.requirements import dockerfile_requirements

ACCOUNT = "123456789012"
CODE = f"{ACCOUNT}-DEBUG_SERVER-1.0"


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def project(folder: Path, *, inbound: list[int] | None = None, routes: list[dict[str, Any]] | None = None) -> Path:
    """A v1 project shaped like AWS's debug-server sample: string, float and int parameter nodes."""
    nodes = [
        {"name": "code_node", "interface": f"{ACCOUNT}::DEBUG_SERVER.interface"},
        {"name": "model_node", "interface": f"{ACCOUNT}::SQUEEZENET.interface"},
        {"name": "camera_node", "interface": "panorama::abstract_rtsp_media_source.rtsp_v1_interface"},
        {"name": "output_node", "interface": "panorama::hdmi_data_sink.hdmi0"},
        {"name": "detection_threshold", "interface": "float32", "value": 20.0, "overridable": True},
        {"name": "region", "interface": "string", "value": "us-east-1", "overridable": True},
        {"name": "model_input_width", "interface": "int32", "value": 224},
    ]
    edges = [
        {"producer": "camera_node.video_out", "consumer": "code_node.video_in"},
        {"producer": "code_node.video_out", "consumer": "output_node.video_in"},
        {"producer": "detection_threshold", "consumer": "code_node.threshold"},
        {"producer": "region", "consumer": "code_node.region"},
        {"producer": "model_input_width", "consumer": "code_node.model_input_width"},
    ]
    graph: dict[str, Any] = {"nodeGraph": {"envelopeVersion": "2021-01-01", "nodes": nodes, "edges": edges}}
    if routes is not None:
        graph["nodeGraph"]["networkRoutingRules"] = routes
    write(folder / "graphs" / "my-app" / "graph.json", graph)
    interface: dict[str, Any] = {
        "name": "interface",
        "category": "business_logic",
        "asset": "code_asset",
        "inputs": [{"name": "video_in", "type": "media"}, {"name": "region", "type": "string"}],
        "outputs": [{"name": "video_out", "type": "media"}],
    }
    if inbound is not None:
        interface["network"] = {"inboundPorts": [{"port": port, "description": "http"} for port in inbound]}
    code = folder / "packages" / CODE
    write(code / "package.json", {"nodePackage": {"name": "DEBUG_SERVER", "interfaces": [interface]}})
    write(code / "descriptor.json", {"runtimeDescriptor": {"entry": {"path": "python3", "name": "/panorama/app.py"}}})
    write(code / "src" / "app.py", "import panoramasdk\n")
    model = folder / "packages" / f"{ACCOUNT}-SQUEEZENET-1.0"
    model_interface = {"name": "interface", "category": "ml_model", "asset": "model_asset"}
    write(model / "package.json", {"nodePackage": {"name": "SQUEEZENET", "interfaces": [model_interface]}})
    write(model / "descriptor.json", {"mlModelDescriptor": {"framework": "PYTORCH"}})
    return folder


def run(folder: Path, *, params: dict[str, str] | None = None, **options: Any) -> Translation:
    return translate(
        folder,
        cameras=options.pop("cameras", {"camera_node": "rtsp://cam/1"}),
        models=options.pop("models", {"model_node": "squeezenet.onnx"}),
        params=params or {},
        **options,
    )


def problems_of(folder: Path, **options: Any) -> list[str]:
    with pytest.raises(NotTranslatable) as caught:
        run(folder, **options)
    return caught.value.problems


# -- 1: --param NAME= -------------------------------------------------------------------------------------


def test_an_empty_param_sets_a_string_parameter_to_an_empty_string(tmp_path: Path) -> None:
    section = run(project(tmp_path), params={"region": ""}).section
    assert section["parameters"]["region"] == {"type": "string", "value": ""}


@pytest.mark.parametrize(("node", "kind"), [("detection_threshold", "float32"), ("model_input_width", "int32")])
def test_an_empty_param_for_a_number_is_a_clear_problem(tmp_path: Path, node: str, kind: str) -> None:
    assert problems_of(project(tmp_path), params={node: ""}) == [
        f"--param {node}=: empty, but parameter {node!r} is a {kind}; give a value"
    ]


def test_the_command_line_takes_an_empty_param_but_not_an_empty_camera(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "app")
    out = tmp_path / "site.yaml"
    common = [str(folder), "--model", "model_node=m.onnx", "--out", str(out)]
    assert main(["import", *common, "--camera", "camera_node=", "--param", "region="]) == 2
    assert "--camera 'camera_node=': expected NAME=VALUE" in capsys.readouterr().err
    assert main(["import", *common, "--camera", "camera_node=rtsp://cam/1", "--param", "region="]) == 0
    assert yaml.safe_load(out.read_text())["apps"]["my-app"]["parameters"]["region"]["value"] == ""


# -- 2: nodeOverrides replacing parameter nodes -----------------------------------------------------------


def parameter_override(folder: Path, replacement: dict[str, Any]) -> Path:
    """As AWS's debug-server override.json: region replaced by region_override."""
    override = {
        "nodeGraphOverrides": {
            "nodes": [replacement],
            "nodeOverrides": [{"replace": "region", "with": [{"name": replacement["name"]}]}],
            "envelopeVersion": "2021-01-01",
        }
    }
    return write(folder / "graphs" / "my-app" / "override.json", override)


def test_an_override_parameter_node_gives_the_port_its_value_and_type(tmp_path: Path) -> None:
    folder = project(tmp_path)
    override = parameter_override(folder, {"name": "region_override", "interface": "string", "value": "eu-west-1"})
    section = run(folder, override=override).section
    assert section["parameters"]["region"] == {"type": "string", "value": "eu-west-1"}
    assert section["parameters"]["threshold"] == {"type": "float32", "value": 20.0}  # the others as they were


def test_an_override_parameter_may_change_the_type(tmp_path: Path) -> None:
    folder = project(tmp_path)
    override = parameter_override(folder, {"name": "region_code", "interface": "int32", "value": 3})
    assert run(folder, override=override).section["parameters"]["region"] == {"type": "int32", "value": 3}


@pytest.mark.parametrize("flag", ["region_override", "region"])
def test_param_names_the_replacing_node_or_the_replaced_one(tmp_path: Path, flag: str) -> None:
    folder = project(tmp_path)
    override = parameter_override(folder, {"name": "region_override", "interface": "string", "value": "eu-west-1"})
    section = run(folder, override=override, params={flag: "ap-south-1"}).section
    assert section["parameters"]["region"]["value"] == "ap-south-1"


def test_a_parameter_replaced_by_a_node_that_is_no_parameter_is_a_problem(tmp_path: Path) -> None:
    folder = project(tmp_path)
    override = parameter_override(folder, {"name": "lobby", "interface": f"{ACCOUNT}::lobby.lobby"})
    problems = problems_of(folder, override=override)
    assert any("parameter node 'region' is replaced with ['lobby']: expected one parameter node" in p for p in problems)


# -- 3: networkRoutingRules / inboundPorts ----------------------------------------------------------------

ROUTE = {"node": "code_node", "containerPort": 80, "hostPort": 8080, "decorator": {"title": "Listener port 8080"}}


def test_routing_rules_become_ports_of_the_apps_own_network(tmp_path: Path) -> None:
    translation = run(project(tmp_path, inbound=[80], routes=[ROUTE]))
    assert translation.section["network"] == "own"
    assert translation.section["ports"] == [{"host_port": 8080, "app_port": 80, "protocol": "tcp"}]
    assert any("host 8080 -> app 80" in note for note in translation.notes)


def test_an_overrides_routing_rule_moves_the_host_port(tmp_path: Path) -> None:
    folder = project(tmp_path, inbound=[80], routes=[ROUTE])
    override = {
        "nodeGraphOverrides": {"networkRoutingRules": [{"node": "code_node", "containerPort": 80, "hostPort": 8081}]}
    }
    path = write(folder / "override.json", override)
    assert run(folder, override=path).section["ports"] == [{"host_port": 8081, "app_port": 80, "protocol": "tcp"}]


def test_an_inbound_port_without_a_rule_is_a_note_not_a_port(tmp_path: Path) -> None:
    translation = run(project(tmp_path, inbound=[80]))
    assert "ports" not in translation.section
    assert any("listens on port 80" in note and "no networkRoutingRules" in note for note in translation.notes)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {**ROUTE, "containerPort": 81},
            "containerPort 81 is not among the code package's network.inboundPorts ([80])",
        ),
        ({**ROUTE, "node": "model_node"}, "node 'model_node': only the code node 'code_node' serves ports"),
        ({"node": "code_node", "containerPort": 80}, "expected a containerPort and a hostPort number"),
    ],
)
def test_a_routing_rule_that_cannot_be_served_is_a_problem(tmp_path: Path, rule: dict[str, Any], expected: str) -> None:
    problems = problems_of(project(tmp_path, inbound=[80], routes=[rule]))
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_ported_app_validates_as_a_site_file(tmp_path: Path) -> None:
    folder = project(
        tmp_path / "app", inbound=[80, 81], routes=[ROUTE, {**ROUTE, "containerPort": 81, "hostPort": 8081}]
    )
    out = tmp_path / "site.yaml"
    assert main(["import", str(folder), "--camera", "camera_node=rtsp://c/1", "--model", "model_node=m.onnx",
                 "--out", str(out)]) == 0  # fmt: skip
    app = parse_config(out.read_text(), str(out)).apps["my-app"]
    assert [(p.host_port, p.app_port, p.protocol) for p in app.ports] == [(8080, 80, "tcp"), (8081, 81, "tcp")]


# -- 4: a v0 (Lambda-style) app ---------------------------------------------------------------------------

V0_APP = """\
import panoramasdk
import cv2

THRESHOLD = 0.5
MODEL = "yolov5s-wildlife"
raise SystemExit("the import ran the app")  # never: the app is read, not run


class YOLOv5(panoramasdk.base):

    def interface(self):
        return {
            "parameters":
                (
                    ("float", "threshold", "Detection threshold", THRESHOLD),
                    ("model", "model", "YOLOv5 wildlife model", MODEL),
                    ("int", "input_size", "Model input size", 640),
                    ("float", "person_index", "person index", 14),
                    ("bool", "draw", "Draw the boxes", True),
                    ("string", "banner", "A title", "wildlife"),
                ),
            "inputs": (("media[]", "video_in", "Camera input stream"),),
            "outputs": (("media[video_in]", "video_out", "Camera output stream"),)
        }

    def init(self, parameters, inputs, outputs):
        self.model = panoramasdk.model()
        self.model.open(parameters.model, 1)
        return True


def main():
    YOLOv5().run()


main()
"""


def v0_app(folder: Path, source: str = V0_APP) -> Path:
    write(folder / "lambda_function.py", source)
    write(folder / "utils.py", "print 'python 2, mentions panoramasdk'\n")  # a helper that does not parse
    return folder


def test_a_v0_app_is_read_from_its_interface(tmp_path: Path) -> None:
    folder = v0_app(tmp_path / "wildlife")
    translation = translate(
        folder,
        cameras={"gate": "rtsp://cam/gate", "barn": "rtsp://cam/barn"},
        models={"yolov5s-wildlife": "yolov5s.onnx"},
        params={"input_size": "320"},
    )
    assert translation.app == "wildlife"
    assert translation.cameras == {"gate": "rtsp://cam/gate", "barn": "rtsp://cam/barn"}
    assert translation.section == {
        "code": str(folder.resolve()),
        "entry": "/panorama/lambda_function.py",
        "interpreter": "python3",
        "cameras": ["gate", "barn"],
        "models": {"yolov5s-wildlife": {"path": "yolov5s.onnx"}},
        "parameters": {
            "threshold": {"type": "float32", "value": 0.5},
            "model": {"type": "string", "value": "yolov5s-wildlife"},
            "input_size": {"type": "int32", "value": 320},
            "person_index": {"type": "float32", "value": 14.0},
            "draw": {"type": "boolean", "value": True},
            "banner": {"type": "string", "value": "wildlife"},
        },
        "video_in": "video_in",
        "video_out": "video_out",
    }
    document = {"site": {"name": "t"}, "cameras": {n: {"url": u} for n, u in translation.cameras.items()}}
    parse_config(yaml.safe_dump({**document, "apps": {"wildlife": translation.section}}), "site.yaml")


def test_a_v0_model_is_named_by_its_parameters_value(tmp_path: Path) -> None:
    folder = v0_app(tmp_path / "wildlife")
    cameras = {"gate": "rtsp://cam/gate"}
    section = translate(folder, cameras=cameras, models={"mine": "mine.onnx"}, params={"model": "mine"}).section
    assert section["models"] == {"mine": {"path": "mine.onnx"}}
    with pytest.raises(NotTranslatable) as caught:
        translate(folder, cameras=cameras, models={}, params={})
    [problem] = caught.value.problems
    assert problem.startswith("model parameter 'model' ('yolov5s-wildlife'): a model that SageMaker Neo compiled")
    assert problem.endswith("give --model yolov5s-wildlife=FILE.onnx")


def test_a_v0_app_needs_a_camera_and_known_names(tmp_path: Path) -> None:
    folder = v0_app(tmp_path / "wildlife")
    with pytest.raises(NotTranslatable) as caught:
        translate(folder, cameras={}, models={"yolov5s-wildlife": "y.onnx", "other": "o.onnx"}, params={"nope": "1"})
    problems = "\n".join(caught.value.problems)
    assert "a v0 app has no camera nodes: give its cameras with --camera NAME=rtsp://" in problems
    assert "--param nope: no parameter of that name" in problems
    assert "--model other: no model parameter has that value" in problems


def test_a_v0_app_file_may_be_given_itself(tmp_path: Path) -> None:
    folder = v0_app(tmp_path / "wildlife")
    translation = translate(
        folder / "lambda_function.py", cameras={"c": "rtsp://c/1"}, models={"yolov5s-wildlife": "y.onnx"}, params={}
    )
    assert translation.section["entry"] == "/panorama/lambda_function.py"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('MODEL = "yolov5s-wildlife"', "import os\nMODEL = os.environ['MODEL']"), "MODEL is not a literal"),
        (('("bool", "draw", "Draw the boxes", True)', '("media", "still", "A picture", None)'), "type 'media'"),
        (('"inputs": (("media[]", "video_in", "Camera input stream"),),', '"inputs": (),'), "no media input"),
        (("return {", "spec = {}\n        return {"), None),  # still one return: read
        (("        return {", "        if True:\n            return {}\n        return {"), "in one return statement"),
    ],
)
def test_a_v0_interface_that_cannot_be_read_is_a_problem(
    tmp_path: Path, change: tuple[str, str], expected: str | None
) -> None:
    folder = v0_app(tmp_path / "wildlife", V0_APP.replace(*change))
    options: dict[str, Any] = {"cameras": {"c": "rtsp://c/1"}, "models": {"yolov5s-wildlife": "y.onnx"}, "params": {}}
    if expected is None:
        assert translate(folder, **options).section["video_in"] == "video_in"
        return
    with pytest.raises(NotTranslatable) as caught:
        translate(folder, **options)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_a_v0_rect_parameter_keeps_its_default(tmp_path: Path) -> None:
    rect = '("rect", "zone", "A zone", (0.1, 0.1, 0.9, 0.9))'
    folder = v0_app(tmp_path / "wildlife", V0_APP.replace('("bool", "draw", "Draw the boxes", True)', rect))
    options: dict[str, Any] = {"cameras": {"c": "rtsp://c/1"}, "models": {"yolov5s-wildlife": "y.onnx"}}
    translation = translate(folder, params={}, **options)
    assert "zone" not in translation.section["parameters"]
    assert translation.notes == ["parameter 'zone' (rect) keeps interface()'s default: a site file has no rect"]
    with pytest.raises(NotTranslatable) as caught:
        translate(folder, params={"zone": "0,0,1,1"}, **options)
    assert "type 'rect' has no EdgeSight counterpart" in caught.value.problems[0]


@pytest.mark.parametrize(
    ("imports", "base"), [("import panoramasdk as sdk", "sdk.base"), ("from panoramasdk import base", "base")]
)
def test_a_v0_base_class_imported_under_another_name_is_found(tmp_path: Path, imports: str, base: str) -> None:
    source = V0_APP.replace("import panoramasdk\n", f"{imports}\n").replace("(panoramasdk.base)", f"({base})")
    folder = v0_app(tmp_path / "wildlife", source)
    options: dict[str, Any] = {"cameras": {"c": "rtsp://c/1"}, "models": {"yolov5s-wildlife": "y.onnx"}, "params": {}}
    assert translate(folder, **options).section["parameters"]["threshold"]["value"] == 0.5


def test_a_folder_without_graph_or_v0_app_says_what_it_looked_for(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotTranslatable) as caught:
        translate(tmp_path / "empty", cameras={}, models={}, params={})
    assert "expected one graphs/<app>/graph.json (or a v0 app" in caught.value.problems[0]


# -- 5: its own packages ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("run_lines", "expected"),
    [
        ("RUN pip install --no-cache-dir --upgrade pip && \\\n    pip install --no-cache-dir opencv-python numpy",
         ["opencv-python", "numpy"]),
        ("RUN python3 -m pip install -U scipy\nRUN pip3 install opencv-python boto3",
         ["scipy", "opencv-python", "boto3"]),
        ('RUN pip3 install "numpy>=1.21,<2" \'requests[socks]==2.31\' > /dev/null 2>&1', ["numpy>=1.21,<2",
                                                                                           "requests[socks]==2.31"]),
        ("RUN apt-get update && apt-get install -y libgl1\nRUN pip3 install numpy --upgrade --ignore-installed",
         ["numpy"]),
        ('RUN ["pip3", "install", "--no-cache-dir", "boto3"]', ["boto3"]),
        ("RUN PIP_NO_CACHE_DIR=1 pip3 install -i https://mirror/simple \\\n  # a comment in a continuation\n"
         "    --target /opt/x awscrt", ["--index-url https://mirror/simple", "awscrt"]),
        ("RUN --mount=type=cache,target=/root/.cache/pip pip install webdavclient3", ["webdavclient3"]),
        ("COPY src /panorama\nRUN echo pip install nothing", []),
        ("ARG OPENCV=4.5.5.64\nENV TORCH_VERSION 1.10\nRUN pip3 install opencv-python==${OPENCV} torch==$TORCH_VERSION",
         ["opencv-python==4.5.5.64", "torch==1.10"]),
    ],
)  # fmt: skip
def test_pip_install_lines_of_a_dockerfile(tmp_path: Path, run_lines: str, expected: list[str]) -> None:
    dockerfile = write(tmp_path / "Dockerfile", f"FROM public.ecr.aws/panorama/panorama-application\n{run_lines}\n")
    problems: list[str] = []
    assert dockerfile_requirements(dockerfile, [tmp_path], tmp_path / "src", problems) == expected
    assert problems == []


def test_the_requirements_of_dockerfiles_and_requirements_files_in_order_once(tmp_path: Path) -> None:
    folder = project(tmp_path / "app")
    code = folder / "packages" / CODE
    write(folder / "Dockerfile", "FROM x\nRUN pip3 install boto3\n")  # the project root's
    write(code / "Dockerfile", "FROM public.ecr.aws/panorama/panorama-application\nCOPY src /panorama\n"
          "RUN pip3 install --no-cache-dir -r /panorama/requirements.txt && pip3 install opencv-python\n")  # fmt: skip
    write(code / "src" / "requirements.txt", "# for the app\nrequests==2.31  # pinned\n-r more.txt\nboto3\n")
    write(code / "src" / "more.txt", "shapely\\\n>=2\n")
    write(code / "requirements.txt", "boto3\nopencv-python\npip\n")
    section = run(folder).section
    assert section["requirements"] == ["boto3", "requests==2.31", "shapely>=2", "opencv-python"]


def test_a_variable_without_a_value_is_a_problem(tmp_path: Path) -> None:
    dockerfile = write(tmp_path / "Dockerfile", "FROM x\nARG VERSION\nRUN pip install torch==${VERSION}\n")
    problems: list[str] = []
    assert dockerfile_requirements(dockerfile, [tmp_path], tmp_path, problems) == []
    assert problems == [
        f"{dockerfile}:3: pip install torch==${{VERSION}}: a variable neither ARG nor ENV gives a value"
    ]


def test_a_requirements_file_the_dockerfile_names_must_be_there(tmp_path: Path) -> None:
    folder = project(tmp_path / "app")
    write(folder / "packages" / CODE / "Dockerfile", "FROM x\nRUN pip install -r missing.txt\n")
    [problem] = problems_of(folder)
    assert "Dockerfile:2: pip install -r missing.txt: no such file in" in problem


def test_a_v0_app_has_its_folders_requirements(tmp_path: Path) -> None:
    folder = v0_app(tmp_path / "wildlife")
    write(folder / "requirements.txt", "boto3\n")
    section = translate(folder, cameras={"c": "rtsp://c/1"}, models={"yolov5s-wildlife": "y.onnx"}, params={}).section
    assert section["requirements"] == ["boto3"]


def test_import_writes_requirements_and_says_how_to_build_with_no_env(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = project(tmp_path / "app")
    write(folder / "packages" / CODE / "requirements.txt", "boto3\n")
    out = tmp_path / "site.yaml"
    base = write(tmp_path / "base.yaml", yaml.safe_dump({"site": {"name": "b", "state_dir": str(tmp_path / "state")}}))
    arguments = ["--camera", "camera_node=rtsp://c/1", "--model", "model_node=m.onnx", "--base", str(base)]
    assert main(["import", str(folder), *arguments, "--out", str(out), "--no-env"]) == 0
    assert f"edgesight panorama env --config {out} my-app" in capsys.readouterr().out
    config = parse_config(out.read_text(), str(out))
    app = config.apps["my-app"]
    assert app.requirements == ["boto3"]
    assert environment_python(tmp_path / "state", "my-app", app) == tmp_path / "state/apps/my-app/env/bin/python"
    [problem] = environment_problems(config, "my-app", app)
    assert problem.startswith(f"{out}:")
    assert "apps.my-app.requirements" in problem and "is missing" in problem
    assert problem.endswith(f"`edgesight panorama env --config {out} my-app`")


def test_an_app_without_requirements_runs_on_the_shared_environment(tmp_path: Path) -> None:
    app = AppConfig(code=tmp_path, cameras=["c"])
    assert environment_python(tmp_path, "a", app) is None
    assert environment_python(tmp_path, "a", app.model_copy(update={"python": "3.12"})) is not None


def test_an_environment_whose_build_did_not_finish_is_stale(tmp_path: Path) -> None:
    text = textwrap.dedent(f"""\
        site: {{name: t, state_dir: {tmp_path / "state"}}}
        cameras: {{c: {{url: "rtsp://c/1"}}}}
        apps:
          a: {{code: {tmp_path}, cameras: [c], requirements: [boto3]}}
        """)
    config = parse_config(text, "site.yaml")
    folder = environment_dir(tmp_path / "state", "a")
    (folder / "bin").mkdir(parents=True)
    (folder / "bin" / "python").touch()  # made, but no stamp: interrupted
    [problem] = environment_problems(config, "a", config.apps["a"])
    assert problem.startswith("site.yaml:4: apps.a.requirements: ") and "is stale" in problem


# -- what a second app and a model file of the current folder need (a new user's first two surprises) --
def test_a_model_file_in_the_current_folder_is_written_as_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = project(tmp_path / "app")
    (tmp_path / "mine.onnx").write_bytes(b"onnx")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "site.yaml"
    arguments = ["--camera", "camera_node=rtsp://c/1", "--model", "model_node=mine.onnx", "--no-env"]
    assert main(["import", str(folder), *arguments, "--out", str(out)]) == 0
    app = yaml.safe_load(out.read_text())["apps"]["my-app"]
    assert app["models"]["model_node"]["path"] == str(tmp_path / "mine.onnx")


def test_a_second_app_never_moves_the_first_ones_camera(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = project(tmp_path / "first"), project(tmp_path / "second")
    site = tmp_path / "site.yaml"
    model = ["--model", "model_node=m.onnx", "--no-env"]
    assert main(["import", str(first), "--camera", "camera_node=rtsp://lobby/1", *model, "--out", str(site)]) == 0
    second_site = tmp_path / "second.yaml"
    both = ["import", str(second), *model, "--base", str(site), "--out", str(second_site)]
    assert main([*both, "--camera", "camera_node=rtsp://dock/2"]) == 2  # the same node name, another camera
    error = capsys.readouterr().err
    assert "the base site file has a camera 'camera_node' with another URL" in error and "=@camera_node" in error
    assert not second_site.exists()
    document = yaml.safe_load(site.read_text())
    document["cameras"]["dock"] = {"url": "rtsp://dock/2"}  # the site's own camera, named by its owner
    site.write_text(yaml.safe_dump(document))
    assert main([*both, "--camera", "camera_node=@dock"]) == 0
    written = yaml.safe_load(second_site.read_text())
    assert written["cameras"]["camera_node"]["url"] == "rtsp://lobby/1"  # the first app's camera is where it was
    assert written["apps"]["my-app"]["cameras"] == ["dock"]
    assert main([*both, "--camera", "camera_node=@nosuch"]) == 2
    assert "the base site file has no camera 'nosuch'" in capsys.readouterr().err

"""``edgesight panorama import``: an AWS Panorama application project -> an EdgeSight site file.

Reads ``graphs/<app>/graph.json`` (nodes, edges, packages), an optional deployment override (a
camera node replaced by one or more cameras) and each package's ``package.json`` and
``descriptor.json``; writes the cameras and an ``apps.<app>`` section that the apps service runs:

    edgesight panorama import APP_DIR --camera camera_node=rtsp://... --model model_node=model.onnx \\
        [--param detection_threshold=0.5] [--graph graphs/x/graph.json] [--override overrides.json] \\
        [--base site.yaml] --out site.yaml

Whatever cannot be translated is reported, every problem at once, and nothing is written (exit 2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError

__all__ = ["ImportError_", "translate"]

PARAMETER_TYPES = ("float32", "int32", "string", "boolean")
CAMERA_PACKAGE = "panorama::abstract_rtsp_media_source"
HDMI_PACKAGE = "panorama::hdmi_data_sink"
EXPORT_HINTS = {
    "PYTORCH": "torch.onnx.export(model, example_input, 'model.onnx')",
    "TENSORFLOW": "python -m tf2onnx.convert --saved-model DIR --output model.onnx",
    "KERAS": "python -m tf2onnx.convert --keras model.h5 --output model.onnx",
    "MXNET": "mxnet.onnx.export_model(symbol, params, [input_shape], onnx_file_path='model.onnx')",
    "ONNX": "the .onnx file you gave SageMaker Neo",
}
_NAME = re.compile(r"[^A-Za-z0-9_.-]")


class ImportError_(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Translation:
    app: str
    cameras: dict[str, str] = field(default_factory=dict)  # name -> URL
    section: dict[str, Any] = field(default_factory=dict)  # apps.<app>


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        problems.append(f"{path}: not found")
        return {}
    except (OSError, ValueError) as exc:
        problems.append(f"{path}: not readable JSON ({exc})")
        return {}
    if not isinstance(data, dict):
        problems.append(f"{path}: expected a JSON object")
        return {}
    return data


def _typed(kind: str, value: Any, where: str, problems: list[str]) -> Any:
    """``value`` (from JSON or the command line) as ``kind``; a problem when it does not fit."""
    try:
        if kind == "float32":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind == "int32":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(value)
            if not -(2**31) <= number < 2**31:
                raise ValueError
            return number
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        problems.append(f"{where}: {value!r} is not a {kind}")
        return None


def _package_dir(app_dir: Path, package: str, versions: dict[str, str]) -> Path | None:
    """``acct::NAME`` -> ``packages/acct-NAME-<version>`` (the graph's version, else the only one)."""
    account, _, name = package.partition("::")
    version = versions.get(package)
    if version is not None:
        candidate = app_dir / "packages" / f"{account}-{name}-{version}"
        if candidate.is_dir():
            return candidate
    found = sorted((app_dir / "packages").glob(f"{account}-{name}-*"))
    return found[-1] if found else None


def translate(
    app_dir: Path,
    *,
    cameras: dict[str, str],
    models: dict[str, str],
    params: dict[str, str],
    graph: Path | None = None,
    override: Path | None = None,
) -> Translation:
    problems: list[str] = []
    if graph is None:
        graphs = sorted(app_dir.glob("graphs/*/graph.json"))
        if len(graphs) != 1:
            where = ", ".join(str(g) for g in graphs) or "none"
            raise ImportError_([f"{app_dir}: expected one graphs/<app>/graph.json, found {where}; use --graph"])
        graph = graphs[0]
    elif not graph.is_absolute() and not graph.exists():
        graph = app_dir / graph
    node_graph = _read_json(graph, problems).get("nodeGraph", {})
    if problems:
        raise ImportError_(problems)
    app_name = _NAME.sub("_", graph.parent.name)[:64] or "app"
    versions = {p["name"]: str(p.get("version", "")) for p in node_graph.get("packages", []) if "name" in p}
    nodes: dict[str, dict[str, Any]] = {n["name"]: n for n in node_graph.get("nodes", []) if "name" in n}
    edges: list[dict[str, str]] = list(node_graph.get("edges", []))
    replaced: dict[str, list[str]] = {}
    if override is not None:
        overrides = _read_json(override, problems).get("nodeGraphOverrides", {})
        for package in overrides.get("packages", []):
            versions.setdefault(package["name"], str(package.get("version", "")))
        for node in overrides.get("nodes", []):
            nodes[node["name"]] = node
        for entry in overrides.get("nodeOverrides", []):
            replaced[entry["replace"]] = [w["name"] for w in entry.get("with", [])]

    kinds: dict[str, str] = {}
    packages: dict[str, Path | None] = {}
    for name, node in nodes.items():
        interface = str(node.get("interface", ""))
        package = interface.rsplit(".", 1)[0]
        if interface in PARAMETER_TYPES:
            kinds[name] = "parameter"
        elif package == CAMERA_PACKAGE:
            kinds[name] = "camera"
        elif package == HDMI_PACKAGE:
            kinds[name] = "output"
        else:
            folder = _package_dir(app_dir, package, versions) if "::" in package else None
            packages[name] = folder
            description = _read_json(folder / "package.json", problems) if folder else {}
            wanted = interface.rsplit(".", 1)[-1]
            found = [i for i in description.get("nodePackage", {}).get("interfaces", []) if i.get("name") == wanted]
            category = found[0].get("category") if found else None
            if category == "business_logic":
                kinds[name] = "code"
            elif category == "ml_model":
                kinds[name] = "model"
            elif category == "media_source" or any(name in names for names in replaced.values()):
                kinds[name] = "camera"
            else:
                problems.append(
                    f"node {name!r}: unknown node interface {interface!r} (not a camera, HDMI output, "
                    f"parameter, or a code/model package under {app_dir / 'packages'})"
                )

    camera_nodes: list[str] = []
    for name, kind in kinds.items():
        if kind == "camera" and not any(name in names for names in replaced.values()):
            camera_nodes += replaced.get(name, [name])  # an override's cameras come in place of the one replaced
    camera_nodes = list(dict.fromkeys(camera_nodes))
    translation = Translation(app_name)
    for name in camera_nodes:
        if name not in cameras:
            problems.append(f"camera node {name!r}: give its stream with --camera {name}=rtsp://...")
        else:
            translation.cameras[_NAME.sub("_", name)] = cameras[name]
    for name in sorted(set(cameras) - set(camera_nodes)):
        problems.append(f"--camera {name}: no camera node of that name (camera nodes: {camera_nodes or 'none'})")

    code_nodes = [name for name, kind in kinds.items() if kind == "code"]
    if len(code_nodes) != 1:
        problems.append(f"expected one code node (business_logic package), found {code_nodes or 'none'}")
        raise ImportError_(problems)
    code_node = code_nodes[0]
    code_package = packages[code_node]
    assert code_package is not None
    runtime = _read_json(code_package / "descriptor.json", problems).get("runtimeDescriptor", {})
    entry = runtime.get("entry", {})
    interpreter = "bash" if str(entry.get("path", "python3")).endswith("bash") else "python3"
    code = code_package / "src" if (code_package / "src").is_dir() else code_package

    section: dict[str, Any] = {
        "code": str(code.resolve()),
        "entry": str(entry.get("name", "/panorama/app.py")),
        "interpreter": interpreter,
        "cameras": [],
        "models": {},
        "parameters": {},
    }
    for edge in edges:
        producer, consumer = edge.get("producer", ""), edge.get("consumer", "")
        source, _, source_port = producer.partition(".")
        target, _, target_port = consumer.partition(".")
        if target == code_node and kinds.get(source) == "camera":
            section["video_in"] = target_port
            for name in replaced.get(source, [source]):
                if _NAME.sub("_", name) not in section["cameras"]:
                    section["cameras"].append(_NAME.sub("_", name))
        elif source == code_node and kinds.get(target) == "output":
            section["video_out"] = source_port
        elif target == code_node and kinds.get(source) == "parameter":
            node = nodes[source]
            value = params.get(source, node.get("value"))
            typed = _typed(node["interface"], value, f"parameter {source!r}", problems)
            section["parameters"][target_port] = {"type": node["interface"], "value": typed}
    for name in sorted(set(params) - {n for n, k in kinds.items() if k == "parameter"}):
        problems.append(f"--param {name}: no parameter node of that name")

    for name, kind in kinds.items():
        if kind != "model":
            continue
        if name in models:
            section["models"][name] = {"path": models[name]}
            continue
        folder = packages[name]
        descriptor = _read_json(folder / "descriptor.json", []) if folder else {}
        framework = str(descriptor.get("mlModelDescriptor", {}).get("framework", "unknown")).upper()
        hint = EXPORT_HINTS.get(framework, "export it to ONNX with its framework's exporter")
        problems.append(
            f"model node {name!r}: a {framework} model that SageMaker Neo compiled for the appliance; EdgeSight "
            f"runs ONNX (ONNX Runtime, TensorRT). Export the original to ONNX ({hint}) and give "
            f"--model {name}=FILE.onnx"
        )
    for name in sorted(set(models) - {n for n, k in kinds.items() if k == "model"}):
        problems.append(f"--model {name}: no model node of that name")
    if not section["cameras"] and not problems:
        problems.append(f"no camera node feeds the code node {code_node!r}")
    if problems:
        raise ImportError_(problems)
    translation.section = section
    return translation


def site_document(translation: Translation, base: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` (everything in it kept) with the app's cameras and ``apps.<app>`` added or replaced."""
    document = dict(base or {"site": {"name": translation.app}})
    cameras = dict(document.get("cameras") or {})
    for name, url in translation.cameras.items():
        cameras[name] = {**(cameras.get(name) or {}), "url": url}
    document["cameras"] = cameras
    apps = dict(document.get("apps") or {})
    apps[translation.app] = translation.section
    document["apps"] = apps
    return document


def _pairs(values: Sequence[str], flag: str, problems: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            problems.append(f"{flag} {value!r}: expected NAME=VALUE")
        else:
            pairs[name] = rest
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgesight panorama", description="Run AWS Panorama applications unchanged on EdgeSight."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )
    what = (
        "translate an AWS Panorama application project into a site file: its cameras and an apps.<app> section; "
        "what cannot be translated is reported (exit 2) and nothing is written"
    )
    run = commands.add_parser("import", help="an AWS Panorama application project -> a site file", description=what)
    run.add_argument("app_dir", type=Path, help="the application project (with graphs/ and packages/)")
    run.add_argument(
        "--camera", action="append", default=[], metavar="NODE=URL", help="the camera for a camera node (repeatable)"
    )
    run.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NODE=FILE.onnx",
        help="the ONNX file for a model node (repeatable)",
    )
    run.add_argument(
        "--param", action="append", default=[], metavar="NAME=VALUE", help="a value for an input parameter (repeatable)"
    )
    run.add_argument("--graph", type=Path, help="graphs/<app>/graph.json (default: the only one)")
    run.add_argument("--override", type=Path, help="a deployment override (nodeGraphOverrides)")
    run.add_argument("--base", type=Path, help="a site file to add the app to (everything in it is kept)")
    run.add_argument("--out", type=Path, required=True, help="the site file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problems: list[str] = []
    cameras = _pairs(args.camera, "--camera", problems)
    models = _pairs(args.model, "--model", problems)
    params = _pairs(args.param, "--param", problems)
    base = None
    try:
        if args.base is not None:
            base = yaml.safe_load(args.base.read_text()) or {}
        translation = translate(
            args.app_dir, cameras=cameras, models=models, params=params, graph=args.graph, override=args.override
        )
    except ImportError_ as exc:
        problems += exc.problems
    except OSError as exc:
        problems.append(f"{exc.filename}: {exc.strerror}")
    if problems:
        print("edgesight panorama import: cannot translate\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
    document = site_document(translation, base)
    from common.config import parse_config  # the result must be a site file EdgeSight accepts

    text = yaml.safe_dump(document, sort_keys=False)
    try:
        parse_config(text, str(args.out))
    except ConfigError as exc:
        print("edgesight panorama import: the result does not validate\n" + str(exc), file=sys.stderr)
        return 2
    args.out.write_text(text)
    app = translation.section
    print(
        f"{args.out}: app {translation.app!r} with cameras {app['cameras']}, models {sorted(app['models'])}, "
        f"parameters {sorted(app['parameters'])}; check it with `edgesight config check {args.out}`"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

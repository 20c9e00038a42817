"""``edgesight panorama import``: an AWS Panorama application project -> an EdgeSight site file.

Reads ``graphs/<app>/graph.json`` (nodes, edges, packages, ``networkRoutingRules``), an optional
deployment override (``nodeGraphOverrides``: a camera node replaced by one or more cameras, a
parameter node by another parameter node, its own ``networkRoutingRules``) and each package's
``package.json`` (the code node's ``network.inboundPorts``) and ``descriptor.json``; or, for a
Lambda-style (v0) app without ``graphs/``, the ``interface()`` of its ``panoramasdk.base`` class, read
with ``ast`` (never run). Its Dockerfile's ``pip install`` lines and its ``requirements.txt`` become
``requirements``. Writes the cameras and an ``apps.<app>`` section that the apps service runs, then
builds the app's own environment where it has requirements:

    edgesight panorama import APP_DIR --camera camera_node=rtsp://... --model model_node=model.onnx \\
        [--param detection_threshold=0.5] [--graph graphs/x/graph.json] [--override overrides.json] \\
        [--base site.yaml] [--no-env] --out site.yaml
    edgesight panorama env --config site.yaml [APP ...]

Whatever cannot be translated is reported, every problem at once, and nothing is written (exit 2).
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from common.errors import ConfigError
from common.urls import redact_url
from services.apps import environments

__all__ = ["ImportError_", "Translation", "translate"]

PARAMETER_TYPES = ("float32", "int32", "string", "boolean")
# a v0 interface()'s parameter types -> a parameter node's; "model" is the model's name, a string
V0_TYPES = {"float": "float32", "int": "int32", "uint32": "int32", "byte": "int32", "bool": "boolean"}
V0_TYPES |= {"string": "string", "model": "string"}
V0_DEFAULT_ONLY = ("rect",)  # no site-file type holds (x0, y0, x1, y1): the app keeps interface()'s default
CAMERA_PACKAGE = "panorama::abstract_rtsp_media_source"
HDMI_PACKAGE = "panorama::hdmi_data_sink"
EXPORT_HINTS = {
    "PYTORCH": "torch.onnx.export(model, example_input, 'model.onnx')",
    "TENSORFLOW": "python -m tf2onnx.convert --saved-model DIR --output model.onnx",
    "KERAS": "python -m tf2onnx.convert --keras model.h5 --output model.onnx",
    "MXNET": "mxnet.onnx.export_model(symbol, params, [input_shape], onnx_file_path='model.onnx')",
    "ONNX": "the .onnx file you gave SageMaker Neo",
}
NEO = "SageMaker Neo compiled for the appliance; EdgeSight runs ONNX (ONNX Runtime, TensorRT)"
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
    notes: list[str] = field(default_factory=list)  # worth saying, not wrong


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


def _parameter(kind: str, name: str, default: Any, params: dict[str, str], problems: list[str], *aliases: str) -> Any:
    """A parameter's value: ``--param NAME=`` (or one of its ``aliases``) else ``default``, as ``kind``.
    ``--param NAME=`` with nothing after the ``=`` is an empty string, and only a string may be empty."""
    given = next((flag for flag in (name, *aliases) if flag in params), None)
    if given is None:
        if default is None:
            problems.append(f"parameter {name!r} ({kind}) has no value: give one with --param {name}=VALUE")
            return None
        return _typed(kind, default, f"parameter {name!r}", problems)
    if params[given] == "" and kind != "string":
        problems.append(f"--param {given}=: empty, but parameter {name!r} is a {kind}; give a value")
        return None
    return _typed(kind, params[given], f"parameter {name!r}", problems)


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


def _requirements(project: Path, package: Path, code: Path, problems: list[str]) -> list[str]:
    """The app's own packages: ``pip install`` lines of a Dockerfile in the project root or the code
    package (its build context), then ``requirements.txt`` of the code package (and of its ``src``)."""
    folders = list(dict.fromkeys([package, code, project]))
    lines: list[str] = []
    for folder in dict.fromkeys([project, package]):
        if (folder / "Dockerfile").is_file():
            context = [folder, *(other for other in folders if other != folder)]
            lines += environments.dockerfile_requirements(folder / "Dockerfile", context, code, problems)
    for folder in dict.fromkeys([package, code]):
        if (folder / "requirements.txt").is_file():
            lines += environments.requirements_file(folder / "requirements.txt", problems)
    return list(dict.fromkeys(lines))


# -- the v1 application graph ------------------------------------------------------------------------------


@dataclass
class _Graph:
    nodes: dict[str, dict[str, Any]]
    edges: list[dict[str, str]]
    versions: dict[str, str]
    replaced: dict[str, list[str]]  # a node of the graph -> the override's nodes in its place
    routes: list[tuple[str, dict[str, Any]]]  # (where, networkRoutingRule), the graph's then the override's


def _load_graph(graph: Path, override: Path | None, problems: list[str]) -> _Graph:
    node_graph = _read_json(graph, problems).get("nodeGraph", {})
    if problems:
        raise ImportError_(problems)
    loaded = _Graph(
        nodes={n["name"]: n for n in node_graph.get("nodes", []) if "name" in n},
        edges=list(node_graph.get("edges", [])),
        versions={p["name"]: str(p.get("version", "")) for p in node_graph.get("packages", []) if "name" in p},
        replaced={},
        routes=[(f"{graph}: networkRoutingRules", rule) for rule in node_graph.get("networkRoutingRules", [])],
    )
    if override is not None:
        overrides = _read_json(override, problems).get("nodeGraphOverrides", {})
        for package in overrides.get("packages", []):
            loaded.versions.setdefault(package["name"], str(package.get("version", "")))
        for node in overrides.get("nodes", []):
            loaded.nodes[node["name"]] = node
        for entry in overrides.get("nodeOverrides", []):
            loaded.replaced[entry["replace"]] = [w["name"] for w in entry.get("with", [])]
        loaded.routes += [(f"{override}: networkRoutingRules", r) for r in overrides.get("networkRoutingRules", [])]
    return loaded


def _classify(
    app_dir: Path, graph: _Graph, problems: list[str]
) -> tuple[dict[str, str], dict[str, Path | None], dict[str, dict[str, Any]]]:
    """Each node's kind (camera, output, parameter, code, model), each package node's folder, and each
    package node's interface from its package.json."""
    kinds: dict[str, str] = {}
    packages: dict[str, Path | None] = {}
    interfaces: dict[str, dict[str, Any]] = {}
    replacing = {name for names in graph.replaced.values() for name in names}
    for name, node in graph.nodes.items():
        interface = str(node.get("interface", ""))
        package = interface.rsplit(".", 1)[0]
        if interface in PARAMETER_TYPES:
            kinds[name] = "parameter"
        elif package == CAMERA_PACKAGE:
            kinds[name] = "camera"
        elif package == HDMI_PACKAGE:
            kinds[name] = "output"
        else:
            folder = _package_dir(app_dir, package, graph.versions) if "::" in package else None
            packages[name] = folder
            description = _read_json(folder / "package.json", problems) if folder else {}
            wanted = interface.rsplit(".", 1)[-1]
            found = [i for i in description.get("nodePackage", {}).get("interfaces", []) if i.get("name") == wanted]
            interfaces[name] = found[0] if found else {}
            category = interfaces[name].get("category")
            if category == "business_logic":
                kinds[name] = "code"
            elif category == "ml_model":
                kinds[name] = "model"
            elif category == "media_source" or name in replacing:
                kinds[name] = "camera"
            else:
                problems.append(
                    f"node {name!r}: unknown node interface {interface!r} (not a camera, HDMI output, "
                    f"parameter, or a code/model package under {app_dir / 'packages'})"
                )
    return kinds, packages, interfaces


def _graph_parameter(
    source: str, graph: _Graph, kinds: dict[str, str], params: dict[str, str], problems: list[str]
) -> dict[str, Any] | None:
    """The value a parameter node feeds: its own, or that of the override's parameter node that replaces
    it (with that node's type); ``--param`` may name either node."""
    name = source
    if source in graph.replaced:
        replacement = graph.replaced[source]
        if len(replacement) != 1 or kinds.get(replacement[0]) != "parameter":
            problems.append(
                f"nodeOverrides: parameter node {source!r} is replaced with {replacement}: expected one "
                "parameter node (one of the override's nodes, with an interface and a value)"
            )
            return None
        name = replacement[0]
    node = graph.nodes[name]
    aliases = (source,) if name != source else ()
    value = _parameter(node["interface"], name, node.get("value"), params, problems, *aliases)
    return {"type": node["interface"], "value": value}


def _ports(
    code_node: str, interface: dict[str, Any], graph: _Graph, problems: list[str], notes: list[str]
) -> list[dict[str, Any]]:
    """``networkRoutingRules`` (graph.json's, then the override's, which win for the same container port)
    checked against the code package's ``network.inboundPorts`` -> ``apps.<app>.ports``."""
    listening: set[int] = set()
    for entry in (interface.get("network") or {}).get("inboundPorts", []):
        if isinstance(entry.get("port"), int):
            listening.add(entry["port"])
        else:
            problems.append(f"{code_node!r}: package.json network.inboundPorts: {entry!r} has no port number")
    routes: dict[int, int] = {}
    for where, rule in graph.routes:
        container, host = rule.get("containerPort"), rule.get("hostPort")
        if not isinstance(container, int) or not isinstance(host, int):
            problems.append(f"{where}: {rule!r}: expected a containerPort and a hostPort number")
        elif rule.get("node") != code_node:
            problems.append(f"{where}: node {rule.get('node')!r}: only the code node {code_node!r} serves ports")
        elif container not in listening:
            problems.append(
                f"{where}: containerPort {container} is not among the code package's network.inboundPorts "
                f"({sorted(listening) or 'none'})"
            )
        else:
            routes[container] = host
    hosts = list(routes.values())
    for host in sorted({h for h in hosts if hosts.count(h) > 1}):
        problems.append(f"networkRoutingRules: host port {host} is mapped to more than one container port")
    for port in sorted(listening - set(routes)):
        notes.append(f"{code_node!r} listens on port {port} (inboundPorts), but no networkRoutingRules maps a host "
                     "port to it: it is reachable only from inside the app")  # fmt: skip
    if routes:
        opened = ", ".join(f"host {host} -> app {container}" for container, host in routes.items())
        notes.append(f"ports opened on this box: {opened} (tcp); no authentication is added: take apps.<app>.ports "
                     "out to keep them closed")  # fmt: skip
    return [{"host_port": host, "app_port": container, "protocol": "tcp"} for container, host in routes.items()]


def _model_problem(name: str, framework: str | None, flag: str) -> str:
    hint = EXPORT_HINTS.get(framework or "", "export it to ONNX with its framework's exporter")
    what = f"a {framework} model" if framework else "a model"
    return f"{name}: {what} that {NEO}. Export the original to ONNX ({hint}) and give --model {flag}"


def _translate_graph(
    app_dir: Path,
    graph_path: Path,
    override: Path | None,
    cameras: dict[str, str],
    models: dict[str, str],
    params: dict[str, str],
) -> Translation:
    problems: list[str] = []
    graph = _load_graph(graph_path, override, problems)
    app_name = _NAME.sub("_", graph_path.parent.name)[:64] or "app"
    kinds, packages, interfaces = _classify(app_dir, graph, problems)
    replacing = {name for names in graph.replaced.values() for name in names}

    camera_nodes: list[str] = []
    for name, kind in kinds.items():
        if kind == "camera" and name not in replacing:
            camera_nodes += graph.replaced.get(name, [name])  # an override's cameras come in place of the one replaced
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
    for edge in graph.edges:
        producer, consumer = edge.get("producer", ""), edge.get("consumer", "")
        source, _, source_port = producer.partition(".")
        target, _, target_port = consumer.partition(".")
        if target == code_node and kinds.get(source) == "camera":
            section["video_in"] = target_port
            for name in graph.replaced.get(source, [source]):
                if _NAME.sub("_", name) not in section["cameras"]:
                    section["cameras"].append(_NAME.sub("_", name))
        elif source == code_node and kinds.get(target) == "output":
            section["video_out"] = source_port
        elif target == code_node and kinds.get(source) == "parameter":
            value = _graph_parameter(source, graph, kinds, params, problems)
            if value is not None:
                section["parameters"][target_port] = value
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
        problems.append(_model_problem(f"model node {name!r}", framework, f"{name}=FILE.onnx"))
    for name in sorted(set(models) - {n for n, k in kinds.items() if k == "model"}):
        problems.append(f"--model {name}: no model node of that name")
    ports = _ports(code_node, interfaces.get(code_node, {}), graph, problems, translation.notes)
    if ports:
        section["network"] = "own"
        section["ports"] = ports
    requirements = _requirements(app_dir, code_package, code, problems)
    if requirements:
        section["requirements"] = requirements
    if not section["cameras"] and not problems:
        problems.append(f"no camera node feeds the code node {code_node!r}")
    if problems:
        raise ImportError_(problems)
    translation.section = section
    return translation


# -- a v0 (Lambda-style) app: a panoramasdk.base class and its interface() ---------------------------------


class _NotLiteral(ValueError):
    pass


def _literal(node: ast.expr, constants: dict[str, Any]) -> Any:
    """A literal expression's value (tuples as lists); a module constant's name stands for its value."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_literal(element, constants) for element in node.elts]
    if isinstance(node, ast.Dict) and None not in node.keys:  # not {**other}
        pairs = zip(node.keys, node.values, strict=True)
        return {_literal(k, constants): _literal(v, constants) for k, v in pairs if k is not None}
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        operand = _literal(node.operand, constants)
        if isinstance(operand, (int, float)) and not isinstance(operand, bool):
            return -operand if isinstance(node.op, ast.USub) else operand
    raise _NotLiteral(f"line {node.lineno}: {ast.unparse(node)} is not a literal")


def _constants(tree: ast.Module) -> dict[str, Any]:
    """Module-level ``NAME = <literal>`` assignments, as they stand once the module has run."""
    constants: dict[str, Any] = {}
    for statement in tree.body:
        targets: list[ast.expr] = []
        value: ast.expr | None = None
        if isinstance(statement, ast.Assign):
            targets, value = statement.targets, statement.value
        elif isinstance(statement, ast.AnnAssign):
            targets, value = [statement.target], statement.value
        for target in targets:
            if isinstance(target, ast.Name):
                try:
                    constants[target.id] = _literal(value, constants) if value is not None else None
                except _NotLiteral:
                    constants.pop(target.id, None)
    return constants


def _is_base(node: ast.expr, modules: set[str], names: set[str]) -> bool:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
        return node.value.id in modules and node.attr == "base"
    return isinstance(node, ast.Name) and node.id in names


def _returns(function: ast.FunctionDef) -> list[ast.Return]:
    """The return statements of ``function`` itself (not of functions or classes inside it)."""
    found: list[ast.Return] = []
    pending: list[ast.AST] = list(function.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Return):
            found.append(node)
        elif not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            pending += ast.iter_child_nodes(node)
    return found


def _v0_interface(path: Path, problems: list[str]) -> dict[str, Any] | None:
    """The ``interface()`` of a ``panoramasdk.base`` subclass in ``path``, read without running it; None
    where the file holds no such class."""
    try:
        source = path.read_text()
        if "panoramasdk" not in source:
            return None
        tree = ast.parse(source, filename=str(path))
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError) as exc:
        problems.append(f"{path}: not readable Python ({exc})")
        return None
    modules, names = {"panoramasdk"}, set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            modules |= {alias.asname or alias.name for alias in statement.names if alias.name == "panoramasdk"}
        elif isinstance(statement, ast.ImportFrom) and statement.module == "panoramasdk":
            names |= {alias.asname or alias.name for alias in statement.names if alias.name == "base"}
    for cls in tree.body:
        if not isinstance(cls, ast.ClassDef) or not any(_is_base(b, modules, names) for b in cls.bases):
            continue
        where = f"{path}: class {cls.name}"
        methods = [f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "interface"]
        returns = _returns(methods[0]) if methods else []
        if len(returns) != 1 or returns[0].value is None:
            problems.append(f"{where}: expected an interface() method that returns a dict, in one return statement")
            return {}
        try:
            interface = _literal(returns[0].value, _constants(tree))
        except _NotLiteral as exc:
            problems.append(f"{where}.interface(): {exc}; EdgeSight reads it without running the app's code")
            return {}
        if not isinstance(interface, dict):
            problems.append(f"{where}.interface(): expected a dict of parameters, inputs and outputs")
            return {}
        return interface
    return None


def _v0_app(app_dir: Path, problems: list[str]) -> tuple[Path, dict[str, Any]] | None:
    """The one Python file of ``app_dir`` (or ``app_dir`` itself, a file) with a ``panoramasdk.base``
    class, and its interface; None where there is none."""
    files = [app_dir] if app_dir.is_file() else sorted(app_dir.glob("*.py"))
    unreadable: list[str] = []  # said only where no app is found: a helper module may be Python 2
    found = []
    for path in files:
        readable: list[str] = []
        interface = _v0_interface(path, readable)
        if interface is not None:
            found.append((path, interface))
            problems += readable
        else:
            unreadable += readable
    if len(found) > 1:
        problems.append(f"{app_dir}: more than one panoramasdk.base app: {[str(path) for path, _ in found]}")
    if not found:
        problems += unreadable
    return found[0] if found else None


def _entries(interface: dict[str, Any], key: str, size: int, where: str, problems: list[str]) -> list[list[Any]]:
    entries = interface.get(key, [])
    good = [e for e in entries if isinstance(e, list) and len(e) >= size and all(isinstance(v, str) for v in e[:2])]
    for entry in entries:
        if not any(entry is g for g in good):
            problems.append(f"{where}: {key}: {entry!r}: expected a tuple (type, name, description, ...)")
    return good


def _translate_v0(
    path: Path, interface: dict[str, Any], cameras: dict[str, str], models: dict[str, str], params: dict[str, str]
) -> Translation:
    problems: list[str] = []
    folder = path.parent
    where = f"{path}: interface()"
    translation = Translation(_NAME.sub("_", folder.resolve().name)[:64] or "app")
    translation.cameras = {_NAME.sub("_", name): url for name, url in cameras.items()}
    if not cameras:
        problems.append("a v0 app has no camera nodes: give its cameras with --camera NAME=rtsp://... (repeatable; "
                        "video_in gets them in this order)")  # fmt: skip
    section: dict[str, Any] = {
        "code": str(folder.resolve()),
        "entry": f"/panorama/{path.name}",
        "interpreter": "python3",
        "cameras": list(translation.cameras),
        "models": {},
        "parameters": {},
    }
    media_in = [e[1] for e in _entries(interface, "inputs", 2, where, problems) if e[0].startswith("media")]
    media_out = [e[1] for e in _entries(interface, "outputs", 2, where, problems) if e[0].startswith("media")]
    if not media_in:
        problems.append(f"{where}: no media input (('media[]', 'video_in', ...)) to give the cameras to")
    else:
        section["video_in"] = media_in[0]
    if media_out:
        section["video_out"] = media_out[0]
    names = set()
    for kind, name, *rest in _entries(interface, "parameters", 3, where, problems):
        names.add(name)
        if kind in V0_DEFAULT_ONLY and name not in params:
            translation.notes.append(
                f"parameter {name!r} ({kind}) keeps interface()'s default: a site file has no {kind}"
            )
            continue
        if kind not in V0_TYPES:
            problems.append(f"{where}: parameter {name!r}: type {kind!r} has no EdgeSight counterpart "
                            f"({', '.join(V0_TYPES)})")  # fmt: skip
            continue
        value = _parameter(V0_TYPES[kind], name, rest[1] if len(rest) > 1 else None, params, problems)
        section["parameters"][name] = {"type": V0_TYPES[kind], "value": value}
        if kind == "model" and value is not None:
            if value in models:
                section["models"][value] = {"path": models[value]}
            else:
                problems.append(_model_problem(f"model parameter {name!r} ({value!r})", None, f"{value}=FILE.onnx"))
    for name in sorted(set(params) - names):
        problems.append(f"--param {name}: no parameter of that name in {where}")
    for name in sorted(set(models) - set(section["models"])):
        problems.append(f"--model {name}: no model parameter has that value (the name the app opens)")
    requirements = _requirements(folder, folder, folder, problems)
    if requirements:
        section["requirements"] = requirements
    if problems:
        raise ImportError_(problems)
    translation.section = section
    return translation


def translate(
    app_dir: Path,
    *,
    cameras: dict[str, str],
    models: dict[str, str],
    params: dict[str, str],
    graph: Path | None = None,
    override: Path | None = None,
) -> Translation:
    """An application project (or a v0 app's folder or file) -> the cameras and ``apps.<app>`` section;
    ImportError_ with every problem found where it cannot be translated."""
    if graph is None:
        graphs = sorted(app_dir.glob("graphs/*/graph.json")) if app_dir.is_dir() else []
        problems: list[str] = []
        found = None if graphs else _v0_app(app_dir, problems)
        if found is not None:
            if override is not None:
                problems.append(f"--override {override}: a v0 app has no graph to override")
            if problems:
                raise ImportError_(problems)
            return _translate_v0(*found, cameras, models, params)
        if len(graphs) != 1:
            where = ", ".join(str(g) for g in graphs) or "none"
            v0 = "or a v0 app: a .py file with a panoramasdk.base class"
            problems.insert(0, f"{app_dir}: expected one graphs/<app>/graph.json ({v0}), found {where}; use --graph")
            raise ImportError_(problems)
        graph = graphs[0]
    elif not graph.is_absolute() and not graph.exists():
        graph = app_dir / graph
    return _translate_graph(app_dir, graph, override, cameras, models, params)


def site_document(translation: Translation, base: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` (everything in it kept) with the app's cameras and ``apps.<app>`` added or replaced.

    ``--camera NODE=@name`` takes the base's camera ``name``; a camera node whose name the base already
    has with another URL is refused (most projects call theirs ``camera_node``: a second app must not
    move the first one's camera)."""
    document = dict(base or {"site": {"name": translation.app}})
    cameras = dict(document.get("cameras") or {})
    problems = []
    for name, url in translation.cameras.items():
        existing = cameras.get(name) or {}
        if url.startswith("@"):
            if url[1:] not in cameras:
                problems.append(
                    f"--camera {name}={url}: the base site file has no camera {url[1:]!r} ({sorted(cameras)})"
                )
            translation.section["cameras"] = [url[1:] if c == name else c for c in translation.section["cameras"]]
        elif existing.get("url", url) != url:
            problems.append(
                f"--camera {name}=...: the base site file has a camera {name!r} with another URL "
                f"({redact_url(str(existing['url']))}); give --camera {name}=@{name} to share it, or "
                f"--camera {name}=@OTHER for another camera of the site"
            )
        else:
            cameras[name] = {**existing, "url": url}
    if problems:
        raise ImportError_(problems)
    document["cameras"] = cameras
    apps = dict(document.get("apps") or {})
    apps[translation.app] = translation.section
    document["apps"] = apps
    return document


def _pairs(values: Sequence[str], flag: str, problems: list[str], *, empty: bool = False) -> dict[str, str]:
    """``NAME=VALUE`` arguments as a dict, in the order given; ``empty``: ``NAME=`` is allowed (an empty
    value)."""
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not (rest or empty):
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
        "translate an AWS Panorama application project (or a v0 app: a folder with a panoramasdk.base class) "
        "into a site file: its cameras and an apps.<app> section, then build the app's own environment where "
        "it has requirements; what cannot be translated is reported (exit 2) and nothing is written"
    )
    run = commands.add_parser("import", help="an AWS Panorama application project -> a site file", description=what)
    run.add_argument("app_dir", type=Path, help="the application project (with graphs/ and packages/), or a v0 app")
    run.add_argument(
        "--camera",
        action="append",
        default=[],
        metavar="NODE=URL",
        help="the camera for a camera node (repeatable); a v0 app takes any names, in the order given",
    )
    run.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NODE=FILE.onnx",
        help="the ONNX file for a model node, or for a v0 app's model parameter's value (repeatable)",
    )
    run.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a value for an input parameter (repeatable); NAME= sets a string parameter to an empty string",
    )
    run.add_argument("--graph", type=Path, help="graphs/<app>/graph.json (default: the only one)")
    run.add_argument("--override", type=Path, help="a deployment override (nodeGraphOverrides)")
    run.add_argument("--base", type=Path, help="a site file to add the app to (everything in it is kept)")
    run.add_argument("--out", type=Path, required=True, help="the site file to write")
    run.add_argument(
        "--no-env", action="store_true", help="do not build the app's own environment now (edgesight panorama env)"
    )
    environments.add_command(commands)
    return parser


def _build_after_import(out: Path, app: str) -> int:
    from common.config import load_config  # the state_dir, as the written site file says

    config = load_config(str(out))
    status = environments.build_environments(config, [app])
    if status:
        print(f"{out} is written; build the app's environment again with "
              f"`edgesight panorama env --config {out} {app}`", file=sys.stderr)  # fmt: skip
    return status


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "env":
        return environments.run_command(args)
    problems: list[str] = []
    cameras = _pairs(args.camera, "--camera", problems)
    models = {  # a file here is meant as a file here, not a name on the asset search path
        node: str(Path(value).resolve()) if Path(value).is_file() else value
        for node, value in _pairs(args.model, "--model", problems).items()
    }
    params = _pairs(args.param, "--param", problems, empty=True)
    base = None
    try:
        if args.base is not None:
            base = yaml.safe_load(args.base.read_text()) or {}
        translation = translate(
            args.app_dir, cameras=cameras, models=models, params=params, graph=args.graph, override=args.override
        )
        document = site_document(translation, base)
    except ImportError_ as exc:
        problems += exc.problems
    except OSError as exc:
        problems.append(f"{exc.filename}: {exc.strerror}")
    if problems:
        print("edgesight panorama import: cannot translate\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2
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
        f"parameters {sorted(app['parameters'])}, {len(app.get('requirements', []))} requirement(s), "
        f"ports {[p['host_port'] for p in app.get('ports', [])]}; check it with `edgesight config check {args.out}`"
    )
    for note in translation.notes:
        print(f"  note: {note}")
    if app.get("requirements"):
        if args.no_env:
            build = f"edgesight panorama env --config {args.out} {translation.app}"
            print(f"  its own environment is not built yet: build it with `{build}`")
            return 0
        return _build_after_import(args.out, translation.app)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A v1 Panorama application: its graph (``graphs/<app>/graph.json``), the deployment override and
the packages the graph names, translated into the app's cameras and ``apps.<app>`` section.

The graph's nodes are classified by their interface (a camera, the HDMI output, a parameter, or a
package of ``packages/``: the one code node and its model nodes); its edges say which camera feeds
``video_in``, which parameter feeds which port and where ``video_out`` goes. An override
(``nodeGraphOverrides``) may replace a camera node with one or more cameras, a parameter node with
another parameter node, and add ``networkRoutingRules``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.apps.panorama.translation import (
    NotTranslatable,
    Translation,
    app_name,
    model_problem,
    parameter,
    project_requirements,
    safe_name,
)

__all__ = ["translate_graph"]

PARAMETER_TYPES = ("float32", "int32", "string", "boolean")
CAMERA_PACKAGE = "panorama::abstract_rtsp_media_source"
HDMI_PACKAGE = "panorama::hdmi_data_sink"


def _read_json(path: Path, problems: list[str]) -> dict[str, Any]:
    """A JSON object from ``path``; an empty one (and a problem) where there is none."""
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
        raise NotTranslatable(problems)
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
    value = parameter(node["interface"], name, node.get("value"), params, problems, *aliases)
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


def translate_graph(
    app_dir: Path,
    graph_path: Path,
    override: Path | None,
    cameras: dict[str, str],
    models: dict[str, str],
    params: dict[str, str],
) -> Translation:
    """The application of ``graph_path`` (with ``override``) and the cameras, model files and parameter
    values given for its nodes -> its translation; NotTranslatable with every problem found."""
    problems: list[str] = []
    graph = _load_graph(graph_path, override, problems)
    kinds, packages, interfaces = _classify(app_dir, graph, problems)
    translation = Translation(app_name(graph_path.parent.name))
    translation.cameras = _cameras(graph, kinds, cameras, problems)
    code_nodes = [name for name, kind in kinds.items() if kind == "code"]
    if len(code_nodes) != 1:
        problems.append(f"expected one code node (business_logic package), found {code_nodes or 'none'}")
        raise NotTranslatable(problems)
    code_node = code_nodes[0]
    code_package = packages[code_node]
    assert code_package is not None
    section, code = _code_section(code_package, problems)
    _connect(section, graph, kinds, code_node, params, problems)
    section["models"] = _models(kinds, packages, models, problems)
    ports = _ports(code_node, interfaces.get(code_node, {}), graph, problems, translation.notes)
    if ports:
        section["network"] = "own"
        section["ports"] = ports
    requirements = project_requirements(app_dir, code_package, code, problems)
    if requirements:
        section["requirements"] = requirements
    if not section["cameras"] and not problems:
        problems.append(f"no camera node feeds the code node {code_node!r}")
    if problems:
        raise NotTranslatable(problems)
    translation.section = section
    return translation


def _cameras(graph: _Graph, kinds: dict[str, str], cameras: dict[str, str], problems: list[str]) -> dict[str, str]:
    """The site's cameras (name -> URL): one per camera node, an override's cameras in place of the one
    they replace, each URL given with ``--camera NODE=URL``."""
    replacing = {name for names in graph.replaced.values() for name in names}
    camera_nodes: list[str] = []
    for name, kind in kinds.items():
        if kind == "camera" and name not in replacing:
            camera_nodes += graph.replaced.get(name, [name])  # an override's cameras come in place of the one replaced
    camera_nodes = list(dict.fromkeys(camera_nodes))
    found: dict[str, str] = {}
    for name in camera_nodes:
        if name not in cameras:
            problems.append(f"camera node {name!r}: give its stream with --camera {name}=rtsp://...")
        else:
            found[safe_name(name)] = cameras[name]
    for name in sorted(set(cameras) - set(camera_nodes)):
        problems.append(f"--camera {name}: no camera node of that name (camera nodes: {camera_nodes or 'none'})")
    return found


def _code_section(code_package: Path, problems: list[str]) -> tuple[dict[str, Any], Path]:
    """The ``apps.<app>`` section as the code package's ``descriptor.json`` starts it, and the code's folder."""
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
    return section, code


def _connect(
    section: dict[str, Any],
    graph: _Graph,
    kinds: dict[str, str],
    code_node: str,
    params: dict[str, str],
    problems: list[str],
) -> None:
    """The graph's edges into the code node's ports: its cameras on ``video_in``, its output on
    ``video_out``, each parameter node's value on its port."""
    for edge in graph.edges:
        producer, consumer = edge.get("producer", ""), edge.get("consumer", "")
        source, _, source_port = producer.partition(".")
        target, _, target_port = consumer.partition(".")
        if target == code_node and kinds.get(source) == "camera":
            section["video_in"] = target_port
            for name in graph.replaced.get(source, [source]):
                if safe_name(name) not in section["cameras"]:
                    section["cameras"].append(safe_name(name))
        elif source == code_node and kinds.get(target) == "output":
            section["video_out"] = source_port
        elif target == code_node and kinds.get(source) == "parameter":
            value = _graph_parameter(source, graph, kinds, params, problems)
            if value is not None:
                section["parameters"][target_port] = value
    for name in sorted(set(params) - {n for n, k in kinds.items() if k == "parameter"}):
        problems.append(f"--param {name}: no parameter node of that name")


def _models(
    kinds: dict[str, str], packages: dict[str, Path | None], models: dict[str, str], problems: list[str]
) -> dict[str, Any]:
    """``apps.<app>.models``: each model node's ONNX file, given with ``--model NODE=FILE.onnx`` (its
    package holds a model compiled for the appliance, which EdgeSight cannot run)."""
    found: dict[str, Any] = {}
    for name, kind in kinds.items():
        if kind != "model":
            continue
        if name in models:
            found[name] = {"path": models[name]}
            continue
        folder = packages[name]
        descriptor = _read_json(folder / "descriptor.json", []) if folder else {}
        framework = str(descriptor.get("mlModelDescriptor", {}).get("framework", "unknown")).upper()
        problems.append(model_problem(f"model node {name!r}", framework, f"{name}=FILE.onnx"))
    for name in sorted(set(models) - {n for n, k in kinds.items() if k == "model"}):
        problems.append(f"--model {name}: no model node of that name")
    return found

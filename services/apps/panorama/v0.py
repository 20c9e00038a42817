"""A v0 (Lambda-style) Panorama app: a ``panoramasdk.base`` class whose ``interface()`` declares its
parameters, inputs and outputs, read with ``ast`` (never run) and translated into the app's
``apps.<app>`` section. Its cameras have no nodes: they are given by name with ``--camera``.
"""

from __future__ import annotations

import ast
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

__all__ = ["find_v0_app", "translate_v0"]

# a v0 interface()'s parameter types -> a parameter node's; "model" is the model's name, a string
V0_TYPES = {"float": "float32", "int": "int32", "uint32": "int32", "byte": "int32", "bool": "boolean"}
V0_TYPES |= {"string": "string", "model": "string"}
V0_DEFAULT_ONLY = ("rect",)  # no site-file type holds (x0, y0, x1, y1): the app keeps interface()'s default


# -- finding the app and reading its interface(), without running it ------------------------------


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


def find_v0_app(app_dir: Path, problems: list[str]) -> tuple[Path, dict[str, Any]] | None:
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
    """``interface[key]``'s tuples of at least ``size`` items led by two strings (type, name); a problem each other."""
    entries = interface.get(key, [])
    good = [e for e in entries if isinstance(e, list) and len(e) >= size and all(isinstance(v, str) for v in e[:2])]
    for entry in entries:
        if not any(entry is g for g in good):
            problems.append(f"{where}: {key}: {entry!r}: expected a tuple (type, name, description, ...)")
    return good


# -- the translation --------------------------------------------------------------------------------


def translate_v0(
    path: Path, interface: dict[str, Any], cameras: dict[str, str], models: dict[str, str], params: dict[str, str]
) -> Translation:
    """The v0 app in ``path`` (its ``interface()`` read by :func:`find_v0_app`) and the cameras, model
    files and parameter values given for it -> its translation; NotTranslatable with every problem found."""
    problems: list[str] = []
    folder = path.parent
    where = f"{path}: interface()"
    translation = Translation(app_name(folder.resolve().name))
    translation.cameras = {safe_name(name): url for name, url in cameras.items()}
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
    _media(section, interface, where, problems)
    names = _parameters(section, interface, where, params, models, problems, translation.notes)
    for name in sorted(set(params) - names):
        problems.append(f"--param {name}: no parameter of that name in {where}")
    for name in sorted(set(models) - set(section["models"])):
        problems.append(f"--model {name}: no model parameter has that value (the name the app opens)")
    requirements = project_requirements(folder, folder, folder, problems)
    if requirements:
        section["requirements"] = requirements
    if problems:
        raise NotTranslatable(problems)
    translation.section = section
    return translation


def _media(section: dict[str, Any], interface: dict[str, Any], where: str, problems: list[str]) -> None:
    """``video_in`` and ``video_out``: the first media input and output of ``interface()``."""
    media_in = [e[1] for e in _entries(interface, "inputs", 2, where, problems) if e[0].startswith("media")]
    media_out = [e[1] for e in _entries(interface, "outputs", 2, where, problems) if e[0].startswith("media")]
    if not media_in:
        problems.append(f"{where}: no media input (('media[]', 'video_in', ...)) to give the cameras to")
    else:
        section["video_in"] = media_in[0]
    if media_out:
        section["video_out"] = media_out[0]


def _parameters(
    section: dict[str, Any],
    interface: dict[str, Any],
    where: str,
    params: dict[str, str],
    models: dict[str, str],
    problems: list[str],
    notes: list[str],
) -> set[str]:
    """``interface()``'s parameters into ``section``, a model parameter's model file too; the names of
    all of them."""
    names = set()
    for kind, name, *rest in _entries(interface, "parameters", 3, where, problems):
        names.add(name)
        if kind in V0_DEFAULT_ONLY and name not in params:
            notes.append(f"parameter {name!r} ({kind}) keeps interface()'s default: a site file has no {kind}")
            continue
        if kind not in V0_TYPES:
            problems.append(f"{where}: parameter {name!r}: type {kind!r} has no EdgeSight counterpart "
                            f"({', '.join(V0_TYPES)})")  # fmt: skip
            continue
        value = parameter(V0_TYPES[kind], name, rest[1] if len(rest) > 1 else None, params, problems)
        section["parameters"][name] = {"type": V0_TYPES[kind], "value": value}
        if kind == "model" and value is not None:
            if value in models:
                section["models"][value] = {"path": models[value]}
            else:
                problems.append(model_problem(f"model parameter {name!r} ({value!r})", None, f"{value}=FILE.onnx"))
    return names

"""What both kinds of Panorama project translate into, and the pieces both translations share.

A ``Translation`` is the cameras and the ``apps.<app>`` section of a site file; ``NotTranslatable``
carries every problem found, so that a user fixes them all in one go. Values (parameters, names,
model files, requirements) are read the same way from a v1 graph (``graph.py``) and a v0 app's
``interface()`` (``v0.py``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import EdgeSightError
from services.apps.requirements import dockerfile_requirements, requirements_file

__all__ = [
    "NotTranslatable",
    "Translation",
    "app_name",
    "model_problem",
    "parameter",
    "project_requirements",
    "safe_name",
]

EXPORT_HINTS = {
    "PYTORCH": "torch.onnx.export(model, example_input, 'model.onnx')",
    "TENSORFLOW": "python -m tf2onnx.convert --saved-model DIR --output model.onnx",
    "KERAS": "python -m tf2onnx.convert --keras model.h5 --output model.onnx",
    "MXNET": "mxnet.onnx.export_model(symbol, params, [input_shape], onnx_file_path='model.onnx')",
    "ONNX": "the .onnx file you gave SageMaker Neo",
}
NEO = "SageMaker Neo compiled for the appliance; EdgeSight runs ONNX (ONNX Runtime, TensorRT)"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class NotTranslatable(EdgeSightError):
    """The project cannot be translated (or added to the base site file): ``problems`` holds every reason."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Translation:
    app: str
    cameras: dict[str, str] = field(default_factory=dict)  # name -> URL
    section: dict[str, Any] = field(default_factory=dict)  # apps.<app>
    notes: list[str] = field(default_factory=list)  # worth saying, not wrong


def safe_name(name: str) -> str:
    """A node's name as a site-file key: what a key may not hold becomes ``_``.

    >>> safe_name("camera node/1")
    'camera_node_1'
    """
    return _UNSAFE.sub("_", name)


def app_name(name: str) -> str:
    """An app's name from its folder's: a safe key of at most 64 characters, never empty.

    >>> app_name("people counter")
    'people_counter'
    >>> app_name("")
    'app'
    """
    return safe_name(name)[:64] or "app"


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


def parameter(kind: str, name: str, default: Any, params: dict[str, str], problems: list[str], *aliases: str) -> Any:
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


def project_requirements(project: Path, package: Path, code: Path, problems: list[str]) -> list[str]:
    """The app's own packages: ``pip install`` lines of a Dockerfile in the project root or the code
    package (its build context), then ``requirements.txt`` of the code package (and of its ``src``)."""
    folders = list(dict.fromkeys([package, code, project]))
    lines: list[str] = []
    for folder in dict.fromkeys([project, package]):
        if (folder / "Dockerfile").is_file():
            context = [folder, *(other for other in folders if other != folder)]
            lines += dockerfile_requirements(folder / "Dockerfile", context, code, problems)
    for folder in dict.fromkeys([package, code]):
        if (folder / "requirements.txt").is_file():
            lines += requirements_file(folder / "requirements.txt", problems)
    return list(dict.fromkeys(lines))


def model_problem(name: str, framework: str | None, flag: str) -> str:
    """Why a model (of ``framework``, where known) cannot come along, and how to export it to ONNX."""
    hint = EXPORT_HINTS.get(framework or "", "export it to ONNX with its framework's exporter")
    what = f"a {framework} model" if framework else "a model"
    return f"{name}: {what} that {NEO}. Export the original to ONNX ({hint}) and give --model {flag}"

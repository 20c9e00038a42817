"""The model manifest: everything needed to run a detection model besides its weights.

A manifest is a small YAML file beside the model (``people.yaml`` next to ``people.onnx``). For a
bare ``.onnx`` file one is suggested from the model itself (:func:`suggest_manifest`), the same
suggestion ``edgesight models inspect`` prints.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.assets import find_asset
from common.errors import EdgeSightError, ModelError
from common.models import ModelFile, refuse_external_data
from common.trust import MANIFEST, PACKAGE_SUFFIX, Package, TrustPolicy
from contracts.messages import LABEL_PATTERN
from services.inference.labels import TABLES

__all__ = [
    "ModelError",
    "ModelManifest",
    "ModelSpec",
    "load_model_spec",
    "onnx_metadata",
    "package_spec",
    "read_manifest",
    "suggest_manifest",
]

Decoder = Literal["yolox", "yolov8", "end2end"]
YOLOX_STRIDES = (8, 16, 32)


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=64)
    version: str = "1"
    file: str = Field(..., description="The .onnx (or TensorRT .engine) file, relative to the manifest.")
    decoder: Decoder = Field(
        ..., description="yolox: [B,N,5+C] raw grid; yolov8: [B,4+C,N] (also YOLO11); end2end: boxes, scores, classes"
    )
    input_size: tuple[int, int] | None = Field(None, description="(width, height); default: the model's input shape.")
    color: Literal["bgr", "rgb"] = "rgb"
    scale: float = Field(1 / 255, gt=0, description="Pixels are multiplied by this (1/255 maps to 0..1).")
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    letterbox: Literal["center", "top_left"] = Field("center", description="Where the resized frame sits.")
    pad_value: int = Field(114, ge=0, le=255)
    labels: list[str] | str | None = Field(
        None, description="A list, a table name (coco80), a text file (one per line), or null: the model's metadata."
    )
    score_threshold: float = Field(0.3, ge=0, le=1)
    nms_iou: float = Field(0.45, ge=0, le=1)
    classes: list[str] = Field(default_factory=list, description="Keep only these labels; empty keeps all.")


class ModelSpec:
    """A manifest resolved against its files: the model path, its digest and its label table."""

    def __init__(
        self,
        manifest: ModelManifest,
        model_path: Path,
        labels: list[str],
        source: str,
        package: Package | None = None,
    ) -> None:
        self.manifest = manifest
        self.model_path = model_path  # for a package: the package file
        self.labels = labels
        self.source = source  # the manifest file, the .onnx it was suggested from, or the package
        self.package = package
        self.content = package.members[manifest.file] if package is not None else None
        self.digest = hashlib.sha256(self.content or model_path.read_bytes()).hexdigest()

    @property
    def name(self) -> str:
        return self.manifest.name

    def file(self) -> ModelFile:
        """What a backend needs of this model."""
        if self.package is None:
            return ModelFile(self.model_path, self.name, self.digest, self.manifest.input_size)
        inside = self.model_path / self.manifest.file  # for messages only: the bytes never touch the disk
        return ModelFile(inside, self.name, self.digest, self.manifest.input_size, self.content)


Shapes = list[tuple[str, list[int | str]]]  # (tensor name, shape with names for dynamic dimensions)


def onnx_metadata(path: Path, content: bytes | None = None) -> tuple[Shapes, Shapes, dict[str, str]]:
    import onnxruntime

    if content is not None:
        refuse_external_data(content, str(path))
    try:
        model = content if content is not None else str(path)
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ONNX Runtime raises its own exception types for bad files
        raise ModelError(f"{path} is not a loadable ONNX model: {exc}") from None
    inputs = [(i.name, list(i.shape)) for i in session.get_inputs()]
    outputs = [(o.name, list(o.shape)) for o in session.get_outputs()]
    return inputs, outputs, dict(session.get_modelmeta().custom_metadata_map)


def metadata_labels(metadata: dict[str, str]) -> list[str] | None:
    """Ultralytics writes ``names`` as a Python dict literal: ``{0: 'person', 1: 'bicycle'}``."""
    text = metadata.get("names")
    if not text:
        return None
    try:
        names = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[i]) for i in sorted(names)]
    if isinstance(names, list):
        return [str(n) for n in names]
    return None


def suggest_manifest(path: Path) -> ModelManifest:
    """A manifest for a bare ONNX detection model, from its input and output shapes and metadata."""
    inputs, outputs, metadata = onnx_metadata(path)
    if len(inputs) != 1:
        raise ModelError(f"{path}: expected one image input, found {len(inputs)}: {inputs}")
    _, shape = inputs[0]
    if len(shape) != 4 or shape[1] != 3:
        raise ModelError(f"{path}: the input must be [batch, 3, height, width], found {shape}")
    size = (shape[3], shape[2]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
    name = path.stem.replace(" ", "_")[:64]
    has_names = metadata_labels(metadata) is not None  # then labels: null reads them from the model
    if len(outputs) >= 3:
        return ModelManifest(name=name, file=path.name, decoder="end2end", input_size=size)
    out_shape = outputs[0][1]
    if len(out_shape) != 3:
        raise ModelError(f"{path}: cannot tell the output format from {outputs}; write a manifest")
    anchors = _yolox_anchors(size) if size else None
    if anchors is not None and out_shape[1] == anchors and isinstance(out_shape[2], int):
        classes = out_shape[2] - 5
        return ModelManifest(
            name=name,
            file=path.name,
            decoder="yolox",
            input_size=size,
            color="bgr",
            scale=1.0,
            letterbox="top_left",
            labels=None if has_names or classes != 80 else "coco80",
        )
    if isinstance(out_shape[1], int) and out_shape[1] > 4:
        classes = out_shape[1] - 4
        labels = None if has_names or classes != 80 else "coco80"
        return ModelManifest(name=name, file=path.name, decoder="yolov8", input_size=size, labels=labels)
    raise ModelError(f"{path}: cannot tell the output format from {outputs}; write a manifest")


def _yolox_anchors(size: tuple[int, int]) -> int:
    width, height = size
    return sum((width // s) * (height // s) for s in YOLOX_STRIDES)


def read_manifest(path: Path, text: str | None = None) -> ModelManifest:
    """A manifest file (or its ``text``), validated; ModelError naming the file and each wrong key."""
    try:
        data = yaml.safe_load(path.read_text() if text is None else text)
    except yaml.YAMLError as exc:
        raise ModelError(f"{path}: not valid YAML: {exc}") from None
    try:
        return ModelManifest.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top)'}: {e['msg']}" for e in exc.errors())
        raise ModelError(f"{path}: {problems}") from None


def _labels(
    manifest: ModelManifest,
    base: Path,
    metadata: dict[str, str],
    classes: int | None,
    members: Mapping[str, bytes] | None = None,
) -> list[str]:
    labels = manifest.labels
    if isinstance(labels, list):
        table = labels
    elif isinstance(labels, str) and labels in TABLES:
        table = list(TABLES[labels])
    elif isinstance(labels, str) and members is not None:
        if labels not in members:
            raise ModelError(f"{base}: labels file {labels!r} is not in the package")
        table = [line.strip() for line in members[labels].decode().splitlines() if line.strip()]
    elif isinstance(labels, str):
        path = Path(labels) if Path(labels).is_absolute() else base / labels
        if not path.is_file():
            raise ModelError(f"labels file {path} does not exist")
        table = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        table = metadata_labels(metadata) or [f"class_{i}" for i in range(classes or 0)]
    if classes is not None and len(table) != classes:
        raise ModelError(f"model {manifest.name!r} has {classes} classes but {len(table)} labels")
    bad = [label for label in table if not re.match(LABEL_PATTERN, label)]
    if bad:  # a label travels in Detections and Events, whose contract refuses anything else
        raise ModelError(
            f"model {manifest.name!r}: label {bad[0][:80]!r} is not letters, digits, space, _ . - "
            f"(at most 64, see contracts/README.md); rename it in the labels list"
        )
    return table


def load_model_spec(
    reference: str | Path,
    asset_paths: tuple[Path, ...] = (),
    trust: TrustPolicy | None = None,
    *,
    allow_unsigned: bool = False,
    what: str = "the model",
) -> ModelSpec:
    """A signed package (.espkg), a manifest (.yaml) or a bare .onnx, found on the search path,
    checked under ``trust`` and against the model.

    Raises ModelError (PackageError for a refused package) naming what does not fit: a missing or
    corrupt file, an input size or class count that differs from the model's shapes.
    """
    trust = trust or TrustPolicy()
    try:
        path = find_asset(reference, asset_paths)
    except EdgeSightError as exc:
        raise ModelError(str(exc)) from None
    if path.suffix == PACKAGE_SUFFIX:
        return package_spec(trust.open(path), path)
    trust.check_plain(path, allow_unsigned=allow_unsigned, what=what)
    if path.suffix in (".yaml", ".yml", ".json"):
        manifest = read_manifest(path)
        model_path = path.parent / manifest.file
        if not model_path.is_file():
            raise ModelError(f"{path}: file {manifest.file!r} does not exist beside the manifest")
    else:
        model_path = path
        manifest = suggest_manifest(path)
    if model_path.suffix == ".engine":  # a serialized TensorRT engine: nothing to inspect without TensorRT
        return ModelSpec(manifest, model_path, _labels(manifest, path.parent, {}, None), str(path))
    inputs, outputs, metadata = onnx_metadata(model_path)
    _check_input(manifest, inputs, path)
    classes = _class_count(manifest, outputs, path)
    return ModelSpec(manifest, model_path, _labels(manifest, path.parent, metadata, classes), str(path))


def package_spec(package: Package, path: Path) -> ModelSpec:
    """A package's manifest checked against its own model bytes, as for files on disk: what the
    inference service loads, and what ``models install`` checks before a package becomes current."""
    manifest = read_manifest(path / MANIFEST, package.manifest)
    if (manifest.name, manifest.version) != (package.name, package.version):
        raise ModelError(
            f"{path}: the manifest says {manifest.name} {manifest.version}, the signed index {package.name} "
            f"{package.version}"
        )
    if manifest.file not in package.members:
        raise ModelError(f"{path}: the manifest's file {manifest.file!r} is not in the package")
    content = package.members[manifest.file]
    if manifest.file.endswith(".engine"):
        return ModelSpec(manifest, path, _labels(manifest, path, {}, None, package.members), str(path), package)
    inputs, outputs, metadata = onnx_metadata(path / manifest.file, content)
    _check_input(manifest, inputs, path)
    classes = _class_count(manifest, outputs, path)
    labels = _labels(manifest, path, metadata, classes, package.members)
    return ModelSpec(manifest, path, labels, str(path), package)


def _check_input(manifest: ModelManifest, inputs: Shapes, path: Path) -> None:
    if not inputs or len(inputs[0][1]) != 4:
        found = f"{inputs[0][0]} {inputs[0][1]}" if inputs else "none"
        raise ModelError(f"{path}: a detector takes one image input [batch, channels, height, width] (found: {found})")
    shape = inputs[0][1]
    static = isinstance(shape[2], int) and isinstance(shape[3], int)
    if manifest.input_size is not None and static and (shape[3], shape[2]) != tuple(manifest.input_size):
        raise ModelError(
            f"{path}: input_size {list(manifest.input_size)} (width, height) does not match the model's input "
            f"{inputs[0][0]} {shape}"
        )
    if manifest.input_size is None and not static:
        raise ModelError(f"{path}: the model's input {shape} has a dynamic size; set input_size in the manifest")


def _class_count(manifest: ModelManifest, outputs: Shapes, path: Path) -> int | None:
    shape = outputs[0][1]
    if manifest.decoder == "end2end":
        if len(outputs) < 3:
            raise ModelError(f"{path}: decoder end2end needs boxes, scores and classes outputs, found {outputs}")
        return None
    if len(shape) != 3:
        raise ModelError(f"{path}: decoder {manifest.decoder} needs a 3-dimensional output, found {outputs}")
    if manifest.decoder == "yolox":
        size = manifest.input_size or (int(shape[1]), 0)
        if isinstance(shape[1], int) and manifest.input_size and shape[1] != _yolox_anchors(manifest.input_size):
            raise ModelError(
                f"{path}: decoder yolox expects {_yolox_anchors(manifest.input_size)} anchors for input {list(size)}, "
                f"the model outputs {shape}"
            )
        return int(shape[2]) - 5 if isinstance(shape[2], int) else None
    channels, anchors = shape[1], shape[2]
    if not isinstance(channels, int) or channels <= 4 or (isinstance(anchors, int) and anchors < channels):
        raise ModelError(f"{path}: decoder yolov8 expects [batch, 4 + classes, anchors], the model outputs {shape}")
    return channels - 4

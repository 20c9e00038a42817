"""The model manifest: everything needed to run a detection model besides its weights.

A manifest is a small YAML file beside the model (``people.yaml`` next to ``people.onnx``), or the
``manifest.yaml`` of a signed package; :func:`read_manifest` is the one reader of both. For a bare
``.onnx`` file one is suggested from the model itself (:func:`suggest_manifest`), the same
suggestion ``edgesight models inspect`` prints.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import ModelError
from common.models.backend import refuse_external_data

__all__ = [
    "YOLOX_STRIDES",
    "Decoder",
    "ModelManifest",
    "Shapes",
    "metadata_labels",
    "onnx_metadata",
    "read_manifest",
    "suggest_manifest",
    "yolox_anchors",
]

Decoder = Literal["yolox", "yolov8", "end2end"]
YOLOX_STRIDES = (8, 16, 32)


# A model's input side in pixels: bounded, so a manifest cannot ask a backend for buffers of any size.
Side = Annotated[int, Field(ge=1, le=8192)]


class ModelManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., min_length=1, max_length=64)
    version: str = "1"
    file: str = Field(..., description="The .onnx (or TensorRT .engine) file, relative to the manifest.")
    decoder: Decoder = Field(
        ..., description="yolox: [B,N,5+C] raw grid; yolov8: [B,4+C,N] (also YOLO11); end2end: boxes, scores, classes"
    )
    input_size: tuple[Side, Side] | None = Field(None, description="(width, height); default: the model's input shape.")
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
    anchors = yolox_anchors(size) if size else None
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


def yolox_anchors(size: tuple[int, int]) -> int:
    width, height = size
    return sum((width // s) * (height // s) for s in YOLOX_STRIDES)

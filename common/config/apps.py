"""``apps:`` — AWS Panorama applications run unchanged by the apps service, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from common.config._types import Name, Section

__all__ = ["AppConfig", "AppModel", "AppParameter"]

ParameterType = Literal["float32", "int32", "string", "boolean"]


class AppModel(Section):
    """A model node of the application's graph, as an ONNX file EdgeSight's backends run."""

    path: str = Field(
        ...,
        min_length=1,
        description="An .onnx file, or a signed package (.espkg) holding one; found like models.*.path",
    )
    backend: Literal["onnxruntime", "tensorrt"] = "onnxruntime"
    allow_unsigned: bool = Field(False, description="With site.trusted_keys set: run this plain .onnx file anyway.")
    providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])


class AppParameter(Section):
    """A parameter node's value, fed to a port of the code node (``self.inputs.<port>.get()``)."""

    type: ParameterType
    value: bool | int | float | str

    @model_validator(mode="after")
    def _fits(self) -> AppParameter:
        fits = {
            "float32": isinstance(self.value, (int, float)) and not isinstance(self.value, bool),
            "int32": isinstance(self.value, int)
            and not isinstance(self.value, bool)
            and -(2**31) <= self.value < 2**31,
            "string": isinstance(self.value, str),
            "boolean": isinstance(self.value, bool),
        }[self.type]
        if not fits:
            raise ValueError(f"{self.value!r} is not a {self.type}")
        return self


class AppConfig(Section):
    """One Panorama application: its code package, the cameras on its ``video_in``, its model nodes
    and its parameters. ``/panorama`` is ``code``; logs and storage live under ``state_dir/apps/<name>``."""

    code: Path = Field(..., description="The code package's files: what the app sees as /panorama.")
    entry: str = Field("app.py", description="The entry point, relative to code (or /panorama/...).")
    interpreter: Literal["python3", "bash"] = Field("python3", description="descriptor.json's entry.path")
    cameras: list[Name] = Field(..., min_length=1, description="The cameras on video_in, in this order.")
    models: dict[str, AppModel] = Field(default_factory=dict, description="Model node name -> its ONNX file.")
    parameters: dict[str, AppParameter] = Field(default_factory=dict, description="Input port -> typed value.")
    video_in: str = Field("video_in", description="The code node's media input port.")
    video_out: str = Field("video_out", description="The code node's media output port (EdgeSight's HDMI).")
    hang_timeout_s: float = Field(
        60.0, gt=0, le=3600, description="An app that has not asked for frames this long is restarted."
    )
    enabled: bool = True

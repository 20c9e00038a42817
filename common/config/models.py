"""``models:`` — the detection models a site runs, by name."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from common.config._types import Section, Unit, auto_or_count, auto_or_count_schema

__all__ = ["INFERENCE_SHARD_VARIABLE", "ModelConfig"]

# The environment variable telling an inference replica its share of the cameras: INDEX/COUNT.
INFERENCE_SHARD_VARIABLE = "EDGESIGHT_INFERENCE_SHARD"


class ModelConfig(Section):
    path: str = Field(
        ...,
        min_length=1,
        description="A signed model package (.espkg), a model manifest (.yaml) or an .onnx file, found in "
        "state_dir/models (installed packages), then on the asset search path (site.asset_paths, $EDGESIGHT_ASSETS, "
        "../shared in a development checkout).",
    )
    allow_unsigned: bool = Field(
        False, description="With site.trusted_keys set: run this plain (unsigned) model file anyway, warned at start."
    )
    backend: Literal["onnxruntime", "tensorrt"] = Field(
        "onnxruntime", description="tensorrt needs the [tensorrt] extra and a GPU."
    )
    providers: list[str] = Field(
        default_factory=lambda: ["CPUExecutionProvider"],
        description="ONNX Runtime execution providers in order of preference; the one in use is logged and labelled.",
    )
    score_threshold: Unit | None = Field(None, description="Overrides the manifest's threshold.")
    classes: list[str] = Field(default_factory=list, description="Keep only these labels; empty keeps all.")
    max_batch: int = Field(
        4, ge=1, le=64, description="Frames batched across cameras. Larger uses the accelerator better, adds latency."
    )
    max_wait_ms: float = Field(5.0, ge=0, le=1000, description="Longest wait to fill a batch.")
    engines: Annotated[int | Literal["auto"], auto_or_count(1, 64), auto_or_count_schema(1, 64)] = Field(
        "auto",
        description="Copies of the model in the inference process that run frames at once, each frame going to "
        "whichever is free (busy cameras use several, frames stay in order). auto: one per core the process may "
        "use, up to the cameras it serves; 1 on a GPU. See the README's Models.",
    )
    threads: Annotated[int | Literal["auto"], auto_or_count(0, 256), auto_or_count_schema(0, 256)] = Field(
        "auto",
        description="CPU threads ONNX Runtime runs one frame (or batch) on, per engine; 0 is ONNX Runtime's own "
        "choice (every core). auto: the cores the process may use shared out between its engines.",
    )
    skip_still_frames: bool = Field(
        False, description="Skip frames ingest saw no motion in; every camera is still checked every recheck_s."
    )
    recheck_s: float = Field(5.0, gt=0, le=3600, description="With skip_still_frames: the longest gap between runs.")
    min_motion: Unit = Field(0.001, description="With skip_still_frames: FrameRef.motion below this is still.")
    nms_iou: Unit | None = Field(None, description="Overrides the manifest's NMS IoU threshold.")

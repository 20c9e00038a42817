"""``edgesight detect`` and ``edgesight models inspect``: check a model before deploying it.

``detect`` decodes a file or stream and runs the very code path of the inference service
(:class:`~services.inference.detector.Detector`) on every frame, in one process. Runnable as
``python -m services.inference.tools``; the ``edgesight`` CLI hands over to it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import av
import numpy as np
import yaml

from common.config import ModelConfig
from common.draw import Colour, draw_box, in_pixels
from common.errors import EdgeSightError
from common.models.manifest import onnx_metadata, suggest_manifest
from common.urls import redact
from services.inference import packages
from services.inference.detector import Detector, FrameDetections

__all__ = ["detect", "inspect", "main"]

ANNOTATE_COLOUR: Colour = (0, 220, 0)  # BGR: boxes and labels (black text on the green) of --annotate


def inspect(path: Path) -> int:
    inputs, outputs, metadata = onnx_metadata(path)
    print(f"model    {path}")
    for name, shape in inputs:
        print(f"input    {name} {shape}")
    for name, shape in outputs:
        print(f"output   {name} {shape}")
    for key, value in sorted(metadata.items()):
        print(f"metadata {key} = {value if len(value) < 100 else value[:97] + '...'}")
    try:
        manifest = suggest_manifest(path)
    except EdgeSightError as exc:
        print(f"\n# no manifest to suggest: {exc}")
        return 0
    print(f"\n# a suggested manifest: save as {path.with_suffix('.yaml').name} beside the model and check it")
    print(yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False, default_flow_style=None), end="")
    return 0


def _draw(frame: np.ndarray, result: FrameDetections, labels: list[str]) -> np.ndarray:  # type: ignore[type-arg]
    height, width = frame.shape[:2]
    canvas = np.ascontiguousarray(frame)
    for box, class_id, score in zip(result.boxes, result.class_ids, result.scores, strict=True):
        corners = in_pixels(box, width, height)
        draw_box(canvas, corners, ANNOTATE_COLOUR, thickness=2, label=f"{labels[class_id]} {score:.2f}", scale=0.45)
    return canvas


def detect(model: str, source: str, frames: int | None, out: Path | None, annotate: Path | None) -> int:
    detector = Detector.from_config(ModelConfig(path=model))
    backend = detector.backend
    print(
        f"# model {detector.name} {detector.version}: {backend.name}/{backend.provider}, "
        f"input {backend.input_width}x{backend.input_height}, batch {backend.max_batch}",
        file=sys.stderr,
    )
    lines = out.open("w") if out else sys.stdout
    writer: Any = None
    count, started, found = 0, time.perf_counter(), 0
    try:
        with av.open(source) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            if annotate:
                writer = av.open(str(annotate), "w")
                encoded = writer.add_stream("libx264", rate=stream.average_rate or 25)
                encoded.width, encoded.height, encoded.pix_fmt = stream.width, stream.height, "yuv420p"
            for frame in container.decode(stream):
                if frames is not None and count >= frames:
                    break
                pixels = frame.to_ndarray(format="bgr24")
                (result,), _ = detector.detect([pixels])
                detections = [
                    {
                        "label": detector.labels[int(c)],
                        "class_id": int(c),
                        "score": round(float(s), 4),
                        "box": [round(float(v), 5) for v in b],
                    }
                    for b, c, s in zip(result.boxes, result.class_ids, result.scores, strict=True)
                ]
                pts = round(float(frame.time), 6) if frame.time is not None else None
                lines.write(json.dumps({"frame": count, "pts": pts, "detections": detections}) + "\n")
                found += len(detections)
                if writer is not None:
                    picture = av.VideoFrame.from_ndarray(_draw(pixels, result, detector.labels), format="bgr24")
                    picture.pts = None
                    writer.mux(encoded.encode(picture.reformat(format="yuv420p")))
                count += 1
                if count % 50 == 0:
                    print(f"# {count} frames, {count / (time.perf_counter() - started):.1f} fps", file=sys.stderr)
    finally:
        if writer is not None:
            writer.mux(encoded.encode(None))
            writer.close()
        if out:
            lines.close()
    elapsed = time.perf_counter() - started
    print(f"# {count} frames, {found} detections, {count / elapsed if elapsed else 0:.1f} fps", file=sys.stderr)
    return 0 if count else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesight", description="Check a model before deploying it.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )
    what = "run a model on a file or stream, print detections as JSON lines (boxes 0-1)"
    run = commands.add_parser("detect", help=what, description=what)
    run.add_argument("--model", required=True, help="a manifest (.yaml) or an .onnx file (asset search path)")
    run.add_argument("--source", required=True, help="a video file or a stream URL")
    run.add_argument("--frames", type=int, help="stop after this many frames")
    run.add_argument("--out", type=Path, help="write the JSON lines here instead of standard output")
    run.add_argument("--annotate", type=Path, help="also write the video with boxes drawn (mp4)")
    what = "inspect a model; keygen, package, verify, install, list, rollback signed packages"
    models = commands.add_parser("models", help=what, description=what)
    model_commands = models.add_subparsers(
        dest="models_command", required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )
    what = "print a model's inputs, outputs, metadata and a suggested manifest"
    look = model_commands.add_parser("inspect", help=what, description=what)
    look.add_argument("file", type=Path, help="the model (.onnx)")
    packages.add_commands(model_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "detect":
            return detect(args.model, args.source, args.frames, args.out, args.annotate)
        if args.models_command != "inspect":
            return packages.run_command(args)
        return inspect(args.file)
    except (EdgeSightError, av.error.FFmpegError, OSError) as exc:
        message = str(exc)
        if args.command == "detect":
            message = _without_credentials(message, args.source)
        print(f"edgesight {args.command}: {message}", file=sys.stderr)
        return 1


def _without_credentials(text: str, url: str) -> str:
    """``text`` with ``url``'s password (as written and percent-decoded) and every URL's secrets hidden."""
    return redact(text, [urllib.parse.urlsplit(url).password])


if __name__ == "__main__":
    sys.exit(main())

"""``edgesight detect`` and ``edgesight models inspect`` on the shared models and clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import yaml

from services.inference.manifest import load_model_spec


def edgesight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_detect_writes_json_lines_and_an_annotated_video(
    shared_dir: Path, tmp_path: Path, python_env: dict[str, str]
) -> None:
    out, video = tmp_path / "detections.jsonl", tmp_path / "annotated.mp4"
    clip = str(shared_dir / "media" / "people.mp4")
    result = edgesight(
        "detect", "--model", "yolox_nano.onnx", "--source", clip, "--frames", "61", "--out", str(out),
        "--annotate", str(video), env=python_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(61))
    assert abs(records[60]["pts"] - 60 / 25) < 1e-6
    persons = [d for d in records[60]["detections"] if d["label"] == "person"]
    assert len(persons) >= 15
    for detection in records[60]["detections"]:
        assert set(detection) == {"label", "class_id", "score", "box"}
        x1, y1, x2, y2 = detection["box"]
        assert 0 <= x1 < x2 <= 1 and 0 <= y1 < y2 <= 1
    with av.open(str(video)) as annotated:
        stream = annotated.streams.video[0]
        assert (stream.width, stream.height) == (854, 480)
        assert sum(1 for _ in annotated.decode(stream)) == 61
    assert "onnxruntime/CPUExecutionProvider" in result.stderr


def test_detect_with_a_missing_model_says_where_it_looked(shared_dir: Path, python_env: dict[str, str]) -> None:
    clip = str(shared_dir / "media" / "people.mp4")
    result = edgesight("detect", "--model", "nosuch.onnx", "--source", clip, env=python_env)
    assert result.returncode == 1
    assert "nosuch.onnx not found; looked in:" in result.stderr


def test_inspect_suggests_a_manifest_that_loads(shared_dir: Path, tmp_path: Path, python_env: dict[str, str]) -> None:
    model = tmp_path / "yolox_nano.onnx"
    model.write_bytes((shared_dir / "models" / "yolox_nano.onnx").read_bytes())
    result = edgesight("models", "inspect", str(model), env=python_env)
    assert result.returncode == 0, result.stderr
    assert "input    images [1, 3, 416, 416]" in result.stdout
    assert "output   output [1, 3549, 85]" in result.stdout
    manifest_text = result.stdout.split("check it\n", 1)[1]
    manifest = tmp_path / "yolox_nano.yaml"
    manifest.write_text(manifest_text)
    assert yaml.safe_load(manifest_text)["decoder"] == "yolox"
    spec = load_model_spec(manifest)
    assert spec.labels[0] == "person" and spec.model_path == model


def test_detect_never_prints_the_camera_password(python_env: dict[str, str]) -> None:
    """The RTSP URL of a camera that does not answer used to come back in the error with its password."""
    import socket

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"rtsp://admin:pa%24%24word-77@127.0.0.1:{port}/stream"
    result = edgesight("detect", "--model", "yolox_nano.onnx", "--source", url, "--frames", "1", env=python_env)
    assert result.returncode == 1
    assert "pa%24%24word-77" not in result.stderr and "pa$$word-77" not in result.stderr
    assert "***" in result.stderr

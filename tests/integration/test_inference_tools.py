"""``edgesight detect`` and ``edgesight models inspect`` on the shared models and clip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import yaml

from common.models.loading import load_model_spec


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
    from tests.conftest import free_port

    port = free_port()  # nobody listens there: a port released from bind(0) could be anyone's next one
    url = f"rtsp://admin:pa%24%24word-77@127.0.0.1:{port}/stream"
    result = edgesight("detect", "--model", "yolox_nano.onnx", "--source", url, "--frames", "1", env=python_env)
    assert result.returncode == 1
    assert "pa%24%24word-77" not in result.stderr and "pa$$word-77" not in result.stderr
    assert "***" in result.stderr


def test_models_package_verify_install_list_rollback(
    shared_dir: Path, tmp_path: Path, python_env: dict[str, str]
) -> None:
    keys = tmp_path / "keys"
    assert edgesight("models", "keygen", "--out", str(keys), env=python_env).returncode == 0
    again = edgesight("models", "keygen", "--out", str(keys), env=python_env)
    assert again.returncode == 1 and "never overwritten" in again.stderr
    folder = tmp_path / "people"  # a folder: a manifest, its model, a labels file
    folder.mkdir()
    (folder / "yolox.onnx").write_bytes((shared_dir / "models" / "yolox_nano.onnx").read_bytes())
    (folder / "labels.txt").write_text("\n".join(f"thing{i}" for i in range(80)))
    manifest = {"name": "people", "version": "1", "file": "yolox.onnx", "decoder": "yolox", "color": "bgr",
                "scale": 1.0, "letterbox": "top_left", "labels": "labels.txt"}  # fmt: skip
    (folder / "people.yaml").write_text(yaml.safe_dump(manifest))
    packages = {}
    for version in ("1", "2"):
        packages[version] = tmp_path / f"people-{version}.espkg"
        made = edgesight(
            "models", "package", str(folder), "--key", str(keys / "signing.key"), "-o", str(packages[version]),
            "--version", version, env=python_env,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        assert "people " + version + ", 3 members, 80 labels" in made.stdout
    verified = edgesight("models", "verify", str(packages["2"]), "--trusted", str(keys / "signing.pub"), env=python_env)
    assert verified.returncode == 0 and "package  people 2" in verified.stdout and "labels.txt" in verified.stdout
    tampered = tmp_path / "tampered.espkg"
    data = bytearray(packages["2"].read_bytes())
    data[-100] ^= 1
    tampered.write_bytes(bytes(data))
    refused = edgesight("models", "verify", str(tampered), "--trusted", str(keys / "signing.pub"), env=python_env)
    assert refused.returncode == 1 and "changed after signing" in refused.stderr and "Traceback" not in refused.stderr

    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"site": {"name": "s", "state_dir": str(tmp_path / "state"),
                                             "trusted_keys": [str(keys / "signing.pub")]}}))  # fmt: skip
    for version in ("1", "2"):
        installed = edgesight("models", "install", str(packages[version]), "--config", str(site), env=python_env)
        assert installed.returncode == 0, installed.stderr
    listed = edgesight("models", "list", "--config", str(site), env=python_env)
    assert listed.stdout.startswith("people") and "1, *2" in listed.stdout
    back = edgesight("models", "rollback", "people", "--config", str(site), env=python_env)
    assert back.returncode == 0 and "people: 2 -> 1" in back.stdout
    audit = [json.loads(line) for line in (tmp_path / "state" / "audit.jsonl").read_text().splitlines()]
    assert [(r["action"], r["detail"]["version"]) for r in audit] == [
        ("model.install", "1"),
        ("model.install", "2"),
        ("model.rollback", "1"),
    ]

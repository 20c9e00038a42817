"""Attacks on signed model packages (#23), each done as the attacker did it: the real `edgesight models`
CLI in a subprocess, and a real inference service process where the attack lands there.

A package whose name walks out of the model store; a manifest that disagrees with its signed index; a
downgrade; a signing key removed from the site that went on verifying until a restart, after which the
refused current package crash-looped inference (and an app's model loaded under the keys its process
started with)."""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from common.trust import Member, build_package, generate_key_pair, key_id, load_signing_key, seal
from tests.conftest import write_site
from tests.integration.conftest import Services
from tests.integration.test_apps import COMPOSED_APP, BusWatch, feed, write_app
from tests.media import frame_at
from tests.support import http_get

pytestmark = pytest.mark.slow


def edgesight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args], capture_output=True, text=True, env=env, timeout=300
    )


def manifest(name: str, version: str) -> bytes:
    fields = {
        "name": name,
        "version": version,
        "file": "yolox_nano.onnx",
        "decoder": "yolox",
        "color": "bgr",
        "scale": 1.0,
        "letterbox": "top_left",
        "labels": "coco80",
    }
    return yaml.safe_dump(fields).encode()


def members(shared_dir: Path, name: str, version: str) -> dict[str, bytes]:
    model = (shared_dir / "models" / "yolox_nano.onnx").read_bytes()
    return {"manifest.yaml": manifest(name, version), "yolox_nano.onnx": model}


def forge(contents: dict[str, bytes], name: str, version: str, key: Ed25519PrivateKey) -> bytes:
    """What `models package` wrote before names were checked: a well-formed archive, honestly signed,
    under any name the signer typed (``seal`` does not judge the name; ``build_package`` now does)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for member in sorted(contents):
            info = tarfile.TarInfo(member)
            info.size = len(contents[member])
            tar.addfile(info, io.BytesIO(contents[member]))
    listing = [Member(m, len(d), hashlib.sha256(d).hexdigest()) for m, d in sorted(contents.items())]
    return seal(gzip.compress(buffer.getvalue(), mtime=0), listing, name, version, key)


def trust_site(tmp_path: Path, keys: list[Path], **extra: Any) -> Path:
    return write_site(tmp_path, {"site": {"trusted_keys": [str(k) for k in keys]}, **extra})


def set_trusted(site: Path, keys: list[Path]) -> None:
    data = yaml.safe_load(site.read_text())
    data["site"]["trusted_keys"] = [str(k) for k in keys]
    site.write_text(yaml.safe_dump(data, sort_keys=False))


def audit(site: Services) -> list[dict[str, Any]]:
    path = Path(site.config.site.state_dir) / "audit.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {what}")
        time.sleep(0.2)


def clean_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Refused with one clear line (naming what was refused), never a traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.timeout(300)
def test_a_package_named_to_walk_out_of_the_store_is_refused_at_package_verify_install_and_load(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str]
) -> None:
    private, public = generate_key_pair(tmp_path / "keys", "signing")
    signer = load_signing_key(private)
    site = trust_site(tmp_path, [public])
    state = tmp_path / "state"

    made = tmp_path / "escape.espkg"
    packaged = edgesight(
        "models", "package", str(shared_dir / "models" / "yolox_nano.onnx"), "--key", str(private),
        "-o", str(made), "--name", "../../escape", "--version", "1", env=python_env,
    )  # fmt: skip
    clean_refusal(packaged, "'../../escape'")
    assert not made.exists()

    outside = tmp_path / "abs" / "escape"
    for name in ("../../escape", str(outside)):
        evil = tmp_path / "evil.espkg"
        evil.write_bytes(forge(members(shared_dir, name, "1"), name, "1", signer))  # a careless or stolen key
        verified = edgesight("models", "verify", str(evil), "--trusted", str(public), env=python_env)
        clean_refusal(verified, repr(name))
        installed = edgesight("models", "install", str(evil), "--config", str(site), env=python_env)
        clean_refusal(installed, repr(name))
        assert not (tmp_path / "escape").exists() and not outside.parent.exists()
        assert not [p for p in state.rglob("*.espkg")], "nothing installed"

    evil = tmp_path / "evil.espkg"
    evil.write_bytes(forge(members(shared_dir, "../../escape", "1"), "../../escape", "1", signer))
    loading = trust_site(tmp_path, [public], models={"people": {"path": str(evil)}})
    checked = edgesight("config", "check", str(loading), env=python_env)  # what inference runs at load
    clean_refusal(checked, "'../../escape'")
    rolled = edgesight("models", "rollback", "../../escape", "--config", str(site), env=python_env)
    clean_refusal(rolled, "'../../escape'")


@pytest.mark.timeout(300)
def test_install_refuses_a_package_inference_would_refuse_and_a_silent_downgrade(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str], services: Callable[[dict[str, Any]], Services]
) -> None:
    private, public = generate_key_pair(tmp_path / "keys", "signing")
    signer = load_signing_key(private)
    site = services(
        {
            "site": {"trusted_keys": [str(public)]},
            "models": {"people": {"path": "people.espkg", "max_wait_ms": 0}},
            "cameras": {"gate": {"url": "rtsp://unused/1"}},
        }
    )
    store = Path(site.config.site.state_dir) / "models"
    packages = {}
    for version in ("1", "2", "3"):
        packages[version] = tmp_path / f"people-{version}.espkg"
        packages[version].write_bytes(
            build_package(members(shared_dir, "people", version), name="people", version=version, signing_key=signer)
        )
        installed = edgesight("models", "install", str(packages[version]), "--config", str(site.site), env=python_env)
        assert installed.returncode == 0, installed.stderr

    liar = tmp_path / "people-4.espkg"  # signed as 4, its manifest says 1: inference refuses it at load
    liar.write_bytes(build_package(members(shared_dir, "people", "1"), name="people", version="4", signing_key=signer))
    refused = edgesight("models", "install", str(liar), "--config", str(site.site), env=python_env)
    clean_refusal(refused, "people", "manifest says people 1, the signed index people 4")
    listed = edgesight("models", "list", "--config", str(site.site), env=python_env)
    assert "1, 2, *3" in listed.stdout, listed.stdout  # nothing made current, nothing pruned
    assert {p.name for p in (store / "people").glob("*.espkg")} == {"1.espkg", "2.espkg", "3.espkg"}

    site.start("inference")  # starts on what install left current
    wait_until(lambda: any(r["action"] == "model.load" for r in audit(site)), 60, "a model.load record")
    assert [r["detail"]["version"] for r in audit(site) if r["action"] == "model.load"] == ["3"]

    older = edgesight("models", "install", str(packages["2"]), "--config", str(site.site), env=python_env)
    clean_refusal(older, "people 2", "--allow-downgrade")
    assert "1, 2, *3" in edgesight("models", "list", "--config", str(site.site), env=python_env).stdout
    allowed = edgesight(
        "models", "install", str(packages["2"]), "--config", str(site.site), "--allow-downgrade", env=python_env
    )
    assert allowed.returncode == 0, allowed.stderr
    listed = edgesight("models", "list", "--config", str(site.site), env=python_env)
    assert "1, 3, *2" in listed.stdout, listed.stdout  # installed again: last in install order; rollback goes to 3
    installs = [r for r in audit(site) if r["action"] == "model.install"]
    assert installs[-1]["detail"] | {"version": "2", "previous": "3", "downgrade": True} == installs[-1]["detail"]
    assert not any(r["detail"].get("downgrade") for r in installs[:-1])
    refusals = [r for r in audit(site) if r["action"] == "model.install_refused"]
    assert [r["detail"]["version"] for r in refusals] == ["4", "2"], refusals


@pytest.mark.timeout(300)
def test_a_removed_key_stops_the_next_load_and_a_restart_falls_back_to_a_version_that_verifies(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str], services: Callable[[dict[str, Any]], Services]
) -> None:
    keys = tmp_path / "keys"
    kept_private, kept_public = generate_key_pair(keys, "signing")
    removed_private, removed_public = generate_key_pair(keys, "rotated")
    kept, removed = load_signing_key(kept_private), load_signing_key(removed_private)
    site = services(
        {
            "site": {"trusted_keys": [str(kept_public), str(removed_public)]},
            "models": {"people": {"path": "people.espkg", "max_wait_ms": 0}},
            "cameras": {"gate": {"url": "rtsp://unused/1"}},
        }
    )
    packages = {}
    for version, key in (("1", kept), ("2", removed), ("3", kept)):
        packages[version] = tmp_path / f"people-{version}.espkg"
        packages[version].write_bytes(
            build_package(members(shared_dir, "people", version), name="people", version=version, signing_key=key)
        )
    for version in ("1", "2"):
        installed = edgesight("models", "install", str(packages[version]), "--config", str(site.site), env=python_env)
        assert installed.returncode == 0, installed.stderr
    base = site.start("inference")
    wait_until(lambda: any(r["action"] == "model.load" for r in audit(site)), 60, "a model.load record")
    removed_id = key_id(removed.public_key())

    set_trusted(site.site, [kept_public])  # the key is out of the site: nothing it signed may load again
    removal = len(audit(site))
    time.sleep(0.1)
    os.utime(Path(site.config.site.state_dir) / "models" / "people" / "2.espkg")  # the file watch loads it again
    wait_until(lambda: any(r["action"] == "model.load_failed" for r in audit(site)[removal:]), 60, "the reload refused")
    after = audit(site)[removal:]
    assert not [r for r in after if r["action"] == "model.load"], after  # nothing signed by the removed key loaded
    failed = next(r for r in after if r["action"] == "model.load_failed")
    assert removed_id in failed["detail"]["error"] and failed["detail"]["kept"] == "2"
    assert "not a trusted key" in site.log("inference")
    assert site.processes["inference"].poll() is None and http_get(f"{base}/readyz")[0] == 200  # kept serving

    site.processes["inference"].terminate()
    site.processes["inference"].wait(timeout=20)
    restart = len(audit(site))
    site.start("inference")  # the current package (2) is refused: start on 1, the newest that verifies
    wait_until(lambda: any(r["action"] == "model.load" for r in audit(site)[restart:]), 60, "a model.load record")
    after = audit(site)[restart:]
    fallback = next(r for r in after if r["action"] == "model.fallback")
    assert fallback["detail"]["version"] == "1" and fallback["detail"]["refused"] == "people.espkg"
    assert removed_id in fallback["detail"]["error"]
    load = next(r for r in after if r["action"] == "model.load")
    assert load["detail"]["version"] == "1" and load["detail"]["signer"] == key_id(kept.public_key())
    assert "started on an older installed version" in site.log("inference")

    installed = edgesight("models", "install", str(packages["3"]), "--config", str(site.site), env=python_env)
    assert installed.returncode == 0, installed.stderr  # the fix arrives: the watch on people.espkg picks it up
    wait_until(
        lambda: any(r["action"] == "model.load" and r["detail"]["version"] == "3" for r in audit(site)[restart:]),
        20,
        "version 3 loaded",
    )


@pytest.mark.timeout(300)
def test_an_app_loads_its_model_under_the_keys_of_now_and_falls_back_to_a_version_that_verifies(
    tmp_path: Path, shared_dir: Path, python_env: dict[str, str], services: Callable[[dict[str, Any]], Services]
) -> None:
    keys = tmp_path / "keys"
    kept_private, kept_public = generate_key_pair(keys, "signing")
    removed_private, removed_public = generate_key_pair(keys, "rotated")
    apps = {
        "greeter": {
            "code": str(write_app(tmp_path / "greeter_code", COMPOSED_APP, ("model_node",))),
            "cameras": ["door"],
            "models": {"model_node": {"path": "people.espkg"}},
        }
    }
    site = services(
        {
            "site": {"trusted_keys": [str(kept_public), str(removed_public)]},
            "cameras": {"door": {"url": "rtsp://unused/door"}},
            "apps": apps,
        }
    )
    for version, private in (("1", kept_private), ("2", removed_private)):
        package = tmp_path / f"people-{version}.espkg"
        package.write_bytes(
            build_package(
                members(shared_dir, "people", version),
                name="people",
                version=version,
                signing_key=load_signing_key(private),
            )
        )
        installed = edgesight("models", "install", str(package), "--config", str(site.site), env=python_env)
        assert installed.returncode == 0, installed.stderr
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")
        watch.state("greeter")  # the app runs

        set_trusted(site.site, [kept_public])  # after the service read its site file, before the first model call
        shapes = Path(site.config.site.state_dir) / "apps" / "greeter" / "storage" / "shapes.json"
        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["door"], 60, shapes.exists))
        restarts = watch.state("greeter").restarts
    assert shapes.exists(), site.log("apps")  # the app runs its model: version 1, not the refused 2
    fallback = [r for r in audit(site) if r["action"] == "model.fallback"]
    assert [(r["target"], r["detail"]["version"]) for r in fallback] == [("apps.greeter.models.model_node", "1")]
    assert key_id(load_signing_key(removed_private).public_key()) in fallback[0]["detail"]["error"]
    assert "the current package is refused; running version 1" in site.log("apps")
    assert restarts == 0


@pytest.mark.timeout(300)
def test_a_signed_model_cannot_read_files_through_onnx_external_data(
    tmp_path: Path, python_env: dict[str, str]
) -> None:
    """ONNX lets a tensor keep its bytes in another file, named relative to the working directory
    (which is ``/`` in the container): a signed model could load ``/run/secrets/...`` as weights and
    send it out in its detections. A package's model must hold all its weights itself."""
    import onnx
    from onnx import TensorProto, helper

    secret = tmp_path / "secret.txt"
    secret.write_text("S3cr3t-console-password-0123456")
    weights = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[len(secret.read_bytes())])
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../" * 12 + str(secret).lstrip("/")), ("offset", "0")):
        weights.external_data.add(key=key, value=value)
    weights.external_data.add(key="length", value=str(len(secret.read_bytes())))
    graph = helper.make_graph(
        [helper.make_node("Cast", ["W"], ["leak"], to=TensorProto.FLOAT)],
        "leak",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],  # a detector's input, unused
        [helper.make_tensor_value_info("leak", TensorProto.FLOAT, [len(secret.read_bytes())])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    content = model.SerializeToString()

    private, public = generate_key_pair(tmp_path / "keys", "signing")
    manifest_text = b"name: leak\nversion: '1'\nfile: leak.onnx\ndecoder: end2end\nlabels: [a]\ninput_size: [4, 4]\n"
    package = tmp_path / "leak.espkg"
    package.write_bytes(
        forge({"manifest.yaml": manifest_text, "leak.onnx": content}, "leak", "1", load_signing_key(private))
    )
    site = trust_site(tmp_path, [public])
    installed = subprocess.run(
        [sys.executable, "-m", "common.cli.main", "models", "install", str(package), "--config", str(site)],
        capture_output=True, text=True, env=python_env, cwd="/", timeout=300,
    )  # fmt: skip
    clean_refusal(installed, "external file")
    assert not [p for p in (tmp_path / "state").rglob("*.espkg")], "nothing installed"

    from common.errors import ModelError
    from common.models import ModelFile, refuse_external_data

    with pytest.raises(ModelError, match="tensor 'W' keeps its data in an external file"):
        refuse_external_data(content, "leak")
    with pytest.raises(ModelError, match="external file"):
        ModelFile(Path("leak.onnx"), "leak", content=content).read()
    assert onnx.ModelProto.FromString(content).graph.initializer[0].data_location == TensorProto.EXTERNAL

"""``model_package``: what a signed (and an encrypted) package costs at model load.

YOLOX-Nano loaded as the inference service loads it (``load_model_spec`` + an ONNX Runtime session)
from the plain ``.onnx`` file — the baseline — and from a signed package, and one encrypted for this
device, in the same run; plus the check alone (``open_package``) on a 64 MiB member of random bytes
(incompressible: the worst case for a big model), as MB/s. ``ratio`` = plain load time / signed load
time (1.0: signing costs nothing at load).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.assets import find_asset
from common.models import open_backend
from common.models.loading import load_model_spec
from common.trust import TrustPolicy, build_package, key_id, open_package

TITLE = "model load: a signed / encrypted package vs the plain .onnx file, and the package check alone"

MANIFEST = (
    b"name: people\nversion: '1'\nfile: yolox_nano.onnx\ndecoder: yolox\ncolor: bgr\nscale: 1.0\nletterbox: top_left\n"
)


def _median_ms(action: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def run(quick: bool) -> dict[str, float]:
    repeats = 3 if quick else 15
    model = find_asset("yolox_nano.onnx")
    signer, device = Ed25519PrivateKey.generate(), X25519PrivateKey.generate()
    trusted = {key_id(signer.public_key()): signer.public_key()}
    members = {"manifest.yaml": MANIFEST, "yolox_nano.onnx": model.read_bytes()}
    with tempfile.TemporaryDirectory() as folder:
        signed, encrypted = Path(folder) / "signed.espkg", Path(folder) / "encrypted.espkg"
        signed.write_bytes(build_package(members, name="people", version="1", signing_key=signer))
        sealed = build_package(members, name="people", version="1", signing_key=signer, encrypt_for=device.public_key())
        encrypted.write_bytes(sealed)
        policies = {"signed": TrustPolicy(trusted), "encrypted": TrustPolicy(trusted, device)}  # type: ignore[arg-type]

        def load(path: Path, policy: TrustPolicy | None) -> None:
            spec = load_model_spec(path, (), policy)
            open_backend(spec.file(), "onnxruntime", ["CPUExecutionProvider"]).close()

        figures = {"plain_load_ms": _median_ms(lambda: load(model, None), repeats)}
        figures["signed_load_ms"] = _median_ms(lambda: load(signed, policies["signed"]), repeats)
        figures["encrypted_load_ms"] = _median_ms(lambda: load(encrypted, policies["encrypted"]), repeats)
        big = {"manifest.yaml": MANIFEST, "yolox_nano.onnx": os.urandom(64 << 20)}
        data = build_package(big, name="big", version="1", signing_key=signer)
        check_ms = _median_ms(lambda: open_package(data, trusted), 2 if quick else 5)
    figures["check_64mib_ms"] = check_ms
    figures["check_mb_per_s"] = 64 * 1.048576 / (check_ms / 1000)
    figures["ratio"] = figures["plain_load_ms"] / figures["signed_load_ms"]
    return figures

"""Signed model packages: every way a package can be wrong is refused with its own message."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import tarfile
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.config import SiteSection, load_config
from common.errors import ModelError, PackageError
from common.models.loading import load_model_spec, open_model
from common.trust import (
    Member,
    ModelStore,
    Package,
    Refused,
    TrustPolicy,
    TrustWatch,
    build_package,
    generate_key_pair,
    key_id,
    load_installed,
    load_signing_key,
    load_trusted_keys,
    open_package,
    seal,
    version_key,
)
from common.trust.package import read_index
from tests.conftest import write_site

MANIFEST = b"name: people\nversion: '1'\nfile: model.onnx\ndecoder: yolox\nlabels: labels.txt\n"
MEMBERS = {"manifest.yaml": MANIFEST, "model.onnx": b"weights " * 64, "labels.txt": b"person\n"}


@pytest.fixture
def signer() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def trusted(signer: Ed25519PrivateKey) -> dict[str, object]:
    return {key_id(signer.public_key()): signer.public_key()}


def package(signer: Ed25519PrivateKey, members: dict[str, bytes] | None = None, **kwargs: object) -> bytes:
    return build_package(members or MEMBERS, name="people", version="1", signing_key=signer, **kwargs)  # type: ignore[arg-type]


def refusal(data: bytes, trusted: dict[str, object], **kwargs: object) -> str:
    with pytest.raises(PackageError) as caught:
        open_package(data, trusted, **kwargs)  # type: ignore[arg-type]
    return str(caught.value)


def archive(entries: list[tarfile.TarInfo], contents: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            data = contents.get(info.name)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip.compress(buffer.getvalue(), mtime=0)


def regular(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def listing(contents: dict[str, bytes]) -> list[Member]:
    return [Member(n, len(d), hashlib.sha256(d).hexdigest()) for n, d in sorted(contents.items())]


def test_a_package_opens_with_its_members_and_describes_itself(signer: Ed25519PrivateKey, trusted: dict) -> None:
    opened = open_package(package(signer), trusted)
    assert dict(opened.members) == MEMBERS
    assert (opened.name, opened.version, opened.signer) == ("people", "1", key_id(signer.public_key()))
    text = "\n".join(opened.describe())
    assert "people 1" in text and "model.onnx 512 bytes" in text


def test_the_index_is_read_unverified_and_its_name_still_checked(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    """read_index names a package for a tool that sends it on (edgesight fleet deploy): no key needed."""
    path = tmp_path / "people-1.espkg"
    path.write_bytes(package(signer))
    index = read_index(path)
    assert (index["name"], index["version"], index["signer"]) == ("people", "1", key_id(signer.public_key()))
    path.write_bytes(b"not a package")
    with pytest.raises(PackageError, match="not an EdgeSight model package"):
        read_index(path)
    path.write_bytes(sealed(signer, "../people", "1"))
    with pytest.raises(PackageError, match="is not 1-64 letters"):
        read_index(path)
    with pytest.raises(PackageError, match="No such file"):
        read_index(tmp_path / "missing.espkg")


def test_a_flipped_byte_anywhere_is_refused(signer: Ed25519PrivateKey, trusted: dict) -> None:
    data = package(signer)
    kinds: set[str] = set()
    for position in range(len(data)):  # every byte of the file: header, index, signature, archive
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        message = refusal(bytes(damaged), trusted)
        kinds.add(message.split(": ", 1)[1][:24])
    assert len(data) > 900, kinds
    # each part of the file fails in its own words (no header, signature, digest, corrupt archive, ...)
    assert any("not an EdgeSight" in k for k in kinds)
    assert any("bad signature" in k or "index is unreadable" in k for k in kinds)
    assert any("signature line" in k for k in kinds)
    assert any("archive" in k for k in kinds)


def test_a_swapped_manifest_is_refused_as_that_member(signer: Ed25519PrivateKey, trusted: dict) -> None:
    data = package(signer)
    head, body = data[: data.index(b"\n", 8) + 130], data[data.index(b"\n", 8) + 130 :]
    assert open_package(data, trusted).members["manifest.yaml"] == MANIFEST
    swapped = dict(MEMBERS, **{"manifest.yaml": MANIFEST.replace(b"score", b"x") + b"score_threshold: 0.01\n"})
    forged = head + archive([regular(n) for n in sorted(swapped)], swapped)
    assert forged[len(head) :] != body  # the signed part kept, the archive swapped
    assert "member 'manifest.yaml' changed" in refusal(forged, trusted)


@pytest.mark.parametrize("name", ["../escape.onnx", "/etc/cron.d/x", "models/../../x"])
def test_a_member_outside_the_package_is_refused(signer: Ed25519PrivateKey, trusted: dict, name: str) -> None:
    contents = dict(MEMBERS, **{name: b"x"})
    signed = seal(archive([regular(n) for n in sorted(contents)], contents), listing(contents), "people", "1", signer)
    assert "an absolute path or one with '..'" in refusal(signed, trusted)


@pytest.mark.parametrize(("kind", "words"), [(tarfile.SYMTYPE, "a symbolic link"), (tarfile.LNKTYPE, "a hard link")])
def test_a_link_member_is_refused(signer: Ed25519PrivateKey, trusted: dict, kind: bytes, words: str) -> None:
    link = tarfile.TarInfo("labels.txt")
    link.type, link.linkname = kind, "/etc/shadow"
    contents = {k: v for k, v in MEMBERS.items() if k != "labels.txt"}
    entries = [regular(n) for n in sorted(contents)] + [link]
    signed = seal(archive(entries, contents), listing(contents), "people", "1", signer)
    assert f"member 'labels.txt' is {words} to '/etc/shadow'" in refusal(signed, trusted)


def test_another_signers_package_is_refused(trusted: dict) -> None:
    stranger = Ed25519PrivateKey.generate()
    message = refusal(package(stranger), trusted)
    assert f"signed by key {key_id(stranger.public_key())}, which is not a trusted key" in message
    assert "no trusted keys" in refusal(package(stranger), {})


def test_an_index_claiming_a_trusted_signer_fails_the_signature(signer: Ed25519PrivateKey, trusted: dict) -> None:
    stranger = Ed25519PrivateKey.generate()
    forged = package(stranger).replace(key_id(stranger.public_key()).encode(), key_id(signer.public_key()).encode())
    assert "bad signature" in refusal(forged, trusted)


def test_an_archive_that_expands_past_its_declared_size_is_refused(signer: Ed25519PrivateKey, trusted: dict) -> None:
    bomb = dict(MEMBERS, **{"model.onnx": bytes(16 << 20)})  # 16 MiB of zeros: ~16 KiB compressed
    small = [m if m.name != "model.onnx" else Member("model.onnx", 10, m.sha256) for m in listing(bomb)]
    packed = archive([regular(n) for n in sorted(bomb)], bomb)
    assert len(packed) < 100_000
    assert "expands past" in refusal(seal(packed, small, "people", "1", signer), trusted)
    honest = seal(packed, listing(bomb), "people", "1", signer)
    assert "over the limit of 1048576" in refusal(honest, trusted, max_bytes=1 << 20)


def test_members_and_index_must_agree(signer: Ed25519PrivateKey, trusted: dict) -> None:
    packed = archive([regular(n) for n in sorted(MEMBERS)], MEMBERS)
    unlisted = [m for m in listing(MEMBERS) if m.name != "labels.txt"]
    assert "member 'labels.txt' is not in the signed index" in refusal(
        seal(packed, unlisted, "p", "1", signer), trusted
    )
    extra = [*listing(MEMBERS), Member("more.onnx", 1, "00" * 32)]
    assert "indexed member 'more.onnx' is missing" in refusal(seal(packed, extra, "p", "1", signer), trusted)
    wrong = [m if m.name != "model.onnx" else Member(m.name, m.size, "ab" * 32) for m in listing(MEMBERS)]
    assert "member 'model.onnx' changed" in refusal(seal(packed, wrong, "p", "1", signer), trusted)


def test_an_encrypted_package_opens_only_with_the_device_key(signer: Ed25519PrivateKey, trusted: dict) -> None:
    device = X25519PrivateKey.generate()
    secret_weights = os.urandom(4096)
    data = package(signer, dict(MEMBERS, **{"model.onnx": secret_weights}), encrypt_for=device.public_key())
    assert secret_weights[:64] not in gzip.decompress(data[data.index(b"\n", 8) + 130 :])
    assert open_package(data, trusted, device_key=device).members["model.onnx"] == secret_weights
    assert f"encrypted for device key {key_id(device.public_key())}" in refusal(data, trusted)
    other = X25519PrivateKey.generate()
    assert "not for this device's key" in refusal(data, trusted, device_key=other)
    checked = open_package(data, trusted, require_decryption=False)  # `models verify` without the key
    assert set(checked.members) == {"manifest.yaml"} and checked.encrypted_for == key_id(device.public_key())


def test_key_files(tmp_path: Path) -> None:
    private, public = generate_key_pair(tmp_path, "site")
    assert private.stat().st_mode & 0o777 == 0o600
    key = load_signing_key(private)
    assert list(load_trusted_keys([public])) == [key_id(key.public_key())]
    assert list(load_trusted_keys([tmp_path])) == [key_id(key.public_key())]  # a folder of .pub files
    with pytest.raises(PackageError, match="never overwritten"):
        generate_key_pair(tmp_path, "site")
    private.chmod(0o644)
    with pytest.raises(PackageError, match="readable by any user"):
        load_signing_key(private)
    device, _ = generate_key_pair(tmp_path, "device", "device")
    with pytest.raises(PackageError, match="not an ed25519 key"):
        load_signing_key(device)


def test_the_store_installs_keeps_and_rolls_back(tmp_path: Path, signer: Ed25519PrivateKey, trusted: dict) -> None:
    policy = TrustPolicy(trusted)  # type: ignore[arg-type]
    store = ModelStore(tmp_path / "models")
    files = []
    for version in ("1", "2", "3", "4"):
        path = tmp_path / f"people-{version}.espkg"
        path.write_bytes(build_package(MEMBERS, name="people", version=version, signing_key=signer))
        files.append(path)
        done = store.install(path, policy)
        assert done.version == version
        assert open_package(tmp_path / "models" / "people.espkg", trusted).version == version
    assert [e["version"] for e in store.list()[0]["installed"]] == ["2", "3", "4"]  # the oldest pruned
    assert not (tmp_path / "models" / "people" / "1.espkg").exists()
    assert (store.rollback("people").version, store.rollback("people").version) == ("3", "2")
    with pytest.raises(PackageError, match="nothing to roll back"):
        store.rollback("people")
    other = tmp_path / "other-2.espkg"
    changed = dict(MEMBERS, **{"labels.txt": b"car\n"})
    other.write_bytes(build_package(changed, name="people", version="2", signing_key=signer))
    with pytest.raises(PackageError, match="installed with other contents"):
        store.install(other, policy)
    stranger = tmp_path / "stranger.espkg"
    stranger.write_bytes(build_package(MEMBERS, name="people", version="9", signing_key=Ed25519PrivateKey.generate()))
    with pytest.raises(PackageError, match="not a trusted key"):
        store.install(stranger, policy)
    assert store.list()[0]["current"] == "2"  # nothing changed by the refusals
    assert not (tmp_path / "models" / "people" / "9.espkg").exists()


def test_inference_loads_a_package_and_refuses_plain_files_when_keys_are_set(
    tmp_path: Path, shared_dir: Path, signer: Ed25519PrivateKey, trusted: dict, caplog: pytest.LogCaptureFixture
) -> None:
    model = shared_dir / "models" / "yolox_nano.onnx"
    manifest = b"name: people\nversion: '3'\nfile: yolox_nano.onnx\ndecoder: yolox\ncolor: bgr\nscale: 1.0\n"
    manifest += b"letterbox: top_left\nlabels: labels.txt\n"
    labels = "\n".join(f"class{i}" for i in range(80)).encode()
    members = {"manifest.yaml": manifest, "yolox_nano.onnx": model.read_bytes(), "labels.txt": labels}
    path = tmp_path / "people.espkg"
    path.write_bytes(build_package(members, name="people", version="3", signing_key=signer))
    policy = TrustPolicy(trusted)  # type: ignore[arg-type]
    spec = load_model_spec("people.espkg", (tmp_path,), policy)
    assert (spec.name, spec.manifest.version, spec.labels[79]) == ("people", "3", "class79")
    assert spec.file().content == model.read_bytes() and spec.digest == hashlib.sha256(model.read_bytes()).hexdigest()
    with pytest.raises(PackageError, match=r"not a signed package and site\.trusted_keys is set"):
        load_model_spec(model, (), policy, what="models.people")
    with caplog.at_level(logging.WARNING):
        load_model_spec(model, (), policy, allow_unsigned=True, what="models.people")
    assert "unsigned" in caplog.text
    assert load_model_spec(model, ()).name == "yolox_nano"  # no trusted keys: plain files as before


def sealed(signer: Ed25519PrivateKey, name: str, version: str) -> bytes:
    """Signed under any name and version, as ``seal`` allows (``build_package`` refuses what is unsafe)."""
    return seal(archive([regular(m) for m in sorted(MEMBERS)], MEMBERS), listing(MEMBERS), name, version, signer)


@pytest.mark.parametrize(
    ("name", "version"),
    [("../../escape", "1"), ("/etc/escape", "1"), (".hidden", "1"), ("a/b", "1"), ("ok\n", "1"), ("", "1"),
     ("x" * 65, "1"), ("people", "../1"), ("people", "1/2"), ("people", ".."), ("people", "")],
)  # fmt: skip
def test_a_name_or_version_that_is_not_a_plain_token_is_refused_when_made_and_opened(
    signer: Ed25519PrivateKey, trusted: dict, name: str, version: str
) -> None:
    with pytest.raises(PackageError, match="is not 1-64 letters"):
        build_package(MEMBERS, name=name, version=version, signing_key=signer)
    assert "is not 1-64 letters" in refusal(sealed(signer, name, version), trusted)


def test_versions_compare_number_by_number() -> None:
    ordered = ["1", "1.2", "1.9", "1.10", "2", "10", "10.0.1"]
    assert sorted(ordered, key=version_key) == ordered
    assert version_key("1.0+cuda") > version_key("1.0")


def versions(store: ModelStore) -> tuple[list[str], str]:
    row = store.list()[0]
    return [e["version"] for e in row["installed"]], row["current"]


def write(tmp_path: Path, signer: Ed25519PrivateKey, version: str, members: dict[str, bytes] | None = None) -> Path:
    path = tmp_path / f"people-{version}-{key_id(signer.public_key())}.espkg"
    path.write_bytes(build_package(members or MEMBERS, name="people", version=version, signing_key=signer))
    return path


def test_the_store_refuses_a_downgrade_unless_allowed(tmp_path: Path, signer: Ed25519PrivateKey, trusted: dict) -> None:
    policy = TrustPolicy(trusted)  # type: ignore[arg-type]
    store = ModelStore(tmp_path / "models")
    for version in ("2", "10"):
        assert not store.install(write(tmp_path, signer, version), policy).downgrade
    with pytest.raises(Refused, match="people 2 is older than the current version 10") as caught:
        store.install(write(tmp_path, signer, "2"), policy)
    assert (caught.value.name, caught.value.version) == ("people", "2")
    with pytest.raises(Refused, match="older than the current version 10"):
        store.install(write(tmp_path, signer, "9"), policy)
    assert versions(store) == (["2", "10"], "10") and not (tmp_path / "models" / "people" / "9.espkg").exists()
    done = store.install(write(tmp_path, signer, "9"), policy, allow_downgrade=True)
    assert (done.version, done.previous, done.downgrade) == ("9", "10", True)
    assert versions(store) == (["2", "10", "9"], "9")


def test_the_store_refuses_what_the_check_refuses_before_anything_changes(
    tmp_path: Path, signer: Ed25519PrivateKey, trusted: dict
) -> None:
    policy = TrustPolicy(trusted)  # type: ignore[arg-type]
    store = ModelStore(tmp_path / "models")
    store.install(write(tmp_path, signer, "1"), policy)

    def check(package: Package, path: Path) -> None:
        raise ModelError(f"{path}: the manifest says people 7, the signed index people {package.version}")

    with pytest.raises(Refused, match="the manifest says people 7"):
        store.install(write(tmp_path, signer, "2"), policy, check=check)
    assert versions(store) == (["1"], "1")
    assert sorted(p.name for p in (tmp_path / "models" / "people").iterdir()) == ["1.espkg", "history.json"]
    assert os.readlink(tmp_path / "models" / "people.espkg") == "people/1.espkg"


def test_pruning_keeps_the_version_in_use_and_the_newest_that_verifies(tmp_path: Path) -> None:
    kept, dropped = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    both = TrustPolicy({key_id(k.public_key()): k.public_key() for k in (kept, dropped)})
    store = ModelStore(tmp_path / "models")
    for version in ("1", "2", "3"):
        store.install(write(tmp_path, kept, version), both)
    store.rollback("people")
    store.rollback("people")  # 1 is current: services run it until they reload
    store.install(write(tmp_path, kept, "4"), both)
    assert versions(store) == (["1", "3", "4"], "4")  # 2 went, not 1 (the oldest, but in use)

    store = ModelStore(tmp_path / "other")
    store.install(write(tmp_path, kept, "2"), both)
    store.install(write(tmp_path, kept, "1"), both, allow_downgrade=True)
    store.install(write(tmp_path, dropped, "3"), both)
    only_kept = TrustPolicy({key_id(kept.public_key()): kept.public_key()})  # the other key left the site
    store.install(write(tmp_path, kept, "5"), only_kept)
    # 4 kept: 5 (current), 3 (in use until reloads) and 2 (the newest other that verifies), so 1 goes
    assert versions(store) == (["2", "3", "5"], "5")


def test_rollback_refuses_a_version_the_site_no_longer_trusts(tmp_path: Path) -> None:
    kept, dropped = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    both = TrustPolicy({key_id(k.public_key()): k.public_key() for k in (kept, dropped)})
    store = ModelStore(tmp_path / "models")
    store.install(write(tmp_path, dropped, "1"), both)
    store.install(write(tmp_path, kept, "2"), both)
    only_kept = TrustPolicy({key_id(kept.public_key()): kept.public_key()})
    with pytest.raises(PackageError, match=r"people 1 is refused; nothing changed: .*not a trusted key"):
        store.rollback("people", only_kept)
    assert versions(store) == (["1", "2"], "2")
    with pytest.raises(PackageError, match=r"package name '\.\./x'"):
        store.rollback("../x", only_kept)


def test_a_refused_current_package_falls_back_to_the_newest_installed_version_that_verifies(
    tmp_path: Path, signer: Ed25519PrivateKey
) -> None:
    dropped = Ed25519PrivateKey.generate()
    both = TrustPolicy({key_id(k.public_key()): k.public_key() for k in (signer, dropped)})
    store = ModelStore(tmp_path / "state" / "models")
    for version, key in (("1", signer), ("2", signer), ("3", dropped)):
        store.install(write(tmp_path, key, version), both)
    site = SiteSection(name="s", state_dir=tmp_path / "state")
    only = TrustPolicy({key_id(signer.public_key()): signer.public_key()})

    def load(reference: str) -> tuple[str, str | None]:
        file, signer_id = open_model(reference, site, only, allow_unsigned=False, what="apps.a.models.m")
        return open_package(file.path.parent, only.trusted).version, signer_id

    (version, signer_id), fallback = load_installed("people.espkg", site, load)
    assert (version, signer_id) == ("2", key_id(signer.public_key())) and fallback is not None
    assert (fallback.version, fallback.refused.name) == ("2", "people.espkg")
    assert key_id(dropped.public_key()) in fallback.error and "not a trusted key" in fallback.error
    assert load_installed(str(tmp_path / "state" / "models" / "people" / "2.espkg"), site, load)[1] is None

    stranger = Ed25519PrivateKey.generate().public_key()
    nothing = TrustPolicy({key_id(stranger): stranger})
    with pytest.raises(PackageError, match=r"people\.espkg: signed by key"):  # the first refusal, when none loads
        load_installed("people.espkg", site, lambda r: open_model(r, site, nothing, allow_unsigned=False, what="m"))
    plain = tmp_path / "plain.espkg"
    plain.write_bytes(write(tmp_path, dropped, "5").read_bytes())  # not in the store: no fallback
    with pytest.raises(PackageError, match="not a trusted key"):
        load_installed(str(plain), site, load)


def test_the_trust_watch_follows_the_site_file_and_the_key_files(tmp_path: Path, signer: Ed25519PrivateKey) -> None:
    keys = tmp_path / "keys"
    _, kept = generate_key_pair(keys, "kept")
    _, dropped = generate_key_pair(keys, "dropped")
    site = write_site(tmp_path, {"site": {"trusted_keys": [str(kept), str(dropped)]}})
    watch = TrustWatch(load_config(site))
    ids = set(load_trusted_keys([kept, dropped]))
    assert set(watch.policy.trusted) == ids and not watch.refresh()
    data = yaml.safe_load(site.read_text())
    data["site"]["trusted_keys"] = [str(kept)]
    site.write_text(yaml.safe_dump(data))
    assert watch.refresh() and set(watch.policy.trusted) == set(load_trusted_keys([kept]))
    assert not watch.refresh()  # nothing changed since
    kept.unlink()  # its file gone: no key is trusted, and enforcement stays on
    assert watch.refresh() and watch.policy.trusted == {} and watch.policy.enforcing
    with pytest.raises(PackageError, match="not a signed package"):
        watch.policy.check_plain(tmp_path / "m.onnx", allow_unsigned=False, what="models.m")
    site.write_text("site: [not, a, mapping\n")
    assert not watch.refresh() and watch.policy.trusted == {}  # a broken site file changes nothing

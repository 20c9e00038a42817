"""``edgesight models keygen | package | verify | install | list | rollback``: signed model packages.

A site's integrator makes a signing key once (``keygen``), packages each model version with it
(``package``: the manifest, the model, its labels, signed; optionally encrypted for one device),
and the appliance installs it (``install``: checked against ``site.trusted_keys`` and loaded as the
inference service loads it, refused if older than the current version unless ``--allow-downgrade``,
kept beside the previous versions, made current atomically — a running inference service reloads
it). Refusals are audited. The format is described in :mod:`common.trust.package`.
"""

from __future__ import annotations

import argparse
import getpass
import tempfile
from pathlib import Path
from typing import Literal

import yaml

from common.audit import AuditTrail
from common.config import SiteConfig, load_config
from common.errors import ModelError, PackageError
from common.models.labels import TABLES
from common.models.loading import load_model_spec, package_spec
from common.models.manifest import ModelManifest, read_manifest, suggest_manifest
from common.trust import (
    MANIFEST,
    PACKAGE_SUFFIX,
    ModelStore,
    Package,
    Refused,
    TrustPolicy,
    build_package,
    generate_key_pair,
    key_id,
    load_device_key,
    load_device_public_key,
    load_signing_key,
    load_trusted_keys,
    open_package,
    site_trust,
)

__all__ = ["add_commands", "run_command"]


def add_commands(models: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    keygen = models.add_parser("keygen", help="make a key pair: ed25519 for signing, or x25519 with --device")
    keygen.add_argument("--out", type=Path, required=True, help="folder for NAME.key (mode 0600) and NAME.pub")
    keygen.add_argument("--name", help="file name stem (default: signing, or device with --device)")
    keygen.add_argument("--device", action="store_true", help="a device key: packages can be encrypted for it")
    package = models.add_parser("package", help="sign a manifest, a model file or a folder into NAME.espkg")
    package.add_argument("source", type=Path, help="a manifest (.yaml), a model file (.onnx) or a folder")
    package.add_argument("--key", type=Path, required=True, help="the signing key (from `models keygen`)")
    package.add_argument("-o", "--out", type=Path, required=True, help="the package file to write (.espkg)")
    package.add_argument("--name", help="override the manifest's name")
    package.add_argument("--version", help="override the manifest's version")
    package.add_argument("--encrypt-for", type=Path, metavar="DEVICE.pub", help="encrypt for this device key")
    verify = models.add_parser("verify", help="check a package: exit 0 and what it holds, or 1 and why")
    verify.add_argument("package", type=Path, help="the package (.espkg)")
    verify.add_argument("--trusted", type=Path, action="append", default=[], help="a trusted .pub (repeatable)")
    verify.add_argument("--config", help="take the trusted keys (and device key) from this site file")
    verify.add_argument("--device-key", type=Path, help="also decrypt with this device key")
    install = models.add_parser("install", help="check a package and make it current in state_dir/models")
    install.add_argument("package", type=Path, help="the package (.espkg)")
    install.add_argument("--config", required=True, help="the site file (trusted keys, state_dir)")
    install.add_argument(
        "--allow-downgrade", action="store_true", help="install a version older than the current one (audited)"
    )
    listing = models.add_parser("list", help="installed models, their versions and signers")
    listing.add_argument("--config", required=True, help="the site file (state_dir)")
    rollback = models.add_parser("rollback", help="make the version installed before the current one current")
    rollback.add_argument("name", help="the model's name")
    rollback.add_argument("--config", required=True, help="the site file (trusted keys, state_dir)")


def run_command(args: argparse.Namespace) -> int:
    command = args.models_command
    if command == "keygen":
        kind: Literal["signing", "device"] = "device" if args.device else "signing"
        private, public = generate_key_pair(args.out, args.name or kind, kind)
        print(f"private key {private} (keep it secret; mode 0600)\npublic key  {public}")
        return 0
    if command == "package":
        return package(args)
    if command == "verify":
        return verify(args)
    config = _load(args.config)
    store = ModelStore(Path(config.site.state_dir) / "models")
    audit = AuditTrail(config.site.state_dir, config.site.name, f"cli:{getpass.getuser()}")
    if command == "install":
        return install(args, config, store, audit)
    if command == "rollback":
        done = store.rollback(args.name, site_trust(config), check=loads)
        audit.record("model.rollback", done.name, version=done.version, previous=done.previous, sha256=done.sha256)
        print(f"{done.name}: {done.previous} -> {done.version}")
        return 0
    rows = store.list()
    if not rows:
        print(f"no models installed in {store.root}")
    for row in rows:
        versions = ", ".join(("*" if e["version"] == row["current"] else "") + e["version"] for e in row["installed"])
        current = next(e for e in row["installed"] if e["version"] == row["current"])
        print(f"{row['name']:<20} {versions:<24} signer {current['signer']}  installed {current['installed']}")
    return 0


def loads(package: Package, path: Path) -> None:
    """What the inference service checks when it loads a package: its manifest is its signed index's
    name and version, and its model loads and fits the manifest."""
    package_spec(package, path)


def install(args: argparse.Namespace, config: SiteConfig, store: ModelStore, audit: AuditTrail) -> int:
    policy = site_trust(config)
    if not policy.enforcing:
        raise PackageError(f"{config.where('site', 'trusted_keys')}: empty; set the keys packages must be signed by")
    try:
        done = store.install(args.package, policy, check=loads, allow_downgrade=args.allow_downgrade)
    except PackageError as exc:  # a refusal is a security event: someone tried to install this
        opened = isinstance(exc, Refused)  # else its name is not known: the file is named instead
        audit.record(
            "model.install_refused",
            exc.name if isinstance(exc, Refused) else args.package.name,
            version=exc.version if isinstance(exc, Refused) else None,
            file=None if opened else str(args.package),
            error=str(exc),
        )
        raise
    audit.record("model.install", done.name, **done.audit_detail())
    if done.downgrade:
        print(f"downgraded {done.name} from {done.previous} to {done.version} (--allow-downgrade; audited)")
    print(f"installed {done.name} {done.version} (signer {done.signer}; previous: {done.previous or 'none'})")
    print(f"use it as models.<name>.path: {done.name}{PACKAGE_SUFFIX}")
    return 0


def _load(path: str) -> SiteConfig:
    config: SiteConfig = load_config(path)
    return config


def package(args: argparse.Namespace) -> int:
    signing_key = load_signing_key(args.key)
    recipient = load_device_public_key(args.encrypt_for) if args.encrypt_for else None
    members, manifest = collect(args.source, args.name, args.version)
    plain = build_package(members, name=manifest.name, version=manifest.version, signing_key=signing_key)
    trusted = {key_id(signing_key.public_key()): signing_key.public_key()}
    with tempfile.TemporaryDirectory() as folder:  # the model must load as the inference service will load it
        check = Path(folder) / f"check{PACKAGE_SUFFIX}"
        check.write_bytes(plain)
        spec = load_model_spec(check, (), TrustPolicy(trusted))
    data = (
        build_package(
            members, name=manifest.name, version=manifest.version, signing_key=signing_key, encrypt_for=recipient
        )
        if recipient is not None
        else plain
    )
    partial = args.out.with_name(args.out.name + ".partial")
    partial.write_bytes(data)
    partial.rename(args.out)
    print(
        f"{args.out}: {manifest.name} {manifest.version}, {len(members)} members, {len(spec.labels)} labels, "
        f"signer {key_id(signing_key.public_key())}"
        + (f", encrypted for device key {key_id(recipient)}" if recipient is not None else "")
    )
    return 0


def collect(source: Path, name: str | None, version: str | None) -> tuple[dict[str, bytes], ModelManifest]:
    """The members of a package made from ``source``; the manifest always becomes ``manifest.yaml``."""
    members: dict[str, bytes] = {}
    if source.is_dir():
        manifest_path, manifest = _find_manifest(source)
        for path in sorted(source.rglob("*")):
            if path.is_symlink():
                raise PackageError(f"{path} is a symbolic link; packages hold regular files only")
            if path.is_file() and path != manifest_path:
                members[path.relative_to(source).as_posix()] = path.read_bytes()
        text = manifest_path.read_text()
    elif source.suffix in (".yaml", ".yml"):
        manifest = read_manifest(source)
        wanted = [manifest.file]
        if isinstance(manifest.labels, str) and manifest.labels not in TABLES:
            wanted.append(manifest.labels)
        for member in wanted:
            path = source.parent / member
            if not path.is_file():
                raise PackageError(f"{source}: {member!r} does not exist beside the manifest")
            members[member] = path.read_bytes()
        text = source.read_text()
    elif source.is_file():
        manifest = suggest_manifest(source)
        members[source.name] = source.read_bytes()
        text = ""
    else:
        raise PackageError(f"{source} does not exist")
    if name or version or not text:
        manifest = manifest.model_copy(update={k: v for k, v in {"name": name, "version": version}.items() if v})
        text = yaml.safe_dump(manifest.model_dump(mode="json"), sort_keys=False)
    if manifest.file not in members:
        raise PackageError(f"{source}: the manifest's file {manifest.file!r} is not in {source}")
    members[MANIFEST] = text.encode()
    return members, manifest


def _find_manifest(folder: Path) -> tuple[Path, ModelManifest]:
    candidates = []
    for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
        try:
            candidates.append((path, read_manifest(path)))
        except ModelError:
            continue  # another YAML file of the folder: packaged as a plain member
    if len(candidates) != 1:
        found = ", ".join(p.name for p, _ in candidates) or "none"
        raise PackageError(f"{folder}: expected one model manifest (.yaml) in the folder, found {found}")
    return candidates[0]


def verify(args: argparse.Namespace) -> int:
    trusted = load_trusted_keys(args.trusted)
    device_key = load_device_key(args.device_key) if args.device_key else None
    max_bytes = 1 << 30
    if args.config:
        policy = site_trust(_load(args.config))
        trusted |= policy.trusted
        device_key = device_key or policy.device_key
        max_bytes = policy.max_bytes
    if not trusted:
        raise PackageError("no trusted keys: pass --trusted KEY.pub (or --config with site.trusted_keys)")
    opened = open_package(
        args.package, trusted, device_key=device_key, max_bytes=max_bytes, require_decryption=device_key is not None
    )
    print(f"{args.package}: OK")
    for line in opened.describe():
        print(line)
    if opened.encrypted_for and device_key is None:
        print("(encrypted members not opened: pass --device-key to check they decrypt)")
    return 0

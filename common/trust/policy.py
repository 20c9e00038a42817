"""What a site trusts: the keys it accepts packages from, its device key, and the rule for plain files."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.assets import find_asset
from common.errors import ConfigError, PackageError
from common.models import ModelFile
from common.trust.keys import load_device_key, load_trusted_keys
from common.trust.package import Package, open_package

if TYPE_CHECKING:
    from common.config.site import SiteConfig, SiteSection

__all__ = ["PACKAGE_SUFFIX", "TrustPolicy", "model_file", "model_search_path", "site_trust"]

log = logging.getLogger(__name__)

PACKAGE_SUFFIX = ".espkg"


def model_search_path(site: SiteSection) -> tuple[Path, ...]:
    """Installed packages (``state_dir/models``, see ``edgesight models install``) first, then the asset path."""
    return (Path(site.state_dir) / "models", *site.asset_paths)


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    trusted: dict[str, Ed25519PublicKey] = dataclasses.field(default_factory=dict)
    device_key: X25519PrivateKey | None = None
    max_bytes: int = 1 << 30

    @classmethod
    def from_site(cls, site: SiteSection) -> TrustPolicy:
        """Raises PackageError naming the key file that cannot be used."""
        return cls(
            trusted=load_trusted_keys(site.trusted_keys),
            device_key=load_device_key(site.device_key) if site.device_key else None,
            max_bytes=site.max_package_mb << 20,
        )

    @property
    def enforcing(self) -> bool:
        """With trusted keys set, only their packages run (and plain files that say allow_unsigned)."""
        return bool(self.trusted)

    def open(self, path: Path, data: bytes | None = None) -> Package:
        """The package at ``path`` (or its bytes already read, ``data``), checked under this policy."""
        source = path if data is None else data
        return open_package(source, self.trusted, device_key=self.device_key, max_bytes=self.max_bytes, label=str(path))

    def check_plain(self, path: Path, *, allow_unsigned: bool, what: str) -> None:
        """Refuses a plain model file where packages are required, or warns where it is allowed."""
        if not self.enforcing:
            return
        if not allow_unsigned:
            raise PackageError(
                f"{path} is not a signed package and site.trusted_keys is set: package it "
                f"(`edgesight models package`) or set allow_unsigned: true on {what}"
            )
        log.warning("running an unsigned model file (allow_unsigned: true)", extra={"model": what, "path": str(path)})


def site_trust(config: SiteConfig) -> TrustPolicy:
    """The site's trust policy; a key file that cannot be used is a ConfigError naming its key."""
    try:
        return TrustPolicy.from_site(config.site)
    except PackageError as exc:
        key = "device_key" if "device key" in str(exc) else "trusted_keys"
        raise ConfigError([f"{config.where('site', key)}: {exc}"]) from None


def model_file(reference: str, site: SiteSection, policy: TrustPolicy, *, allow_unsigned: bool, what: str) -> ModelFile:
    """The model file an app's model node names: a plain file (where the policy allows it), or the
    file a package's manifest names, handed over in memory."""
    path = find_asset(reference, model_search_path(site))
    if path.suffix != PACKAGE_SUFFIX:
        policy.check_plain(path, allow_unsigned=allow_unsigned, what=what)
        return ModelFile.at(path, what)
    package = policy.open(path)
    manifest = yaml.safe_load(package.manifest)
    member = manifest.get("file") if isinstance(manifest, dict) else None
    if not isinstance(member, str) or member not in package.members:
        raise PackageError(f"{path}: its manifest names no model file of the package")
    content = package.members[member]
    return ModelFile(path / member, what, hashlib.sha256(content).hexdigest(), None, content)

"""What a site trusts: the keys it accepts packages from, its device key, and the rule for plain files."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from common.config.loader import load_config
from common.errors import ConfigError, EdgeSightError, PackageError
from common.trust.encryption import engine_cache_key_of
from common.trust.keys import key_files, key_id, load_device_key, load_trusted_keys
from common.trust.package import Package, open_package

if TYPE_CHECKING:
    from common.config.site import SiteConfig, SiteSection

__all__ = [
    "PACKAGE_SUFFIX",
    "TrustPolicy",
    "TrustWatch",
    "model_search_path",
    "site_trust",
]

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
    # the site set trusted_keys: enforcing even when none of them loads any more (re-read after a change)
    required: bool = False

    @classmethod
    def from_site(cls, site: SiteSection) -> TrustPolicy:
        """Raises PackageError naming the key file that cannot be used."""
        return cls(
            trusted=load_trusted_keys(site.trusted_keys),
            device_key=load_device_key(site.device_key) if site.device_key else None,
            max_bytes=site.max_package_mb << 20,
            required=bool(site.trusted_keys),
        )

    @property
    def engine_seal(self) -> bytes | None:
        """The key cached engines are sealed with (``site.device_key``'s); None: they are checked only."""
        return engine_cache_key_of(self.device_key) if self.device_key is not None else None

    @property
    def enforcing(self) -> bool:
        """With trusted keys set, only their packages run (and plain files that say allow_unsigned)."""
        return self.required or bool(self.trusted)

    def summary(self) -> tuple[frozenset[str], bool, str | None]:
        """What decides a load: the trusted key ids, enforcement, the device key's id."""
        device = key_id(self.device_key.public_key()) if self.device_key is not None else None
        return frozenset(self.trusted), self.enforcing, device

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


class TrustWatch:
    """The site's trust policy, read again when the site file or a key file changes, so that a key taken
    out of ``site.trusted_keys`` (or whose file is deleted) stops the next load without a restart.

    Polled (:meth:`refresh`) by whoever loads models; thread-safe. A key file that no longer loads is
    left out (logged) rather than failing the service, and enforcement stays on while the site names
    any key: removing keys never lets a plain model file in."""

    def __init__(self, config: SiteConfig) -> None:
        source = Path(config.source)
        self.source = source if source.is_file() else None  # a config made in memory has nothing to re-read
        self.site = config.site
        self.policy = site_trust(config)  # at start a bad key file is an error, as before
        self._lock = threading.Lock()
        self._stamp = self._stamps()

    def refresh(self, *, force: bool = False) -> bool:
        """Reads the keys again if a file changed (or ``force``); True when what is trusted changed."""
        with self._lock:
            stamp = self._stamps()
            if stamp == self._stamp and not force:
                return False
            self._stamp = stamp  # a site file that does not load is reported once, until it changes again
            if self.source is not None:
                try:
                    self.site = load_config(self.source).site
                except EdgeSightError as exc:
                    log.error("the site file does not load; trusted keys unchanged", extra={"error": str(exc)})
                    return False
                self._stamp = self._stamps()  # the key paths may have changed with the file
            before, self.policy = self.policy, _reread(self.site, self.policy)
            if self.policy.summary() == before.summary():
                return False
            log.warning(
                "site.trusted_keys changed: the next load is checked against the new keys",
                extra={"trusted": ", ".join(sorted(self.policy.trusted)) or "none"},
            )
            return True

    def _stamps(self) -> tuple[tuple[str, Any], ...]:
        """What a change to the site file, a key file or a key folder's listing changes."""
        site = self.site
        paths = [*([self.source] if self.source else []), *site.trusted_keys, *key_files(site.trusted_keys)]
        paths += [site.device_key] if site.device_key else []
        return tuple((str(path), _stat(path)) for path in paths)


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size, status.st_ino


def _reread(site: SiteSection, previous: TrustPolicy) -> TrustPolicy:
    trusted: dict[str, Ed25519PublicKey] = {}
    for file in key_files(site.trusted_keys):
        try:
            trusted |= load_trusted_keys([file])
        except PackageError as exc:  # deleted or broken: whatever it held is trusted no more
            log.error("a trusted key does not load; it is no longer trusted", extra={"error": str(exc)})
    device_key = None
    if site.device_key:
        try:
            device_key = load_device_key(site.device_key)
        except PackageError as exc:  # decryption only, not trust: keep opening what this device could open
            log.error("the device key does not load; the previous one stays", extra={"error": str(exc)})
            device_key = previous.device_key
    return TrustPolicy(trusted, device_key, site.max_package_mb << 20, required=bool(site.trusted_keys))

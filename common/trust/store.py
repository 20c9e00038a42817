"""Where a site installs packages: ``state_dir/models``.

Each package is kept as ``NAME/VERSION.espkg``; ``NAME.espkg`` is a symbolic link to the current
one, replaced atomically (a new link renamed over the old), so a model path ``NAME.espkg`` always
names a whole package and the inference service's file watch reloads the new one. The last
``KEEP`` versions stay for ``rollback`` and for a service to fall back on when the current one is
refused at start (:func:`load_installed`); ``NAME/history.json`` records what was installed when.

``install`` refuses before the store changes: a package the site's keys do not verify, a name or
version that is not a plain token, a package the caller's ``check`` refuses (the CLI runs the
inference service's own load), and a version lower than the current one unless
``allow_downgrade``. Versions compare number by number (``1.10`` is newer than ``1.9``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from common.assets import find_asset
from common.errors import EdgeSightError, PackageError
from common.trust.package import Package, check_identity, check_name
from common.trust.policy import PACKAGE_SUFFIX, TrustPolicy, model_search_path

if TYPE_CHECKING:
    from common.config.site import SiteSection

__all__ = ["Fallback", "Installed", "ModelStore", "Refused", "installed_fallbacks", "load_installed", "version_key"]

log = logging.getLogger(__name__)

KEEP = 3

Check = Callable[[Package, Path], object]  # raises (ModelError, PackageError) when the package would not load
Loaded = TypeVar("Loaded")


@dataclasses.dataclass(frozen=True)
class Installed:
    name: str
    version: str
    previous: str | None
    signer: str
    sha256: str
    downgrade: bool = False

    def audit_detail(self) -> dict[str, Any]:
        """The detail of its ``model.install`` audit record, wherever it was installed from (``edgesight
        models install``, a fleet job): ``downgrade`` only on a downgrade, so the other records stay as they were."""
        return {
            "version": self.version,
            "previous": self.previous,
            "signer": self.signer,
            "sha256": self.sha256,
            "downgrade": True if self.downgrade else None,
        }


class Refused(PackageError):
    """``install`` refused a package that opened: its name and version, for the audit trail."""

    def __init__(self, message: str, name: str, version: str) -> None:
        super().__init__(message)
        self.name, self.version = name, version


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """Digits compare as numbers, the rest as text: ``2 < 10``, ``1.9 < 1.10``."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|[^\d.+_-]+", version))


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def install(
        self, path: Path, policy: TrustPolicy, *, check: Check | None = None, allow_downgrade: bool = False
    ) -> Installed:
        """Checks ``path`` under ``policy`` (and ``check``), then makes it the current version of its model."""
        data = _read(path, policy.max_bytes + (1 << 20))
        package = policy.open(path, data)  # the very bytes stored; refused here, before the store changes
        try:
            return self._install(path, data, package, policy, check, allow_downgrade)
        except EdgeSightError as exc:
            raise Refused(str(exc), package.name, package.version) from None

    def _install(
        self, path: Path, data: bytes, package: Package, policy: TrustPolicy, check: Check | None, downgrade: bool
    ) -> Installed:
        check_identity(package.name, package.version, str(path))  # open_package did; this store writes by them
        history = self._history(package.name)
        previous = history["current"]
        older = previous is not None and version_key(package.version) < version_key(previous)
        if older and not downgrade:
            raise PackageError(
                f"{path}: {package.name} {package.version} is older than the current version {previous}; "
                "refused as a downgrade (install it with --allow-downgrade if that is what you mean)"
            )
        if check is not None:
            check(package, path)  # what the inference service will refuse must not become current
        folder = self.root / package.name
        target = folder / f"{package.version}{PACKAGE_SUFFIX}"
        digest = hashlib.sha256(data).hexdigest()
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != digest:
            raise PackageError(
                f"{package.name} version {package.version} is installed with other contents; "
                "give the new package another version"
            )
        folder.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            partial = target.with_suffix(".partial")
            with partial.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            partial.rename(target)
        history["current"] = package.version
        history["installed"] = [e for e in history["installed"] if e["version"] != package.version] + [
            _entry(package, digest)
        ]
        self._point(package.name, target)
        # the new current, and the version services run until they have reloaded, are in use
        self._prune(package.name, history, {package.version, *([previous] if previous else [])}, policy, check)
        self._save(package.name, history)
        return Installed(package.name, package.version, previous, package.signer, digest, bool(older))

    def rollback(self, name: str, policy: TrustPolicy | None = None, *, check: Check | None = None) -> Installed:
        """Makes the version installed before the current one current again (checked under ``policy``
        and ``check`` first, when given: a version whose signer is no longer trusted is not rolled to)."""
        check_name(name)
        history = self._history(name)
        versions = [e["version"] for e in history["installed"]]
        if history["current"] is None or history["current"] not in versions:
            raise PackageError(f"no model {name!r} is installed in {self.root}")
        position = versions.index(history["current"])
        if position == 0:
            raise PackageError(f"{name} {history['current']} is the oldest version kept; nothing to roll back to")
        entry = history["installed"][position - 1]
        target = self._file(name, entry["version"])
        if policy is not None:
            try:
                _verify(target, policy, check)
            except EdgeSightError as exc:
                raise PackageError(f"{name} {entry['version']} is refused; nothing changed: {exc}") from None
        previous = history["current"]
        self._point(name, target)
        history["current"] = entry["version"]
        self._save(name, history)
        return Installed(name, entry["version"], previous, entry["signer"], entry["sha256"])

    def fallbacks(self, name: str) -> list[Path]:
        """The installed versions of ``name`` but the current one, newest first: what a service may
        start on when the current package is refused."""
        check_name(name)
        current = (self.root / f"{name}{PACKAGE_SUFFIX}").resolve()
        entries = sorted(self._history(name)["installed"], key=lambda e: version_key(e["version"]), reverse=True)
        files = [self._file(name, e["version"]) for e in entries]
        return [file for file in files if file.is_file() and file.resolve() != current]

    def list(self) -> list[dict[str, Any]]:
        rows = []
        for folder in sorted(p for p in self.root.glob("*") if (p / "history.json").is_file()):
            history = self._history(folder.name)
            rows.append({"name": folder.name, **history})
        return rows

    def _file(self, name: str, version: str) -> Path:
        check_identity(name, version)  # names from history.json too: never a path out of the store
        return self.root / name / f"{version}{PACKAGE_SUFFIX}"

    def _history(self, name: str) -> dict[str, Any]:
        path = self.root / name / "history.json"
        if not path.is_file():
            return {"current": None, "installed": []}
        return json.loads(path.read_text())  # type: ignore[no-any-return]

    def _save(self, name: str, history: dict[str, Any]) -> None:
        path = self.root / name / "history.json"
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(history, indent=2) + "\n")
        partial.rename(path)

    def _point(self, name: str, target: Path) -> None:
        link = self.root / f"{name}{PACKAGE_SUFFIX}"
        fresh = link.with_name(f".{link.name}.new")
        fresh.unlink(missing_ok=True)
        fresh.symlink_to(target.relative_to(self.root))
        fresh.rename(link)  # atomic: readers see the old package or the new one, never neither

    def _prune(
        self, name: str, history: dict[str, Any], in_use: set[str], policy: TrustPolicy, check: Check | None
    ) -> None:
        """Drops the oldest versions past ``KEEP``, but never one in use nor the newest other version that
        still verifies: that is what a service starts on if the current one is refused."""
        if len(history["installed"]) <= KEEP:
            return
        keep = set(in_use)
        for entry in sorted(history["installed"], key=lambda e: version_key(e["version"]), reverse=True):
            if entry["version"] in in_use:
                continue
            try:
                _verify(self._file(name, entry["version"]), policy, check)
            except EdgeSightError:
                continue
            keep.add(entry["version"])
            break
        while len(history["installed"]) > KEEP:
            oldest = next((e for e in history["installed"] if e["version"] not in keep), None)
            if oldest is None:
                break
            history["installed"].remove(oldest)
            self._file(name, oldest["version"]).unlink(missing_ok=True)


@dataclasses.dataclass(frozen=True)
class Fallback:
    """A service started on an older installed version because the current one was refused."""

    path: Path  # the version started on
    version: str
    refused: Path  # the current package (``NAME.espkg``)
    error: str


def installed_fallbacks(reference: str, site: SiteSection) -> tuple[Path | None, list[Path]]:
    """When ``reference`` names the current package of the site's model store, that link and the other
    installed versions, newest first; else ``(None, [])``."""
    root = Path(site.state_dir) / "models"
    try:
        path = find_asset(reference, model_search_path(site))
        if path.suffix != PACKAGE_SUFFIX or not path.is_symlink() or path.parent.resolve() != root.resolve():
            return None, []
        return path, ModelStore(root).fallbacks(path.stem)
    except (EdgeSightError, OSError, ValueError):  # not installed, or a history.json that does not read
        return None, []


def load_installed(reference: str, site: SiteSection, load: Callable[[str], Loaded]) -> tuple[Loaded, Fallback | None]:
    """``load(reference)``; if that refuses the current version of an installed package, the newest other
    installed version that loads, rather than no model at all (a service that cannot start restarts
    forever). Raises the first refusal when nothing loads."""
    try:
        return load(reference), None
    except EdgeSightError as exc:
        refused = exc
        link, candidates = installed_fallbacks(reference, site)
    if link is None:
        raise refused
    for candidate in candidates:
        try:
            loaded = load(str(candidate))
        except EdgeSightError as exc:
            log.warning("an older installed version is refused too", extra={"path": str(candidate), "error": str(exc)})
            continue
        return loaded, Fallback(candidate, candidate.stem, link, str(refused))
    raise refused


def _verify(path: Path, policy: TrustPolicy, check: Check | None) -> None:
    package = policy.open(path)
    if check is not None:
        check(package, path)


def _entry(package: Package, digest: str) -> dict[str, str]:
    return {
        "version": package.version,
        "signer": package.signer,
        "sha256": digest,
        "installed": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _read(path: Path, limit: int) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise PackageError(f"{path}: {path.stat().st_size} bytes, over the limit of {limit} (site.max_package_mb)")
        return path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: {exc.strerror or exc}") from None

"""Where a site installs packages: ``state_dir/models``.

Each package is kept as ``NAME/VERSION.espkg``; ``NAME.espkg`` is a symbolic link to the current
one, replaced atomically (a new link renamed over the old), so a model path ``NAME.espkg`` always
names a whole package and the inference service's file watch reloads the new one. The last
``KEEP`` versions stay for ``rollback``; ``NAME/history.json`` records what was installed when.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from common.errors import PackageError
from common.trust.package import Package
from common.trust.policy import PACKAGE_SUFFIX, TrustPolicy

__all__ = ["Installed", "ModelStore"]

KEEP = 3


@dataclasses.dataclass(frozen=True)
class Installed:
    name: str
    version: str
    previous: str | None
    signer: str
    sha256: str


class ModelStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def install(self, path: Path, policy: TrustPolicy) -> Installed:
        """Checks ``path`` under ``policy``, then makes it the current version of its model."""
        data = _read(path, policy.max_bytes + (1 << 20))
        package = policy.open(path, data)  # the very bytes stored; refused here, before the store changes
        folder = self.root / package.name
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{_safe(package.version)}{PACKAGE_SUFFIX}"
        digest = hashlib.sha256(data).hexdigest()
        if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() != digest:
            raise PackageError(
                f"{package.name} version {package.version} is installed with other contents; "
                "give the new package another version"
            )
        if not target.exists():
            partial = target.with_suffix(".partial")
            with partial.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            partial.rename(target)
        history = self._history(package.name)
        previous = history["current"]
        history["current"] = package.version
        history["installed"] = [e for e in history["installed"] if e["version"] != package.version] + [
            _entry(package, digest)
        ]
        self._point(package.name, target)
        self._prune(package.name, history)
        self._save(package.name, history)
        return Installed(package.name, package.version, previous, package.signer, digest)

    def rollback(self, name: str) -> Installed:
        """Makes the version installed before the current one current again."""
        history = self._history(name)
        versions = [e["version"] for e in history["installed"]]
        if history["current"] is None or history["current"] not in versions:
            raise PackageError(f"no model {name!r} is installed in {self.root}")
        position = versions.index(history["current"])
        if position == 0:
            raise PackageError(f"{name} {history['current']} is the oldest version kept; nothing to roll back to")
        entry = history["installed"][position - 1]
        previous = history["current"]
        self._point(name, self.root / name / f"{_safe(entry['version'])}{PACKAGE_SUFFIX}")
        history["current"] = entry["version"]
        self._save(name, history)
        return Installed(name, entry["version"], previous, entry["signer"], entry["sha256"])

    def list(self) -> list[dict[str, Any]]:
        rows = []
        for folder in sorted(p for p in self.root.glob("*") if (p / "history.json").is_file()):
            history = self._history(folder.name)
            rows.append({"name": folder.name, **history})
        return rows

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

    def _prune(self, name: str, history: dict[str, Any]) -> None:
        while len(history["installed"]) > KEEP:
            oldest = history["installed"].pop(0)
            (self.root / name / f"{_safe(oldest['version'])}{PACKAGE_SUFFIX}").unlink(missing_ok=True)


def _entry(package: Package, digest: str) -> dict[str, str]:
    return {
        "version": package.version,
        "signer": package.signer,
        "sha256": digest,
        "installed": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _safe(version: str) -> str:
    if not version or "/" in version or version.startswith(".") or "\0" in version:
        raise PackageError(f"version {version!r} cannot name a file")
    return version


def _read(path: Path, limit: int) -> bytes:
    try:
        if path.stat().st_size > limit:
            raise PackageError(f"{path}: {path.stat().st_size} bytes, over the limit of {limit} (site.max_package_mb)")
        return path.read_bytes()
    except OSError as exc:
        raise PackageError(f"{path}: {exc.strerror or exc}") from None

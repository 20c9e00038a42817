"""An app's model nodes, loaded and run by the apps service: the app never holds a model file.

A model loads at its node's first call, checked against ``site.trusted_keys`` as the site file says
then (followed while the app runs: a key taken out is reported for the models it signed, which run
on until the app restarts); an installed package refused at load gives way to the newest installed
version that verifies. Feeds are cast and reshaped to the model's inputs as Neo's runtime did.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from common.audit import AuditTrail
from common.config import AppConfig, SiteConfig
from common.errors import EdgeSightError
from common.models import Backend, TensorSpec, open_backend
from common.models.loading import open_model
from common.trust import TrustWatch, load_installed

__all__ = ["AppModels"]

log = logging.getLogger(__name__)

TRUST_POLL_S = 1.0  # how often a call looks at the site file and key files (a few stat calls)


class AppModels:
    """The model nodes of one app. Thread-safe: calls run on worker threads, one at a time per node."""

    def __init__(self, config: SiteConfig, name: str, app: AppConfig, audit: AuditTrail) -> None:
        self.config, self.app_name, self.app = config, name, app
        self._audit = audit
        self._models: dict[str, Backend] = {}
        self._signers: dict[str, str | None] = {}  # model node -> its package's signer (None: a plain file)
        self._locks = {node: threading.Lock() for node in app.models}
        self._load_lock = threading.Lock()
        self._trust: TrustWatch | None = None
        self._trust_polled = 0.0

    def backend(self, name: str) -> Backend:
        if name not in self.app.models:
            raise EdgeSightError(
                f"model node {name!r} is not in apps.{self.app_name}.models ({sorted(self.app.models)})"
            )
        with self._load_lock:
            trust = self._trusted()
            backend = self._models.get(name)
            if backend is not None:
                return backend
            model = self.app.models[name]
            what = f"apps.{self.app_name}.models.{name}"
            site = self.config.site

            def load(reference: str) -> tuple[Backend, str | None]:
                file, signer = open_model(reference, site, trust.policy, allow_unsigned=model.allow_unsigned, what=what)
                return open_backend(file, model.backend, model.providers), signer

            (backend, signer), fallback = load_installed(model.path, site, load)
            if fallback is not None:
                log.warning(
                    f"{what}: the current package is refused; running version {fallback.version}: {fallback.error}",
                    extra={"app": self.app_name},
                )
                self._record(
                    "model.fallback",
                    what,
                    version=fallback.version,
                    refused=fallback.refused.name,
                    error=fallback.error,
                )
            self._models[name], self._signers[name] = backend, signer
            return backend

    def info(self, name: str) -> dict[str, list[dict[str, Any]]]:
        backend = self.backend(name)
        return {"inputs": [_spec(s) for s in backend.inputs], "outputs": [_spec(s) for s in backend.outputs]}

    def run(self, name: str, feeds: Mapping[str, npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        backend = self.backend(name)
        with self._locks[name]:
            return [np.ascontiguousarray(output) for output in backend.run_named(feeds)]

    def close(self) -> None:
        for backend in self._models.values():
            backend.close()
        self._models.clear()

    def _trusted(self) -> TrustWatch:
        """The site's keys as the site file says now; a model whose signer was taken out is reported."""
        now = time.monotonic()
        if self._trust is None:
            self._trust = TrustWatch(self.config)
            self._trust.refresh(force=True)  # the site file as it is now, not as it was when the service started
            self._trust_polled = now
        elif now - self._trust_polled >= TRUST_POLL_S:
            self._trust_polled = now
            if not self._trust.refresh():
                return self._trust
            policy = self._trust.policy
            for node, signer in self._signers.items():
                what = f"apps.{self.app_name}.models.{node}"
                if signer is None and policy.enforcing and not self.app.models[node].allow_unsigned:
                    error = f"{what}: a plain model file, and site.trusted_keys is now set"
                elif signer is not None and signer not in policy.trusted:
                    error = f"{what}: signed by key {signer}, which is no longer a trusted key"
                else:
                    continue
                log.warning(f"{error}; it runs until the app restarts, when it is refused")
                self._record("model.untrusted", what, error=error)
        return self._trust

    def _record(self, action: str, target: str, **detail: Any) -> None:
        try:
            self._audit.record(action, target, **detail)
        except OSError as exc:  # an audit trail that cannot be written is reported, never the app's end
            log.error("cannot append to the audit trail", extra={"path": str(self._audit.path), "error": str(exc)})


def _spec(spec: TensorSpec) -> dict[str, Any]:
    return {"name": spec.name, "shape": list(spec.shape), "dtype": spec.dtype}

"""`edgesight run`'s choices made before any process starts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.cli import supervisor
from common.config import load_config
from tests.conftest import write_site


def test_children_never_share_a_metrics_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A service without a configured port gets one from bind(0), and the kernel hands a released port out
    again: two camera groups' ingest once got one port (`port 43831 is given to both ...`)."""
    cameras = {name: {"url": f"rtsp://h/{name}", "ingest_group": name} for name in ("east", "west", "north")}
    site = write_site(tmp_path, {"cameras": cameras})
    config = load_config(site)
    configured = config.metrics.port("uplink")
    # what bind(0) answers: a port configured for a service, then one port twice, then others
    picks: Iterator[int] = iter([configured, 40001, 40001, 40002, 40003])

    class Probe:
        def __enter__(self) -> Probe:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def bind(self, address: tuple[str, int]) -> None:
            assert address == ("127.0.0.1", 0)
            self.port = next(picks)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

    monkeypatch.setattr(socket, "socket", Probe)  # the supervisor's own module: for this construction only
    children = supervisor.Supervisor(config, site, ["broker", "ingest", "uplink"]).children
    monkeypatch.undo()
    ports = {name: child.metrics_port for name, child in children.items()}
    assert [ports[f"ingest@{group}"] for group in ("east", "north", "west")] == [40001, 40002, 40003], ports
    assert ports["uplink"] == configured and ports["ingest"] == config.metrics.port("ingest")
    assert len(set(ports.values())) == len(ports), ports

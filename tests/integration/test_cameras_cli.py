"""``edgesight cameras probe`` against a real RTSP server; ``discover`` against a real WS-Discovery peer."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from wsdiscovery import QName, Scope
from wsdiscovery.publishing import ThreadedWSPublishing

from services.ingest.cameras import NVT_NAMESPACE
from tests.integration.conftest import RtspServer


def edgesight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.cli.main", *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_probe_reports_the_stream_and_decodes(
    long_clip: Path, rtsp_servers: Callable[..., RtspServer], python_env: dict[str, str]
) -> None:
    server = rtsp_servers({"cam": long_clip})
    url = server.url("cam").replace("rtsp://", "rtsp://admin:topsecret@")
    result = edgesight("cameras", "probe", url, "--frames", "10", env=python_env)
    assert result.returncode == 0, result.stderr
    assert "codec      h264  854x480  25.00 fps" in result.stdout
    assert "decoded    10 frames" in result.stdout
    assert "topsecret" not in result.stdout + result.stderr
    assert "rtsp://admin:***@127.0.0.1" in result.stdout


def test_probe_of_a_wrong_path_says_why(rtsp_servers: Callable[..., RtspServer], python_env: dict[str, str]) -> None:
    server = rtsp_servers({"cam": Path("/nonexistent.mp4")})
    result = edgesight("cameras", "probe", server.url("nosuch"), "--timeout", "5", env=python_env)
    assert result.returncode == 1
    assert "404 Not Found" in result.stderr


@pytest.fixture
def onvif_peer() -> Iterator[None]:
    """A WS-Discovery peer announcing an ONVIF video transmitter, as a camera would."""
    publisher = ThreadedWSPublishing()
    publisher.start()
    publisher.publishService(
        types=[QName(NVT_NAMESPACE, "NetworkVideoTransmitter", "dn")],
        scopes=[Scope("onvif://www.onvif.org/name/Loading%20Bay"), Scope("onvif://www.onvif.org/hardware/T1")],
        xAddrs=["http://127.0.0.1:8899/onvif/device_service"],
    )
    yield
    publisher.stop()


# The publishing side of the library fails to answer over IPv6 on this host, in its own thread.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_discover_finds_an_onvif_camera(onvif_peer: None, python_env: dict[str, str], tmp_path: Path) -> None:
    result = edgesight("cameras", "discover", "--timeout", "2", env=python_env)
    assert result.returncode == 0, result.stderr
    block = yaml.safe_load(result.stdout)
    assert block["cameras"]["loading-bay"] == {"url": "rtsp://127.0.0.1:554/STREAM-PATH"}
    assert "loading-bay: http://127.0.0.1:8899/onvif/device_service" in result.stderr
    # ready to paste: with a site name it is a valid site file
    site = tmp_path / "site.yaml"
    site.write_text("site: {name: s}\n" + result.stdout)
    assert edgesight("config", "check", str(site), env=python_env).returncode == 0

"""``edgesight cameras probe URL`` and ``edgesight cameras discover``: find and check cameras.

Also runnable as ``python -m services.ingest.cameras``; the ``edgesight`` CLI hands over to it,
so the CLI never imports a service.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any

import yaml

from common.errors import EdgeSightError
from services.ingest.decode import DecodeSession, SourceError
from services.ingest.source import Source

__all__ = ["discover", "main", "probe"]

NVT_NAMESPACE = "http://www.onvif.org/ver10/network/wsdl"


def probe(url: str, frames: int, timeout_s: float, transport: str, decoder: str | None) -> int:
    source = Source.parse(url, transport="udp" if transport == "udp" else "tcp")
    print(f"source     {source}")
    started = time.perf_counter()
    with DecodeSession(source, timeout_s=timeout_s, decoder=decoder) as session:
        info = session.open()
        print(f"codec      {info.codec}  {info.width}x{info.height}  {info.rate or 0:.2f} fps (as the stream says)")
        decoder_note = f"  (fell back: {info.fallback})" if info.fallback else ""
        print(f"decoder    {info.decoder}{decoder_note}")
        count, first, decode_s = 0, 0.0, 0.0
        for frame, spent in session.frames():
            count += 1
            decode_s += spent
            if count == 1:
                first = time.perf_counter() - started
                print(f"first      frame after {first:.2f} s ({frame.format.name}, {frame.width}x{frame.height})")
            if count >= frames:
                break
    elapsed = time.perf_counter() - started - first
    if count == 0:
        print("no frame decoded")
        return 1
    rate = (count - 1) / elapsed if count > 1 and elapsed > 0 else 0.0
    print(f"decoded    {count} frames, {1000 * decode_s / count:.1f} ms each to decode, arriving at {rate:.1f} fps")
    return 0


def _search(timeout_s: float) -> list[tuple[str, list[str], list[str]]]:
    """WS-Discovery probe for ONVIF video transmitters: (device service URL, all URLs, scopes)."""
    from wsdiscovery import QName
    from wsdiscovery.discovery import ThreadedWSDiscovery

    discovery = ThreadedWSDiscovery()
    discovery.start()
    try:
        found = discovery.searchServices(types=[QName(NVT_NAMESPACE, "NetworkVideoTransmitter")], timeout=timeout_s)
    finally:
        discovery.stop()
    devices = []
    for service in found:
        addresses = sorted(service.getXAddrs())
        if addresses:
            devices.append((addresses[0], addresses, sorted(str(scope) for scope in service.getScopes())))
    return sorted(devices)


async def _stream_uris(address: str, username: str, password: str) -> list[tuple[str, str]]:
    """(profile name, RTSP URI) of every media profile of the ONVIF device at ``address``."""
    from onvif import ONVIFCamera

    parts = urllib.parse.urlsplit(address)
    camera = ONVIFCamera(parts.hostname or "", parts.port or 80, username, password)
    try:
        await camera.update_xaddrs()
        media = await camera.create_media_service()
        uris = []
        for profile in await media.GetProfiles():
            request = {
                "StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                "ProfileToken": profile.token,
            }
            uris.append((str(profile.Name), str((await media.GetStreamUri(request)).Uri)))
        return uris
    finally:
        await camera.close()


def _camera_name(address: str, scopes: list[str]) -> str:
    for scope in scopes:
        if "/name/" in scope:
            name = urllib.parse.unquote(scope.rsplit("/name/", 1)[1])
            break
    else:
        name = urllib.parse.urlsplit(address).hostname or "camera"
    cleaned = "".join(c if c.isalnum() or c in "-_" else "-" for c in name.lower()).strip("-")
    return cleaned[:64] or "camera"


def discover(timeout_s: float, username: str | None, password: str | None) -> int:
    print(f"# searching the LAN for ONVIF cameras ({timeout_s:g} s)...", file=sys.stderr)
    devices = _search(timeout_s)
    if not devices:
        print("# no ONVIF camera answered (is multicast allowed on this network?)", file=sys.stderr)
        return 1
    cameras: dict[str, dict[str, Any]] = {}
    for address, _, scopes in devices:
        name = _camera_name(address, scopes)
        host = urllib.parse.urlsplit(address).hostname
        entry: dict[str, Any] = {"url": f"rtsp://{host}:554/STREAM-PATH"}
        if username is not None:
            try:
                profiles = asyncio.run(_stream_uris(address, username, password or ""))
            except Exception as exc:  # any SOAP/HTTP failure: report it, keep listing the others
                print(f"# {address}: cannot read stream URIs: {type(exc).__name__}: {exc}", file=sys.stderr)
                profiles = []
            if profiles:
                entry = {"url": profiles[0][1], "username": username, "password": "${CAMERA_PASSWORD}"}
                for profile, uri in profiles[1:]:
                    cameras[f"{name}-{profile}".lower()[:64]] = {**entry, "url": uri, "enabled": False}
        cameras[name] = entry
        print(f"# {name}: {address}", file=sys.stderr)
    if username is None:
        print("# pass --username (and $ONVIF_PASSWORD) to read each camera's stream URIs", file=sys.stderr)
    print(yaml.safe_dump({"cameras": cameras}, sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgesight cameras", description="Find and check cameras.")
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="one of these; each has its own --help"
    )
    what = "open a camera, print codec, size and rate, decode a few frames"
    probe_parser = commands.add_parser("probe", help=what, description=what)
    probe_parser.add_argument("url", help="rtsp://, http(s)://, a file or /dev/videoN")
    probe_parser.add_argument("--frames", type=int, default=25, help="frames to decode (default 25)")
    probe_parser.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the source")
    probe_parser.add_argument("--transport", choices=("tcp", "udp"), default="tcp", help="RTSP transport")
    probe_parser.add_argument("--decoder", help="FFmpeg decoder to try first, e.g. h264_v4l2m2m")
    what = "find ONVIF cameras on the LAN (WS-Discovery), print a cameras: block for a site file"
    find = commands.add_parser("discover", help=what, description=what)
    find.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for answers")
    find.add_argument("--username", help="with credentials, read each camera's RTSP URIs over ONVIF")
    find.add_argument("--password", help="the ONVIF password (or set it in $ONVIF_PASSWORD)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "probe":
            return probe(args.url, args.frames, args.timeout, args.transport, args.decoder)
        return discover(args.timeout, args.username, args.password or os.environ.get("ONVIF_PASSWORD"))
    except (SourceError, EdgeSightError) as exc:
        print(f"edgesight cameras {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

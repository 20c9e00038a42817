"""A real RTSP server for tests: GStreamer's gst-rtsp-server serving MP4 files without re-encoding.

Run with the system interpreter, which has the GObject bindings (``python3-gi``):

    /usr/bin/python3 tests/servers/rtsp_server.py --port 8554 /cam1=/tmp/a.mp4 /cam2=/tmp/b.mp4:h265

Each client gets its own pipeline from the start of the file. Prints ``ready <port>`` once listening.
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

PIPELINE = "( filesrc location={path} ! qtdemux ! {codec}parse config-interval=-1 ! rtp{codec}pay name=pay0 pt=96 )"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("mounts", nargs="+", help="/path=FILE[:h264|h265]")
    args = parser.parse_args()
    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for spec in args.mounts:
        mount, _, source = spec.partition("=")
        path, _, codec = source.partition(":")
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(PIPELINE.format(path=path, codec=codec or "h264"))
        factory.set_shared(False)
        mounts.add_factory(mount, factory)
    if server.attach(None) == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"ready {args.port}", flush=True)
    loop.run()


if __name__ == "__main__":
    main()

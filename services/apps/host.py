"""One application's process: its own mount namespace, then the app's entry point, unchanged.

``python -m services.apps.host --config site.yaml --app NAME`` (started by the apps service) makes
the paths Panorama apps hard-code exist for this app alone — ``/panorama`` (its code package),
``/opt/aws/panorama/logs`` and ``/opt/aws/panorama/storage`` (under ``state_dir/apps/NAME``) — in a
private mount namespace, puts EdgeSight's ``panoramasdk`` on ``PYTHONPATH`` and ``exec``s the entry
point (``python3 /panorama/app.py`` or ``bash /panorama/run.sh``) with ``AppGraph_Uid`` set. This runs
before any thread exists: ``unshare`` needs a single-threaded process.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

from common.config import load_config
from common.errors import ConfigError
from services.apps.paths import LOGS, PANORAMA, STORAGE, app_dirs

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
SDK = Path(__file__).resolve().parent / "sdk"
REPO = Path(__file__).resolve().parents[2]


class NamespaceError(Exception):
    pass


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _mount(libc: ctypes.CDLL, source: Path | None, target: Path, flags: int) -> None:
    if libc.mount(str(source).encode() if source else b"none", str(target).encode(), None, flags, None) != 0:
        error = ctypes.get_errno()
        raise NamespaceError(f"cannot mount {source or ''} on {target}: {os.strerror(error)}")


def private_mounts(binds: dict[Path, Path]) -> None:
    """Bind ``source`` on ``target`` for this process (and what it execs) only."""
    libc = _libc()
    # as another user, an unprivileged user namespace: its mount points must exist already
    flags = CLONE_NEWNS if os.geteuid() == 0 else CLONE_NEWUSER | CLONE_NEWNS
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(flags) != 0:
        raise NamespaceError(f"cannot make a private mount namespace: {os.strerror(ctypes.get_errno())}")
    if flags & CLONE_NEWUSER:
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _mount(libc, None, Path("/"), MS_REC | MS_PRIVATE)  # nothing we mount leaks to the host
    for target, source in binds.items():
        try:
            target.mkdir(parents=True, exist_ok=True)  # an empty mount point; the host sees only that
        except OSError as exc:
            raise NamespaceError(
                f"{target} does not exist and cannot be made ({exc.strerror}); create it once as root: "
                f"mkdir -p {PANORAMA} {LOGS} {STORAGE}"
            ) from None
        _mount(libc, source, target, MS_BIND | MS_REC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.apps.host", description=__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--app", required=True)
    parser.add_argument("--channel", required=True, help="the apps service's endpoint for frames and stats")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"apps: invalid config:\n{exc}", file=sys.stderr)
        return 2
    app = config.apps[args.app]
    code = app.code.resolve()
    if not code.is_dir():
        print(f"apps.{args.app}.code: {code} is not a folder", file=sys.stderr)
        return 2
    binds = {PANORAMA: code, **app_dirs(Path(config.site.state_dir).resolve(), args.app)}
    for source in binds.values():
        source.mkdir(parents=True, exist_ok=True)
    try:
        private_mounts(binds)
    except NamespaceError as exc:
        print(f"apps.{args.app}: {exc}", file=sys.stderr)
        return 1
    entry = app.entry if app.entry.startswith("/") else str(PANORAMA / app.entry)
    interpreter = sys.executable if app.interpreter == "python3" else "bash"
    environment = dict(os.environ)
    environment.update(
        {
            "AppGraph_Uid": args.app,
            "EDGESIGHT_APP": args.app,
            "EDGESIGHT_SITE": str(Path(args.config).resolve()),
            "EDGESIGHT_APPS_CHANNEL": args.channel,
            "PYTHONPATH": os.pathsep.join([str(SDK), str(REPO), environment.get("PYTHONPATH", "")]),
            "PYTHONUNBUFFERED": "1",
            # a bash entry that runs `python3 app.py` gets this interpreter (with numpy, OpenCV, ONNX Runtime)
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), environment.get("PATH", "")]),
        }
    )
    os.chdir(PANORAMA)
    os.execvpe(interpreter, [interpreter, entry], environment)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())

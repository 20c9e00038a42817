"""Each Panorama app in its own sandbox: its own uid, namespaces, limits and a view of only its files.

Built on bubblewrap (Debian's ``bubblewrap``, what Flatpak runs every app in) and, for an app's own
network with outbound access and forwarded ports, pasta (Debian's ``passt``, what rootless Podman
uses). The kernel does the isolating; these two only ask it to, and are small and well reviewed. An app gets:

* its own uid (``apps.<app>.uid`` or one derived from its name), no groups, no capabilities;
* its own user, PID, IPC, UTS and mount namespaces; network ``own`` (a namespace with outbound
  access and ``ports`` forwarded, nothing of the host's loopback), ``none`` (loopback only) or ``host``;
* a view of ``/usr`` and a few files of ``/etc``, the Python it runs on (read-only), its code at
  ``/panorama`` (read-only), its ``/opt/aws/panorama/logs`` and ``storage`` (writable), its channel
  to the apps service at ``/run/edgesight`` and nothing else: no state_dir, site file, keys,
  ``/dev/shm`` rings or bus sockets;
* limits on memory, processes, open files and CPU share: a cgroup where the service may make one
  (v1 or v2), else rlimits and the service's own watch of the app's memory;
* an environment of Panorama's variables and ``apps.<app>.env`` only.

This file is the launcher the apps service starts (``launch.py``), as root, by path (``python
sandbox.py``, never ``-m``: it imports nothing of EdgeSight's packages), for each app process: it
joins the app's cgroup, sets its rlimits, bind-mounts the app's sources into a private staging tmpfs
(so that the app's uid needs no right on the folders they live in), drops to the app's uid and
``exec``s ``[pasta -- sh -c <low ports>] bwrap ... -- <interpreter> <entry>``. Exit code 78 means the
sandbox could not be made (the reason is its last line of output).
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["SANDBOX_FAILED", "Cgroup", "SandboxSpec", "build_command", "disk_bytes", "processes_of", "resident_bytes"]

SANDBOX_FAILED = 78  # EX_CONFIG: the launcher could not make the sandbox; its last line says why
SPEC_VARIABLE = "EDGESIGHT_SANDBOX_SPEC"
STAGE = Path("/run/edgesight-sandbox")  # a tmpfs in each launcher's own mount namespace
CHANNEL_DIR = "/run/edgesight"
SDK_DIR = "/opt/edgesight/sdk"
# what a Python program, a shell script and TLS need of /etc; the rest (shadow, ssh keys, the
# site's own /etc/edgesight) stays outside
ETC_FILES = (
    "passwd",
    "group",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "resolv.conf",
    "gai.conf",
    "localtime",
    "timezone",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "ssl",
    "ca-certificates",
    "mime.types",
    "protocols",
    "services",
    "fonts",
)
TMP_BYTES = 256 << 20
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 1 << 18
PR_SET_PDEATHSIG = 1


@dataclass
class Bind:
    source: str
    target: str  # the path inside the sandbox
    writable: bool = False


@dataclass
class SandboxSpec:
    """Everything the launcher needs: passed in its environment (never on its command line, where
    every user could read ``env`` values)."""

    app: str
    uid: int
    binds: list[Bind]
    argv: list[str]  # the app's interpreter and entry, as seen inside
    env: dict[str, str]
    network: str = "own"  # own | none | host
    ports: list[tuple[int, int, str]] = field(default_factory=list)  # host port, app port, tcp|udp
    processes: int = 64
    open_files: int = 1024
    memory_bytes: int = 0  # 0: the cgroup limits memory
    cgroup_procs: list[str] = field(default_factory=list)  # cgroup.procs files to join

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        data = json.loads(text)
        data["binds"] = [Bind(**bind) for bind in data["binds"]]
        data["ports"] = [tuple(port) for port in data["ports"]]
        return cls(**data)


def build_command(spec: SandboxSpec, staged: list[str]) -> list[str]:
    """``[pasta ... --] bwrap ... -- argv``; ``staged[i]`` is where ``spec.binds[i]`` is mounted now."""
    bwrap = [
        "bwrap",
        "--unshare-user",
        "--uid",  # the app's own uid inside too (under pasta, bwrap starts as root of pasta's namespace)
        str(spec.uid),
        "--gid",
        str(spec.uid),
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",  # no TIOCSTI into a terminal the service may have
        "--hostname",
        spec.app[:63],
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            bwrap += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            bwrap += ["--ro-bind", str(path), str(path)]
    for name in ETC_FILES:
        bwrap += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    # its own /tmp in memory, bounded (tmpfs pages count against its memory cgroup too)
    bwrap += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--tmpfs", "/tmp"]
    bwrap += ["--size", str(16 << 20), "--tmpfs", "/dev/shm"]
    bwrap += ["--size", str(16 << 20), "--tmpfs", "/var/tmp", "--size", str(1 << 20), "--tmpfs", "/run"]
    if spec.network == "none":
        bwrap.append("--unshare-net")
    for bind, source in zip(spec.binds, staged, strict=True):
        bwrap += ["--bind" if bind.writable else "--ro-bind", source, bind.target]
    # the sandbox's own root (a tmpfs bwrap made) read-only; no user namespaces of its own inside
    bwrap += ["--remount-ro", "/", "--disable-userns", "--chdir", "/panorama", "--", *spec.argv]
    if spec.network != "own":
        return bwrap
    # its own network: outbound through pasta; nothing of the host's loopback (-T/-U none, no gateway
    # mapped to it), and only the ports the site file names forwarded in
    tcp = ",".join(f"{host}:{inner}" for host, inner, protocol in spec.ports if protocol == "tcp") or "none"
    udp = ",".join(f"{host}:{inner}" for host, inner, protocol in spec.ports if protocol == "udp") or "none"
    pasta = ["pasta", "--config-net", "--no-map-gw", "-T", "none", "-U", "none", "-t", tcp, "-u", udp, "-q", "-f"]
    # pasta runs its command as root of the user namespace it made, which owns the app's network: there
    # (and only there) ports below 1024 are opened to every uid, as Docker does in a container's network
    # namespace, so that an app serves on 80 as on Panorama; then bwrap drops to the app's uid
    low_ports = ["/bin/sh", "-c", 'echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start; exec "$@"', "sh"]
    return [*pasta, "--", *low_ports, *bwrap]


class Cgroup:
    """The app's cgroup (v2, else v1 memory/pids/cpu), made by the service; None where it cannot."""

    V2 = Path("/sys/fs/cgroup")

    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths  # controller ("memory", "pids", "cpu", or "" for v2) -> folder

    @classmethod
    def create(cls, name: str, memory_bytes: int, processes: int, cpu_share: float) -> Cgroup | None:
        try:
            if (cls.V2 / "cgroup.controllers").is_file():
                return cls._create_v2(name, memory_bytes, processes, cpu_share)
            return cls._create_v1(name, memory_bytes, processes, cpu_share)
        except OSError:
            return None  # read-only cgroupfs (an unprivileged container): rlimits and the memory watch

    @classmethod
    def _create_v2(cls, name: str, memory_bytes: int, processes: int, cpu_share: float) -> Cgroup:
        parent = cls.V2 / "edgesight"
        parent.mkdir(exist_ok=True)
        (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        folder = parent / name
        folder.mkdir(exist_ok=True)
        (folder / "memory.max").write_text(str(memory_bytes))
        if (folder / "memory.swap.max").exists():  # no swapping past the limit
            (folder / "memory.swap.max").write_text("0")
        (folder / "pids.max").write_text(str(processes))
        (folder / "cpu.weight").write_text(str(max(1, min(10000, round(100 * cpu_share)))))
        return cls({"": folder})

    @classmethod
    def _create_v1(cls, name: str, memory_bytes: int, processes: int, cpu_share: float) -> Cgroup:
        paths = {}
        for controller in ("memory", "pids", "cpu"):
            folder = cls.V2 / controller / "edgesight" / name
            folder.mkdir(parents=True, exist_ok=True)
            paths[controller] = folder
        (paths["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
        swap = paths["memory"] / "memory.memsw.limit_in_bytes"
        if swap.exists():
            swap.write_text(str(memory_bytes))
        (paths["pids"] / "pids.max").write_text(str(processes))
        (paths["cpu"] / "cpu.shares").write_text(str(max(2, round(1024 * cpu_share))))
        return cls(paths)

    def procs_files(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.paths.values()]

    def oom_kills(self) -> int:
        """How many times the kernel killed a process of the app for its memory limit."""
        events = self.paths[""] / "memory.events" if "" in self.paths else self.paths["memory"] / "memory.oom_control"
        try:
            for line in events.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            pass
        return 0

    def remove(self) -> None:
        for folder in self.paths.values():
            try:
                folder.rmdir()  # only once empty: the app's processes are gone
            except OSError:
                pass


def processes_of(uid: int) -> list[int]:
    """Every process running as ``uid`` (each app has its own, so: the app's processes)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    found.append(int(entry.name))
            except OSError:
                continue  # it just exited
    return found


def resident_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as statm:
                total += int(statm.read().split()[1]) * resource.getpagesize()
        except (OSError, ValueError, IndexError):
            continue
    return total


def disk_bytes(folders: list[Path], max_entries: int = 200_000) -> int:
    """What ``folders`` hold on disk (allocated blocks: a sparse file counts what it uses). Past
    ``max_entries`` files the count stops there: an app cannot make this walk last."""
    total, seen, pending = 0, 0, [str(folder) for folder in folders]
    while pending and seen < max_entries:
        try:
            with os.scandir(pending.pop()) as entries:
                for entry in entries:
                    seen += 1
                    info = entry.stat(follow_symlinks=False)
                    total += info.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
        except OSError:
            continue
    return total


# -- the launcher (a fresh process, root, single-threaded) ------------------------------------------
def _fail(message: str) -> None:
    print(f"sandbox: {message}", file=sys.stderr, flush=True)
    os._exit(SANDBOX_FAILED)


def _stage(spec: SandboxSpec) -> list[str]:
    """Bind every source under a private tmpfs: the app's uid then needs no right on the folders
    above them (state_dir, /root/.pyenv, a pytest tmp_path are 0700), and the host sees nothing."""
    libc = ctypes.CDLL(None, use_errno=True)

    def mount(source: str | None, target: str, kind: str | None, flags: int, data: str | None = None) -> None:
        if (
            libc.mount(
                (source or "none").encode(),
                target.encode(),
                kind.encode() if kind else None,
                flags,
                data.encode() if data else None,
            )
            != 0
        ):
            _fail(f"cannot mount {source or kind} on {target}: {os.strerror(ctypes.get_errno())}")

    STAGE.mkdir(parents=True, exist_ok=True)  # a mount point in the host's /run; empty there
    if libc.unshare(CLONE_NEWNS) != 0:
        _fail(f"cannot make a mount namespace: {os.strerror(ctypes.get_errno())} (the apps service needs root)")
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", str(STAGE), "tmpfs", 0, "mode=0755,size=1m")
    staged = []
    for index, bind in enumerate(spec.binds):
        target = STAGE / str(index)
        if Path(bind.source).is_dir():
            target.mkdir()
        elif Path(bind.source).exists():
            target.touch()
        else:
            _fail(f"{bind.source} does not exist")
        mount(bind.source, str(target), None, MS_BIND | MS_REC)
        staged.append(str(target))
    return staged


def launch(spec: SandboxSpec) -> None:
    if os.geteuid() != 0:
        _fail("the apps service must run as root to give each app its own uid (it drops to it at once)")
    for procs in spec.cgroup_procs:
        try:
            Path(procs).write_text(str(os.getpid()))
        except OSError as exc:
            _fail(f"cannot join the app's cgroup {procs}: {exc.strerror}")
    extra = 2 if spec.network == "own" else 0  # pasta runs as the app's uid too
    resource.setrlimit(resource.RLIMIT_NPROC, (spec.processes + extra, spec.processes + extra))
    resource.setrlimit(resource.RLIMIT_NOFILE, (spec.open_files, spec.open_files))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if spec.memory_bytes:  # no cgroup: address space as a backstop, the service's watch kills first
        resource.setrlimit(resource.RLIMIT_AS, (spec.memory_bytes * 4, spec.memory_bytes * 4))
    staged = _stage(spec)
    command = build_command(spec, staged)
    os.setgroups([])
    os.setresgid(spec.uid, spec.uid, spec.uid)
    os.setresuid(spec.uid, spec.uid, spec.uid)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)  # cleared by setuid
    if spec.network == "own" and not os.access("/dev/net/tun", os.R_OK | os.W_OK):
        _fail(
            "network own needs /dev/net/tun usable by the app's uid (Debian's default mode 0666: "
            "chmod 0666 /dev/net/tun), or set apps.<app>.network to none or host"
        )
    for ignored in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores them; pasta refuses to start so
        signal.signal(ignored, signal.SIG_DFL)
    try:
        os.execvpe(command[0], command, spec.env)
    except OSError as exc:
        _fail(f"cannot run {command[0]}: {exc.strerror} (apt install bubblewrap passt)")


def main() -> None:
    text = os.environ.get(SPEC_VARIABLE, "")
    if not text:
        _fail(f"{SPEC_VARIABLE} is not set: this launcher is started by the apps service")
    launch(SandboxSpec.from_json(text))


if __name__ == "__main__":
    main()

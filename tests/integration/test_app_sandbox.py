"""The apps service's sandbox, attacked from inside: what a hostile or careless Panorama app cannot do.

Every app here runs in bubblewrap as its own uid (services/apps/sandbox.py). Each assertion is one the
same app would fail unsandboxed: a host path it tries is *absent* (ENOENT), not merely denied; the
host's loopback refuses it; its forks and memory hit its limits; its output costs the service little.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import socket
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.trust import generate_key_pair
from tests.conftest import free_port
from tests.integration.conftest import Services
from tests.integration.test_apps import COMPOSED_APP, BusWatch, app_site, feed, write_app
from tests.media import frame_at
from tests.support import deadline, http_get, wait_until

pytestmark = pytest.mark.slow

ATTEMPTS = "attempts.json"

# Tries everything an app must not be able to do, writing down each outcome as it goes; then, once
# (a marker in its storage), allocates far over its memory limit. After its restart it is a plain app.
HOSTILE_APP = r"""
import errno
import json
import os
import socket
import time

import panoramasdk

STORAGE = "/opt/aws/panorama/storage"
MARKER = STORAGE + "/bombed"
targets = json.load(open("/panorama/targets.json"))
attempts = {}


def save():
    with open(STORAGE + "/attempts.tmp", "w") as out:
        json.dump(attempts, out, indent=1)
    os.replace(STORAGE + "/attempts.tmp", STORAGE + "/attempts.json")


def attempt(name, action):
    try:
        attempts[name] = {"ok": True, "value": action()}
    except OSError as exc:
        attempts[name] = {"ok": False, "error": type(exc).__name__, "errno": errno.errorcode.get(exc.errno, "")}
    except Exception as exc:
        attempts[name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    save()


def read(path):
    with open(path, "rb") as file:
        return len(file.read())  # only how much: nothing of a secret goes into the results


def write(path):
    with open(path, "w") as file:
        file.write("pwned")
    return path


def connect_unix(path):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        sock.connect(path)
        return "connected"


def connect_tcp(host, port, send=b""):
    with socket.create_connection((host, port), timeout=2) as sock:
        sock.sendall(send)
        return "connected"


def fork_many(count):
    children, failed = [], 0
    for _ in range(count):
        try:
            pid = os.fork()
        except OSError:
            failed += 1
            continue
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        children.append(pid)
    for pid in children:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return {"forked": len(children), "failed": failed}


def processes():
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/status") as status:
                    uid = next(line.split()[1] for line in status if line.startswith("Uid:"))
                found[name] = int(uid)
            except OSError:
                pass
    return found


node = panoramasdk.node()
node.inputs.video_in.get()  # the cameras' rings exist now: /dev/shm holds them on the host
if not os.path.exists(MARKER):
    attempts["identity"] = {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "pid": os.getpid(), "processes": processes(),
    }
    attempts["environment"] = dict(os.environ)
    attempt("read /etc/shadow", lambda: read("/etc/shadow"))
    attempt("read $SITE_FILE", lambda: read(os.environ["SITE_FILE"]))  # the host's real path, told to it
    for path in targets["secrets"]:
        attempt(f"read {path}", lambda: read(path))
    attempt("list /dev/shm", lambda: sorted(os.listdir("/dev/shm")))
    for path in targets["rings"]:
        attempt(f"read {path}", lambda: read(path))
    for path in targets["writes"]:
        attempt(f"write {path}", lambda: write(path))
    attempt("setuid 0", lambda: os.setuid(0))
    for path in targets["unix"]:
        attempt(f"connect {path}", lambda: connect_unix(path))
    for port in targets["tcp"]:
        attempt(f"connect 127.0.0.1:{port}", lambda: connect_tcp("127.0.0.1", port, b"GET /metrics HTTP/1.0\r\n\r\n"))
    attempt("fork 300", lambda: fork_many(300))
    attempts["done"] = True
    save()
    with open(MARKER, "w"):
        pass
    hoard = []
    for _ in range(128):  # 2 GiB, each page written; paced so that without a cgroup the service's watch
        hoard.append(b"\x01" * (16 << 20))  # (once a second) sees it over its limit before RLIMIT_AS stops it
        time.sleep(0.05)
    print("still alive with", len(hoard) * 16, "MiB", flush=True)
while True:
    streams = node.inputs.video_in.get()
    node.outputs.video_out.put(streams)
"""


def bus_targets(site: Services) -> tuple[list[str], list[int]]:
    """The bus's ipc socket paths and 127.0.0.1 tcp ports, from the site's own bus section."""
    bus = site.config.bus
    endpoints = [bus.publish, *bus.subscribe, bus.broker.frontend, bus.broker.backend, bus.events.send]
    endpoints.append(bus.events.receive)
    paths = sorted({found.group(1) for e in endpoints if (found := re.search(r"ipc://(.+)$", str(e)))})
    ports = sorted(
        {int(found.group(1)) for e in endpoints if (found := re.search(r"tcp://127\.0\.0\.1:(\d+)", str(e)))}
    )
    return paths, ports


def metric(site: Services, name: str, **labels: str) -> float:
    """One sample of the apps service's /metrics (0 when absent)."""
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    text = http_get(f"{site.base('apps')}/metrics")[1]
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Steady:
    """Samples one well-behaved app's AppStatus while a test runs: its frames only grow, it never restarts."""

    def __init__(self, watch: BusWatch, app: str) -> None:
        self.watch, self.app = watch, app
        self.samples: list[tuple[int, int, str]] = []

    def sample(self) -> None:
        status = self.watch.status.get(self.app)
        if status is not None and (
            not self.samples or self.samples[-1] != (status.frames, status.restarts, status.state)
        ):
            self.samples.append((status.frames, status.restarts, status.state))

    @property
    def frames(self) -> int:
        return self.samples[-1][0] if self.samples else 0

    def check(self, at_least: int) -> None:
        frames = [frames for frames, _, _ in self.samples]
        assert frames == sorted(frames), f"{self.app}'s frames went back (it restarted): {self.samples}"
        assert all(restarts == 0 for _, restarts, _ in self.samples), self.samples
        assert frames and frames[-1] >= at_least, self.samples


def test_a_hostile_app_is_refused_everything_while_another_keeps_its_frames(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """Secrets, rings, bus, other apps' files, the host's loopback, the service's environment: all out of
    its sight; its forks and memory bounded; it is killed for memory and restarted, and another app's
    frames never stop."""
    site_name = f"sbx{secrets.token_hex(3)}"  # its rings in the host's real /dev/shm, named for this test only
    hostile_code = write_app(tmp_path / "hostile", HOSTILE_APP)
    password = tmp_path / "secrets" / "admin_password"
    password.parent.mkdir()
    password.write_text("correct horse battery staple\n")
    password.chmod(0o644)
    apps = {
        "hostile": {
            "code": str(hostile_code),
            "cameras": ["hall"],
            "uid": 41234,
            "env": {"SITE_FILE": str(tmp_path / "site.yaml")},
            "limits": {"memory_mb": 256, "processes": 32},
            "hang_timeout_s": 120,
        },
        "bystander": {"code": str(write_app(tmp_path / "bystander", COMPOSED_APP)), "cameras": ["door"]},
    }
    extra = app_site(tmp_path, shared_dir, apps) | {
        "site": {"name": site_name, "shm_dir": "/dev/shm"},
        "console": {"admin_password": f"${{file:{password}}}"},
    }
    site = services(extra)
    state = Path(site.config.site.state_dir)
    state.mkdir(mode=0o700)
    # what lives under state_dir on an appliance: signing keys, the uplink's spool, the audit trail
    signing_key, _ = generate_key_pair(state / "keys", "signing")
    spool = state / "uplink-spool.sqlite"
    with sqlite3.connect(spool) as db:
        db.execute("CREATE TABLE events (seq INTEGER PRIMARY KEY, body TEXT)")
    (state / "audit.jsonl").write_text('{"action": "model.install"}\n')
    unix, tcp = bus_targets(site)
    assert unix, "the site's bus runs on ipc sockets (write_site)"
    secrets_ = [str(password), str(signing_key), str(spool), str(state / "audit.jsonl")]
    assert all(
        Path(path).is_file() for path in [site.site, *secrets_]
    )  # all there on the host: the app just cannot see them
    other_storage = state / "apps" / "bystander" / "storage"
    ports = [site.config.metrics.port(name) for name in ("apps", "broker")]
    targets = {
        "secrets": secrets_,
        "rings": [f"/dev/shm/edgesight.{site_name}.hall", f"/dev/shm/edgesight.{site_name}.door"],
        "writes": [str(other_storage / "pwned"), str(state / "pwned"), "/panorama/pwned", "/usr/pwned"],
        "unix": unix,
        "tcp": [*tcp, *ports],
    }
    (hostile_code / "targets.json").write_text(json.dumps(targets))
    (hostile_code / "targets.json").chmod(0o644)
    results = state / "apps" / "hostile" / "storage" / ATTEMPTS
    canary = secrets.token_hex(8)

    site.start("broker")
    assert [path for path in unix if Path(path).is_socket()], "the broker's sockets are there on the host"
    with BusWatch(site) as watch:
        site.start("apps", env={"EDGESIGHT_CANARY_SECRET": canary})
        bystander = Steady(watch, "bystander")
        restarted_at: list[int] = []
        rings_seen: set[str] = set()

        def done() -> bool:
            bystander.sample()
            rings_seen.update(ring for ring in targets["rings"] if Path(ring).exists())
            hostile = watch.status.get("hostile")
            if hostile is None or hostile.last_restart != "memory":
                return False
            if not restarted_at:
                restarted_at.append(bystander.frames)
            # the hostile app runs normally again, and the bystander went on all along
            return hostile.state == "running" and hostile.frames >= 3 and bystander.frames >= restarted_at[0] + 10

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 75, done))
        hostile = watch.state("hostile")
        assert done(), (hostile, bystander.samples, site.log("apps")[-3000:])

    assert results.is_file(), f"the hostile app did not run: {site.log('apps')[-3000:]}"
    attempts = json.loads(results.read_text())
    print(json.dumps(attempts, indent=1))
    assert attempts.get("done"), attempts

    # who it is: its own uid, no groups, PID 1's child in a PID namespace of its own processes only
    identity = attempts.pop("identity")
    assert identity["uid"] == identity["euid"] == identity["gid"] == 41234, identity
    assert identity["groups"] in ([], [41234]), identity
    assert identity["pid"] < 10, identity
    assert all(int(pid) < 100 for pid in identity["processes"]), identity
    assert set(identity["processes"].values()) == {41234}, identity  # no process of another user in sight

    # its environment: Panorama's variables and apps.hostile.env, nothing of the service's
    environment = attempts.pop("environment")
    assert environment.pop("PWD", "/panorama") == "/panorama"  # bwrap's --chdir sets it
    assert set(environment) <= {"PATH", "HOME", "LANG", "PYTHONPATH", "PYTHONUNBUFFERED", "AppGraph_Uid", "SITE_FILE"}
    assert environment["AppGraph_Uid"] == "hostile" and environment["SITE_FILE"] == str(tmp_path / "site.yaml")
    assert canary not in json.dumps(environment)

    # no host file it should not see: absent, not merely forbidden (its uid alone would get EACCES)
    for path in ["/etc/shadow", "$SITE_FILE", *secrets_, *targets["rings"]]:
        assert attempts.pop(f"read {path}") == {"ok": False, "error": "FileNotFoundError", "errno": "ENOENT"}, path
    listed = attempts.pop("list /dev/shm")
    assert listed["ok"] and not [name for name in listed["value"] if name.startswith("edgesight.")], listed
    assert rings_seen == set(targets["rings"])  # they were there on the host meanwhile
    for path in targets["writes"][:2]:
        assert attempts.pop(f"write {path}") == {"ok": False, "error": "FileNotFoundError", "errno": "ENOENT"}, path
    for path in targets["writes"][2:]:
        assert attempts.pop(f"write {path}")["errno"] in ("EROFS", "EACCES"), path
    assert not (other_storage / "pwned").exists() and not (state / "pwned").exists()
    assert attempts.pop("setuid 0")["errno"] in ("EPERM", "EINVAL")  # EINVAL: no uid 0 in its user namespace

    # the bus and the services' ports: no socket file in its view, and 127.0.0.1 is not the host's
    for path in unix:
        assert attempts.pop(f"connect {path}")["errno"] == "ENOENT", path
    for port in targets["tcp"]:
        assert attempts.pop(f"connect 127.0.0.1:{port}")["errno"] == "ECONNREFUSED", port

    # its limits: a few forks of 300, and killed for its memory (then restarted, as a plain app)
    forks = attempts.pop("fork 300")
    assert forks["ok"] and forks["value"]["forked"] <= 32 and forks["value"]["failed"] > 260, forks
    assert attempts.pop("done") is True
    assert not attempts, f"an attempt this test does not check: {attempts}"
    hostile = watch.status["hostile"]
    assert hostile.restarts >= 1 and hostile.last_restart == "memory", hostile
    assert "still alive with" not in site.log("apps")
    assert metric(site, "edgesight_app_restarts_total", app="hostile", why="memory") >= 1
    bystander.check(restarted_at[0] + 10)


# Careless, not hostile: output that once cost the apps service half a gigabyte
LONG_LINE_APP = """
import sys
import panoramasdk

sys.stdout.write("x" * (2 << 20))  # 2 MiB, and no newline ever
sys.stdout.flush()
node = panoramasdk.node()
while True:
    node.outputs.video_out.put(node.inputs.video_in.get())
"""
FLOOD_APP = """
import panoramasdk

for number in range(50_000):
    print(f"flood line {number}")
node = panoramasdk.node()
while True:
    node.outputs.video_out.put(node.inputs.video_in.get())
"""
BIG_LOG_APP = """
import panoramasdk

line = ("big log line " + "0123456789" * 10 + "\\n").encode()
chunk = line * ((1 << 20) // len(line))  # real data, written a MiB at a time: no sparse file
with open("/opt/aws/panorama/logs/big.log", "wb") as log:
    for _ in range(300):
        log.write(chunk)
with open("/opt/aws/panorama/storage/written", "w"):
    pass
node = panoramasdk.node()
while True:
    node.outputs.video_out.put(node.inputs.video_in.get())
"""


def test_app_output_cannot_hurt_the_service_or_another_app(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """A 2 MiB line, 50,000 lines at once and a 300 MiB log file cost the apps service little memory and
    log, and no other app its frames."""
    apps = {
        name: {"code": str(write_app(tmp_path / name, source)), "cameras": ["hall"]}
        for name, source in (("longline", LONG_LINE_APP), ("flood", FLOOD_APP), ("biglog", BIG_LOG_APP))
    }
    apps["steadfast"] = {"code": str(write_app(tmp_path / "steadfast", COMPOSED_APP)), "cameras": ["door"]}
    site = services(app_site(tmp_path, shared_dir, apps))
    state = Path(site.config.site.state_dir)
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")
        service = site.processes["apps"]
        before = resident_mb(service.pid)
        steadfast = Steady(watch, "steadfast")
        peak = [before]

        def done() -> bool:
            steadfast.sample()
            peak.append(resident_mb(service.pid))
            now = watch.status
            return (
                (state / "apps" / "biglog" / "storage" / "written").exists()
                and all(name in now and now[name].frames >= 5 for name in apps)
                and metric(site, "edgesight_app_output_lines_cut_total", app="longline") > 0
                and metric(site, "edgesight_app_output_lines_dropped_total", app="flood") > 0
                and metric(site, "edgesight_app_output_lines_dropped_total", app="biglog") > 0
                # said for flood or biglog: the service's log rate limit keys on the message, not the app
                and 'msg="app output over its rate; lines not logged" app=' in site.log("apps")
                and steadfast.frames >= 30
            )

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 75, done))
        assert done(), (dict(watch.status), site.log("apps")[-3000:])
        after = resident_mb(service.pid)
        now = dict(watch.status)

    assert service.poll() is None, "the apps service died"
    print(f"apps service RSS: {before:.0f} MB at start, {max(peak):.0f} MB at most, {after:.0f} MB at the end")
    assert max(peak) < 250 and max(peak) - before < 100, (before, max(peak), after)
    assert (state / "apps" / "biglog" / "logs" / "big.log").stat().st_size == 300 * ((1 << 20) // 114) * 114
    assert all(now[name].restarts == 0 for name in apps), now  # none of them was killed for it either
    steadfast.check(30)
    log = site.log("apps")
    flood = log.count("app=flood ")
    assert flood < 5000, f"{flood} lines of the flood app in the service's log"
    assert "[cut]" in log and len(max(log.splitlines(), key=len)) < 10_000  # the 2 MiB line: 4 KiB of it
    assert 'msg="app log" app=biglog' in log  # its log file is followed, in bounded reads


# Serves its own name on port 80 of its own network (threads beside the SDK's main loop); records what
# else it reaches. PROBES (JSON in the environment): name -> [host, port] it tries to connect to.
WEB_APP = """
import errno
import json
import os
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import panoramasdk

NAME = os.environ["AppGraph_Uid"]


class Hello(BaseHTTPRequestHandler):
    def do_GET(self):
        body = NAME.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def probe(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return "connected"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, type(exc).__name__)


with open("/proc/self/status") as status:
    capabilities = next(line.split()[1] for line in status if line.startswith("CapEff:"))
results = {"uid": os.getuid(), "capabilities": capabilities}
try:
    server = ThreadingHTTPServer(("0.0.0.0", 80), Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    results["serving"] = True
except OSError as exc:
    results["serving"] = errno.errorcode.get(exc.errno, str(exc))
for name, (host, port) in json.loads(os.environ.get("PROBES", "{}")).items():
    results[name] = probe(host, port)
with open("/opt/aws/panorama/storage/network.tmp", "w") as out:
    json.dump(results, out)
os.replace("/opt/aws/panorama/storage/network.tmp", "/opt/aws/panorama/storage/network.json")
node = panoramasdk.node()
while True:
    node.outputs.video_out.put(node.inputs.video_in.get())
"""


def host_address() -> str | None:
    """This host's own address on its default route (not loopback), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.123", 9))  # no packet is sent: only the route is looked up
        except OSError:
            return None
        address = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class _Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host")

    def log_message(self, *args: Any) -> None:
        pass


def test_two_apps_each_serve_port_80_on_their_own_host_port(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    """Network own: each app binds port 80 of its own namespace, forwarded from its own host port, and the
    host's loopback is not its loopback; network none: nothing but loopback."""
    loopback = ThreadingHTTPServer(("127.0.0.1", free_port()), _Answer)  # the host's loopback only
    everywhere = ThreadingHTTPServer(("0.0.0.0", free_port()), _Answer)  # every address of the host
    for server in (loopback, everywhere):
        threading.Thread(target=server.serve_forever, daemon=True).start()
    address = host_address()
    probes_own = {"host loopback": ["127.0.0.1", loopback.server_port]}
    probes_none = {"outside": ["1.1.1.1", 80]}
    if address is not None:
        probes_own["host address"] = [address, everywhere.server_port]
        probes_none["host address"] = [address, everywhere.server_port]
    ports = {"alpha": free_port(), "beta": free_port()}
    apps: dict[str, Any] = {
        name: {
            "code": str(write_app(tmp_path / name, WEB_APP)),
            "cameras": ["hall"],
            "ports": [{"host_port": port, "app_port": 80}],
            "env": {"PROBES": json.dumps(probes_own)},
        }
        for name, port in ports.items()
    }
    apps["hermit"] = {
        "code": str(write_app(tmp_path / "hermit", WEB_APP)),
        "cameras": ["hall"],
        "network": "none",
        "env": {"PROBES": json.dumps(probes_none)},
    }
    site = services(app_site(tmp_path, shared_dir, apps))
    state = Path(site.config.site.state_dir)
    try:
        site.start("broker")
        site.start("apps")
        recorded = {name: state / "apps" / name / "storage" / "network.json" for name in apps}
        wait_until(lambda: all(path.exists() for path in recorded.values()), 60, "every app's network.json")
        results = {name: json.loads(path.read_text()) for name, path in recorded.items()}
        print(json.dumps(results, indent=1))
        for name, port in ports.items():
            end = deadline(30)
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                        assert response.read().decode() == name
                        break
                except (urllib.error.URLError, ConnectionError) as exc:
                    assert time.monotonic() < end, f"{name} on {port}: {exc}: {site.log('apps')[-2000:]}"
                    time.sleep(0.2)
    finally:
        for server in (loopback, everywhere):
            server.shutdown()
            server.server_close()
    for name in apps:
        assert results[name]["uid"] == site.config.apps[name].user_id(name), results
        assert int(results[name]["capabilities"], 16) == 0, results  # root of nothing
    for name in ports:
        assert results[name]["serving"] is True, results  # port 80, as its own uid, in its own network
        assert results[name]["host loopback"] == "ECONNREFUSED", results  # 127.0.0.1 is its own
    assert results["hermit"]["outside"] in ("ENETUNREACH", "EHOSTUNREACH"), results  # loopback only
    if address is not None:
        assert results["hermit"]["host address"] in ("ENETUNREACH", "EHOSTUNREACH"), results
        for name in ports:  # pasta gives its namespace the host's address: a server on 0.0.0.0 is not reached
            assert results[name]["host address"] == "ECONNREFUSED", results


FILLING_APP = """
import os
import panoramasdk

node = panoramasdk.node()
with open("/opt/aws/panorama/storage/fill.bin", "wb") as out:  # 40 MB of real blocks, then frames as usual
    for _ in range(40):
        out.write(os.urandom(1 << 20))
try:
    os.makedirs("/opt/aws/panorama/storage/nested", exist_ok=True)
    open("/opt/aws/panorama/storage/nested/more.bin", "wb").write(os.urandom(1 << 20))
    open("/escape.txt", "w").write("the sandbox's own root")  # read-only
except OSError as exc:
    open("/opt/aws/panorama/storage/root.txt", "w").write(type(exc).__name__)
while True:
    node.outputs.video_out.put(node.inputs.video_in.get())
"""


def test_an_app_over_its_disk_limit_is_killed_and_says_so(
    tmp_path: Path, shared_dir: Path, services: Callable[[dict[str, Any]], Services]
) -> None:
    apps = {
        "filler": {"code": str(write_app(tmp_path / "filler", FILLING_APP)), "cameras": ["hall"],
                   "limits": {"disk_mb": 16}},
        "steady": {"code": str(write_app(tmp_path / "steady", COMPOSED_APP)), "cameras": ["door"]},
    }  # fmt: skip
    site = services(app_site(tmp_path, shared_dir, apps))
    site.start("broker")
    with BusWatch(site) as watch:
        site.start("apps")

        def killed() -> bool:  # the filler may be killed before the steady app has had a frame: both
            filler, steady = watch.status.get("filler"), watch.status.get("steady")
            return filler is not None and filler.last_restart == "disk" and steady is not None and steady.frames >= 5

        frame = frame_at(shared_dir / "media" / "people.mp4", 60)
        asyncio.run(feed(site, frame, ["hall", "door"], 60, killed))
        filler, steady = watch.state("filler"), watch.state("steady")
    assert filler.last_restart == "disk", (filler, site.log("apps")[-3000:])
    assert "over its disk limit of 16 MB" in filler.error
    assert metric(site, "edgesight_app_restarts_total", app="filler", why="disk") >= 1
    assert steady.restarts == 0 and steady.frames > 0  # the other app runs on
    storage = Path(site.config.site.state_dir) / "apps" / "filler" / "storage"
    assert (storage / "root.txt").read_text() == "OSError"  # the sandbox's root is read-only

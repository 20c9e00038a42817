"""fleet: how long a model takes to be live on every site of a fleet, and what a site at rest costs the broker.

Everything is real and local: one Mosquitto started here, each site's fleet service speaking to it in
retained mode (AWS IoT's ``$aws/...`` topics), signed ``.espkg`` packages of YOLOX-Nano served over HTTP by
this process, and ``edgesight fleet deploy model PKG --to all --canary N --url URL`` run as an operator runs
it. A deployment's ``*_deploy_s`` runs from the command's start to its exit with 0 (every site SUCCEEDED; any
other exit fails the benchmark), the command's own start-up included.
``*_site_p50_s`` and ``*_site_max_s``: per site, from the command's start until the site's SUCCEEDED status
reached this benchmark's own MQTT subscriber (what the command waits for too). ``*_cli_start_s``: until the
command said it queued its first job (Python's start, its imports, the broker connection, signing): 0.6-3.5 s
here, depending on what else the two cores were doing.

- ``real_*``: 3 sites under ``edgesight run`` (broker, ingest, inference, rules, uplink, fleet), each with the
  shared clip as a looping 5 fps file camera, a line and a zone, YOLOX-Nano as package ``people`` 1 installed by
  ``edgesight models install`` (``threads: 1``: three sites share 2 cores), the uplink to the same Mosquitto
  and ``fleet.healthy_s: 3`` (``real_healthy_s``). A job there downloads, verifies and installs the package,
  has inference reload it and waits until detections of the new version have kept coming for 3 s: about 3 s
  of each site's time is that wait, by design. ``canary0`` sends ``people`` 2 to all three at once;
  ``canary1`` sends ``people`` 3 to the first site and, once it succeeded, to the other two
  (``real_canary1_canary_s``: when the canary's SUCCEEDED arrived).
- ``sim20_*``: 20 sites that are only a fleet service each (``python -m services.fleet``; no cameras, no model
  in the site file, no bus broker: the service's bus sockets connect and wait, and nothing is heard), the same
  two deployments (``people`` 2, then 3 with one canary). A job there downloads, verifies and installs the
  package; no model uses it, so the install is the change. ``sim20_up_s``: from starting the 20 services
  until each had reported.
- ``rest_*``: what the 3 real sites publish under ``$aws/things/<thing>/#`` once up and idle (before any
  deployment, the camera streaming; counting starts 10 s after the last site was up, so that what was still
  starting has been reported), counted by a subscriber for 60 s (``--quick``: 30 s) with the default
  ``report_interval_s`` (60), scaled to messages per site per hour (``rest_messages_per_site_per_hour``;
  ``rest_messages_heard`` is the raw count), against the heartbeat alone, 3600 / 60
  (``rest_heartbeat_per_site_per_hour``). Retained messages delivered on subscribing are not counted. A
  60 s window holds one heartbeat per site (the window starts after each site's last report), so at rest
  the full run reads 60; more is state changing on its own (a service degraded and back, say). A 30 s
  window is shorter than the heartbeat and falls where none is due (each site reported just before it
  looked up): ``--quick`` counts only what a site sends besides its heartbeat, 0 at rest.

This is a 2-core machine and other work may run beside the benchmark: the figures say how the rollout
behaves (canaries wait, sites run in parallel), not how fast a real fleet is.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import getpass
import http.server
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from benchmarks._site import write_site
from common.assets import find_asset

TITLE = "fleet: model live on 3 real / 20 fleet-only sites (canary 0 and 1), broker messages per site at rest"
EDGESIGHT = str(Path(sys.executable).parent / "edgesight")
REAL_SITES, SIMULATED_SITES = 3, 20
HEALTHY_S = 3.0
UP_TIMEOUT_S = 300.0
SETTLE_S = 10.0  # twice min_report_interval_s: what was still starting when the site looked up is reported
DEPLOY_TIMEOUT_S = 300.0
STATUSES = "$aws/things/+/jobs/+/update"
REPORTS = "$aws/things/+/shadow/name/edgesight/update"
Reported = Callable[[dict[str, Any]], bool]


def say(text: str) -> None:
    print(f"  fleet: {text}", flush=True)


class Processes:
    """What the benchmark started, each in a session of its own with its output in a log: stopped with
    SIGTERM, and whatever of its session is left after the grace killed (a supervisor's children too)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (self.folder / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append((name, process))
        return process

    def stop(self, grace_s: float = 20.0) -> None:
        for _, process in self.started:
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace_s
        for name, process in self.started:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                say(f"{name} (pid {process.pid}) ignored SIGTERM: killed")
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)  # its session: what it started and left behind
            process.wait()
        self.started.clear()

    def check_alive(self) -> None:
        dead = [f"{name} (exit {process.returncode})" for name, process in self.started if process.poll() is not None]
        if dead:
            raise RuntimeError(f"stopped early: {', '.join(dead)}")

    def tails(self, lines: int = 25) -> None:
        """The end of every log, for a run that failed."""
        for log in sorted(self.folder.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            print(f"  --- {log.name} (last {len(text)} lines)\n" + "\n".join(f"    {line}" for line in text))


def mosquitto(folder: Path, processes: Processes) -> int:
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(
        f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
        f"log_dest file {folder}/mosquitto.log\n"
    )
    processes.start("mosquitto-stdout", ["mosquitto", "-c", str(config)])
    _wait_port(port)
    return port


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_port(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {port} within {timeout_s:g} s")


def edgesight(*args: str) -> str:
    done = subprocess.run([EDGESIGHT, *args], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"edgesight {' '.join(args)}: exit {done.returncode}\n{done.stdout}{done.stderr}")
    return done.stdout


def keys_and_packages(folder: Path) -> tuple[Path, Path]:
    """(keys, packages): a model signing key and an operator key; packages people 1, 2 and 3 of YOLOX-Nano."""
    keys, packages = folder / "keys", folder / "packages"
    packages.mkdir()
    edgesight("models", "keygen", "--out", str(keys))
    edgesight("fleet", "keygen", "--out", str(keys))
    model = str(find_asset("yolox_nano.onnx"))
    for version in ("1", "2", "3"):
        out = packages / f"people-{version}.espkg"
        edgesight(
            "models", "package", model, "--key", str(keys / "signing.key"), "-o", str(out),
            "--name", "people", "--version", version,
        )  # fmt: skip
    return keys, packages


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serve(folder: Path) -> Iterator[str]:
    """``folder`` over HTTP on a free local port, in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, name="packages", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def site_file(folder: Path, name: str, keys: Path, port: int, *, real: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "run").mkdir()
    (folder / "shm").mkdir()  # a site's own: every site has a camera named hall
    site = {"name": name, "state_dir": str(folder / "state"), "shm_dir": str(folder / "shm")}
    fleet = {"trusted_operators": [str(keys / "operator.pub")], "healthy_s": HEALTHY_S}
    extra: dict[str, Any] = {
        "site": {**site, "trusted_keys": [str(keys / "signing.pub")]},
        "fleet": {**fleet, "mqtt": {"host": "127.0.0.1", "port": port}},
    }
    if real:
        rules = {
            "middle": {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]], "classes": ["person"]},
            "centre": {"type": "zone", "polygon": [[0.3, 0.3], [0.7, 0.3], [0.7, 0.7], [0.3, 0.7]]},
        }
        camera = {"url": str(find_asset("people.mp4")), "loop": True, "fps": 5, "rules": rules}
        extra |= {
            "models": {"people": {"path": "people.espkg", "classes": ["person"], "threads": 1}},
            "cameras": {"hall": camera},
            "uplink": {"mqtt": {"host": "127.0.0.1", "port": port}},
            "fleet": fleet,  # its broker: the uplink's
        }
    path, _ = write_site(folder, name, extra)
    return path


def fleet_file(folder: Path, names: list[str], keys: Path, port: int) -> Path:
    fleet = {
        "broker": {"host": "127.0.0.1", "port": port},
        "jobs": "retained",
        "operator_key": str(keys / "operator.key"),
        "sites": {name: {} for name in names},
        "groups": {"all": names},
    }
    path = folder / "fleet.yaml"
    path.write_text(yaml.safe_dump(fleet))
    return path


def _client(port: int, name: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=f"bench-fleet-{name}-{os.getpid()}", clean_session=True)


def _thing(topic: str) -> str:
    return topic.split("/")[2]  # $aws/things/<thing>/...


async def wait_reported(port: int, things: list[str], ready: Reported, processes: Processes, since: float) -> float:
    """Seconds from ``since`` (monotonic) until every thing's reported state (retained, or as it comes)
    satisfies ``ready``."""
    started, waiting = since, set(things)
    async with _client(port, "up") as client:
        await client.subscribe(REPORTS, qos=1)
        messages = aiter(client.messages)
        while waiting:
            if time.monotonic() - started > UP_TIMEOUT_S:
                raise RuntimeError(f"not up within {UP_TIMEOUT_S:g} s: {sorted(waiting)}")
            processes.check_alive()
            try:
                message = await asyncio.wait_for(anext(messages), 5.0)
            except asyncio.TimeoutError:
                continue
            thing, payload = _thing(message.topic.value), _json(message.payload)
            reported = payload.get("state", {}).get("reported", {}) if isinstance(payload, dict) else {}
            if thing in waiting and ready(reported):
                waiting.discard(thing)
                say(f"{thing} up ({time.monotonic() - started:.1f} s; {len(waiting)} to go)")
    return time.monotonic() - started


def _json(payload: Any) -> Any:
    try:
        return json.loads(bytes(payload)) if isinstance(payload, bytes | bytearray) else None
    except ValueError:
        return None


def _v1_live(reported: dict[str, Any]) -> bool:
    model = reported.get("models", {}).get("people", {})
    camera = reported.get("cameras", {}).get("hall", {})
    return model.get("version") == "1" and bool(model.get("loaded")) and camera.get("state") == "streaming"


async def count_at_rest(port: int, things: list[str], seconds: float) -> dict[str, int]:
    """Messages each thing published under its own topics in ``seconds``, retained deliveries left out."""
    counts = dict.fromkeys(things, 0)
    async with _client(port, "rest") as client:
        for thing in things:
            await client.subscribe(f"$aws/things/{thing}/#", qos=1)

        async def listen() -> None:
            async for message in client.messages:
                if not message.retain:
                    counts[_thing(message.topic.value)] += 1

        listener = asyncio.create_task(listen())
        await asyncio.sleep(seconds)
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    return counts


async def deploy(
    port: int, fleet: Path, package: Path, url: str, things: list[str], canary: int, *, verbose: bool
) -> dict[str, float]:
    """Runs ``edgesight fleet deploy model`` to ``things`` (the group ``all``); its wall time and each site's
    time to SUCCEEDED."""
    version = package.stem.rsplit("-", 1)[1]
    succeeded: dict[str, float] = {}
    async with _client(port, "deploy") as client:
        await client.subscribe(STATUSES, qos=1)
        started = time.monotonic()

        async def listen() -> None:
            async for message in client.messages:  # this deployment's job ids: install_model-people-<v>-<site>-
                if not message.retain and f"/jobs/install_model-people-{version}-" in message.topic.value:
                    status = _json(message.payload) or {}
                    if status.get("status") == "SUCCEEDED":
                        succeeded.setdefault(_thing(message.topic.value), time.monotonic() - started)

        listener = asyncio.create_task(listen())
        command = [EDGESIGHT, "fleet", "deploy", "model", str(package), "--file", str(fleet), "--to", "all"]
        command += ["--canary", str(canary), "--url", url, "--timeout", str(DEPLOY_TIMEOUT_S)]
        cli = await asyncio.create_subprocess_exec(*command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        first_line: list[float] = []
        try:
            output = await _read_cli(cli, verbose, first_line)
        finally:
            if cli.returncode is None:  # interrupted: the command goes too
                cli.kill()
                await cli.wait()
        wall = time.monotonic() - started
        await asyncio.sleep(0.5)  # the last status, on its way to this subscriber too
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
    if cli.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: exit {cli.returncode}\n" + "\n".join(output[-40:]))
    if len(succeeded) < len(things):  # the command saw them all (exit 0): this subscriber missed some
        say(f"heard SUCCEEDED from {len(succeeded)} of {len(things)} sites only")
    times = sorted(succeeded.values()) or [math.nan]
    figures = {"deploy_s": wall, "site_p50_s": statistics.median(times), "site_max_s": times[-1]}
    figures["cli_start_s"] = (first_line or [math.nan])[0] - started
    if canary:  # the canaries are the first sites of fleet.yaml's group, in order
        figures["canary_s"] = max(succeeded.get(thing, math.nan) for thing in things[:canary])
    return figures | {"sites_heard": float(len(succeeded))}


async def _read_cli(cli: asyncio.subprocess.Process, verbose: bool, first_line: list[float]) -> list[str]:
    """The command's lines, shown as they come (``verbose``) or only its outcomes, the time of its first
    appended to ``first_line``; killed past its time."""
    output: list[str] = []

    async def read() -> None:
        assert cli.stdout is not None
        async for raw in cli.stdout:
            line = raw.decode(errors="replace").rstrip()
            if not output:
                first_line.append(time.monotonic())
            output.append(line)
            if verbose or ("IN_PROGRESS" not in line and "queued install_model" not in line):
                print(f"    | {line}", flush=True)
        await cli.wait()

    try:
        await asyncio.wait_for(read(), 2 * DEPLOY_TIMEOUT_S + 60)
    except asyncio.TimeoutError:
        cli.kill()
        await cli.wait()
        output.append("(killed: the command ran past its own timeouts)")
    return output


@dataclasses.dataclass(frozen=True)
class Setup:
    """What every site shares: the keys, the broker's port, the packages and the URL they are served at."""

    keys: Path
    port: int
    packages: Path
    url: str


def deployments(setup: Setup, folder: Path, names: list[str], prefix: str, processes: Processes) -> dict[str, float]:
    """``people`` 2 to every site at once, then ``people`` 3 with one canary; each one's figures."""
    fleet = fleet_file(folder, names, setup.keys, setup.port)
    figures: dict[str, float] = {}
    for canary, version in ((0, "2"), (1, "3")):
        say(f"deploying people {version} to the {len(names)} {prefix} sites, --canary {canary}")
        package = setup.packages / f"people-{version}.espkg"
        url, verbose = f"{setup.url}/{package.name}", len(names) <= REAL_SITES
        done = asyncio.run(deploy(setup.port, fleet, package, url, names, canary, verbose=verbose))
        figures |= {f"{prefix}_canary{canary}_{key}": value for key, value in done.items()}
        processes.check_alive()
    return figures


def at_rest(setup: Setup, names: list[str], seconds: float) -> dict[str, float]:
    say(f"settling {SETTLE_S:g} s, then counting what the sites publish at rest for {seconds:g} s")
    time.sleep(SETTLE_S)
    counts = asyncio.run(count_at_rest(setup.port, names, seconds))
    say(f"at rest: {counts}")
    return {
        "rest_window_s": seconds,
        "rest_messages_heard": float(sum(counts.values())),
        "rest_messages_per_site_per_hour": sum(counts.values()) / len(names) * 3600 / seconds,
        "rest_heartbeat_per_site_per_hour": 3600 / 60.0,  # report_interval_s's default
    }


def real_sites(folder: Path, setup: Setup, quick: bool) -> dict[str, float]:
    names = [f"real-{index}" for index in range(REAL_SITES)]
    folder.mkdir()
    processes = Processes(folder)
    try:
        sites = [site_file(folder / name, name, setup.keys, setup.port, real=True) for name in names]
        for site in sites:
            edgesight("models", "install", str(setup.packages / "people-1.espkg"), "--config", str(site))
        since = time.monotonic()
        for name, site in zip(names, sites, strict=True):
            processes.start(name, [EDGESIGHT, "run", str(site), "--status-interval", "30"])
        say(f"{REAL_SITES} sites under `edgesight run`; waiting for people 1 live and the camera streaming")
        figures = {"real_up_s": asyncio.run(wait_reported(setup.port, names, _v1_live, processes, since))}
        figures |= at_rest(setup, names, 30.0 if quick else 60.0)
        figures["real_healthy_s"] = HEALTHY_S
        return figures | deployments(setup, folder, names, "real", processes)
    except BaseException:
        processes.tails()
        raise
    finally:
        processes.stop()


def simulated_sites(folder: Path, setup: Setup) -> dict[str, float]:
    names = [f"sim-{index}" for index in range(SIMULATED_SITES)]
    folder.mkdir()
    processes = Processes(folder)
    try:
        sites = [site_file(folder / name, name, setup.keys, setup.port, real=False) for name in names]
        since = time.monotonic()
        for name, site in zip(names, sites, strict=True):
            processes.start(name, [sys.executable, "-m", "services.fleet", "--config", str(site)])
        say(f"{SIMULATED_SITES} fleet services started; waiting for each one's report")
        figures = {"sim20_up_s": asyncio.run(wait_reported(setup.port, names, lambda _: True, processes, since))}
        return figures | deployments(setup, folder, names, "sim20", processes)
    except BaseException:
        processes.tails()
        raise
    finally:
        processes.stop()


def run(quick: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgesight-bench-fleet-") as temporary:
        folder = Path(temporary)
        broker = Processes(folder)
        try:
            port = mosquitto(folder, broker)
            say(f"mosquitto on {port}; making keys and packages people 1, 2, 3")
            keys, packages = keys_and_packages(folder)
            with serve(packages) as url:
                setup = Setup(keys, port, packages, url)
                figures = real_sites(folder / "real", setup, quick)
                figures |= simulated_sites(folder / "sim", setup)
        except BaseException:
            broker.tails()  # mosquitto's own log among them
            raise
        finally:
            broker.stop()
    figures["cpu_count"] = float(os.cpu_count() or 0)
    return figures

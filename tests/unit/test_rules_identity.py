"""Rules' event ids: made under a per-site secret kept in ``state_dir``, so a listener
on the bus, who sees every frame_ref, cannot compute them in advance and claim them at the uplink first;
stable for the same decision across a restart with the same state; the key file private; a key file of
the wrong size replaced with a warning; anything but a regular file in its place (a link, a folder, a FIFO,
a socket) refused with an error that names it, and a leftover ``.new`` of any kind removed."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import stat
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.config import load_config
from common.errors import StartupError
from common.service import run_service
from contracts import Detections, Event
from contracts.messages import ID_PATTERN
from services.rules.identity import KEY_FILE, SECRET_BYTES, EventIds
from services.rules.service import RulesService
from tests.conftest import write_site
from tests.support import frame_ref

LINE = {"type": "line", "line": [[0.0, 0.5], [1.0, 0.5]]}
ZONE = {"type": "zone", "polygon": [[0.0, 0.6], [1.0, 0.6], [1.0, 1.0], [0.0, 1.0]], "inertia_frames": 1}
OLD_NAMESPACE = uuid.UUID("6f1c7a52-3d4e-4b8a-9a55-1f0e4d9b2c10")  # public: in the source before #31


def _site(tmp_path: Path) -> Path:
    tmp_path.mkdir(exist_ok=True)
    rules = {"door": LINE, "bay": ZONE}
    return write_site(tmp_path, {"cameras": {"cam": {"url": "rtsp://h/1", "rules": rules}}})


def _decided(site: Path) -> list[Event]:
    """Every event a fresh rules service (on ``site``'s state) decides for one person walking down across
    the line into the bay; what it would deliver, caught before the outbox."""
    service = RulesService(load_config(site))
    delivered: list[Event] = []

    async def deliver(camera: str, event: Event, stored: object = None) -> None:
        delivered.append(event)

    service._deliver = deliver  # type: ignore[method-assign]

    async def walk() -> None:
        for seq in range(1, 14):
            y = 0.25 + 0.05 * seq
            at_ns = seq * 100_000_000
            ref = frame_ref("cam", seq, capture_ns=at_ns, monotonic_ns=at_ns, width=640, height=480)
            boxes = np.array([[0.4, y - 0.15, 0.5, y]], "<f4")
            await service.handle(Detections.from_arrays(ref, "people", boxes, [0], [0.9], labels={0: "person"}))

    try:
        asyncio.run(walk())
    finally:
        service.outbox.close()
        service.store.close()
    assert {event.event_type for event in delivered} >= {"line_cross", "zone_enter"}
    return delivered


def _old_id(event: Event) -> str:
    """The id before #31: computable by anyone from what the bus carries."""
    assert event.frame is not None
    track = event.object.track_id if event.object else "-"
    identity = f"{event.site}/{event.camera}/{event.rule}/{event.event_type}/{event.lifecycle}/"
    identity += f"{track}/{event.start_ns}/{event.frame.seq}"
    return str(uuid.uuid5(OLD_NAMESPACE, identity))


def test_ids_cannot_be_computed_from_what_the_bus_carries(tmp_path: Path) -> None:
    events = _decided(_site(tmp_path))
    predicted = {_old_id(event) for event in events}
    assert not predicted & {event.id for event in events}  # before #31: every one of them
    for event in events:
        assert re.match(ID_PATTERN, event.id)
        assert uuid.UUID(event.id).version == 8  # still a UUID, as contracts describe ids


def test_the_same_decision_keeps_its_id_across_a_restart(tmp_path: Path) -> None:
    site = _site(tmp_path)
    first = [event.id for event in _decided(site)]
    again = [event.id for event in _decided(site)]  # a new process on the same state_dir
    assert first == again
    assert len(set(first)) == len(first)  # different decisions, different ids


def test_two_sites_with_the_same_names_make_different_ids(tmp_path: Path) -> None:
    here = [event.id for event in _decided(_site(tmp_path / "a"))]
    there = [event.id for event in _decided(_site(tmp_path / "b"))]  # same site name, camera, rules, frames
    assert len(here) == len(there)
    assert not set(here) & set(there)


def test_the_secret_is_private_and_made_once(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ids = EventIds(state)
    key = state / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert len(key.read_bytes()) == SECRET_BYTES
    assert EventIds(state).of("a decision") == ids.of("a decision")
    assert ids.of("a decision") != ids.of("another decision")
    assert not list(state.glob("*.new"))  # nothing left beside it


def test_a_looser_key_file_is_tightened(tmp_path: Path) -> None:
    ids = EventIds(tmp_path)
    (tmp_path / KEY_FILE).chmod(0o644)  # restored from a backup that kept no modes
    assert EventIds(tmp_path).of("x") == ids.of("x")
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize("content", [b"", b"short", b"x" * (SECRET_BYTES + 1)])
def test_a_key_file_of_the_wrong_size_is_replaced_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content: bytes
) -> None:
    key = tmp_path / KEY_FILE
    key.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="services.rules.identity"):
        ids = EventIds(tmp_path)
    warned = [r for r in caplog.records if "wrong size" in r.getMessage()]
    assert [r.bytes for r in warned] == [min(len(content), SECRET_BYTES + 1)]
    secret = key.read_bytes()
    assert len(secret) == SECRET_BYTES and secret != content[:SECRET_BYTES]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="services.rules.identity"):
        assert EventIds(tmp_path).of("x") == ids.of("x")  # the new one is kept
    assert not caplog.records


def test_a_symbolic_link_in_place_of_the_key_is_refused(tmp_path: Path) -> None:
    """Someone able to plant a link could make rules read a secret they chose, or write over another file."""
    chosen = tmp_path / "chosen"
    chosen.write_bytes(b"k" * SECRET_BYTES)
    state = tmp_path / "state"
    state.mkdir()
    (state / KEY_FILE).symlink_to(chosen)
    with pytest.raises(StartupError, match=f"{state / KEY_FILE} is a symbolic link: remove it"):
        EventIds(state)
    assert chosen.read_bytes() == b"k" * SECRET_BYTES
    assert os.path.islink(state / KEY_FILE)


def _fifo(path: Path) -> None:
    os.mkfifo(path)


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside").write_bytes(b"x")


def _socket(path: Path) -> None:
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()  # the socket file stays


def _in_time(state: Path) -> BaseException | None:
    """What EventIds(state) raises, run aside: a FIFO opened for reading waits for a writer for ever."""
    raised: list[BaseException | None] = []

    def load() -> None:
        try:
            EventIds(state)
            raised.append(None)
        except BaseException as exc:  # handed to the test
            raised.append(exc)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert raised, "EventIds did not return: it waits on what is at the key's path"
    return raised[0]


@pytest.mark.parametrize(
    ("make", "kind"), [(_folder, "a folder"), (_fifo, "a FIFO"), (_socket, "a socket|cannot be read")]
)
def test_a_key_path_that_is_not_a_file_stops_rules_with_a_clear_error(
    tmp_path: Path, make: Callable[[Path], None], kind: str
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    make(state / KEY_FILE)
    raised = _in_time(state)
    assert isinstance(raised, StartupError)  # before #31: IsADirectoryError, or no return at all
    assert str(state / KEY_FILE) in str(raised) and "remove it" in str(raised)
    assert re.search(kind, str(raised))
    assert (state / KEY_FILE).exists() or (state / KEY_FILE).is_socket()  # left for the operator to look at


def test_rules_started_on_a_folder_key_says_so_in_one_line(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """As the operator sees it: ``cannot start`` with the path and what to do, not ``crashed``."""
    site = _site(tmp_path)
    state = Path(load_config(site).site.state_dir)
    (state / KEY_FILE).mkdir(parents=True)
    assert run_service(RulesService, ["--config", str(site)]) == 1
    logged = [line for line in capfd.readouterr().err.splitlines() if "level=error" in line]
    assert len(logged) == 1
    assert 'msg="cannot start"' in logged[0] or "msg=cannot start" in logged[0]  # before #31: crashed
    assert f"{state / KEY_FILE} is a folder, not a file: remove it" in logged[0]


@pytest.mark.parametrize("make", [_fifo, _socket, lambda path: path.mkdir(), lambda path: path.symlink_to("/")])
def test_a_leftover_new_of_any_kind_is_removed(tmp_path: Path, make: Callable[[Path], None]) -> None:
    make(tmp_path / (KEY_FILE + ".new"))
    ids = _in_time(tmp_path)
    assert ids is None  # before #31: IsADirectoryError for a folder
    assert len((tmp_path / KEY_FILE).read_bytes()) == SECRET_BYTES
    assert not os.path.lexists(tmp_path / (KEY_FILE + ".new"))
    assert os.path.isdir("/")  # a link's target untouched


def test_a_leftover_new_folder_with_something_in_it_is_refused_clearly(tmp_path: Path) -> None:
    _folder(tmp_path / (KEY_FILE + ".new"))
    raised = _in_time(tmp_path)
    assert isinstance(raised, StartupError)
    assert f"{tmp_path / KEY_FILE}.new cannot be removed" in str(raised) and "remove it" in str(raised)
    assert (tmp_path / (KEY_FILE + ".new") / "inside").read_bytes() == b"x"  # nothing of it deleted

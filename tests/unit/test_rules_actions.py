"""Local actions: a command gets the event on standard input, a webhook gets it POSTed, GPIO says what it would do."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from common.config.rules import CommandAction, GpioAction, WebhookAction
from contracts import Event, TrackedObject
from services.rules.outputs import run_action

EVENT = Event(
    id="e1",
    event_type="zone_enter",
    site="s",
    camera="dock",
    rule="bay",
    ts_ns=1,
    object=TrackedObject(track_id=3, label="person", score=0.9, box=(0.1, 0.1, 0.2, 0.3)),
)


def test_command_runs_without_a_shell_and_gets_the_event(tmp_path: Path) -> None:
    out = tmp_path / "got.json"
    script = "import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.stdin.read())"
    action = CommandAction(type="command", argv=[sys.executable, "-c", script, str(out)], timeout_s=20)
    asyncio.run(run_action(action, EVENT))
    assert json.loads(out.read_text())["object"]["track_id"] == 3


def test_command_timeout_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    action = CommandAction(type="command", argv=[sys.executable, "-c", "import time; time.sleep(30)"], timeout_s=0.5)
    asyncio.run(run_action(action, EVENT))
    (record,) = [r for r in caplog.records if r.getMessage() == "action failed"]
    assert "ran longer than 0.5 s and was killed" in record.error  # type: ignore[attr-defined]


def test_webhook_posts_the_event_and_retries() -> None:
    bodies: list[dict[str, Any]] = []
    calls = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            calls.append(1)
            if len(calls) == 1:
                self.send_response(503)  # the first attempt fails: the action retries
                self.end_headers()
                return
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/alarm"
        asyncio.run(run_action(WebhookAction(type="webhook", url=url, timeout_s=5, retries=2), EVENT))
    finally:
        server.shutdown()
    assert len(calls) == 2
    assert bodies[0]["event_type"] == "zone_enter" and bodies[0]["id"] == "e1"


def test_gpio_without_a_chip_logs_what_it_would_do(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    asyncio.run(run_action(GpioAction(type="gpio", chip="/dev/gpiochip99", line=17, active_s=0.1), EVENT))
    assert any(r.getMessage() == "gpio not available here; would have set the line" for r in caplog.records)


def test_a_failed_webhook_is_logged_without_its_secrets(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: the POST is refused
    url = f"http://127.0.0.1:{port}/alarm?token=hook-secret-77ab"
    asyncio.run(run_action(WebhookAction(type="webhook", url=url, timeout_s=5, retries=0), EVENT))
    (record,) = [r for r in caplog.records if r.getMessage() == "action failed"]
    error = record.error  # type: ignore[attr-defined]
    assert error.startswith(f"POST http://127.0.0.1:{port}/alarm?token=*** failed 1 times: ")
    assert "hook-secret-77ab" not in caplog.text

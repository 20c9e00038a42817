"""The webhook POST (``common.webhook``) and the uplink's webhook sink on it: one request, errors that
tell a refusal from an outage, and no secret of the URL in any message."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from common.config.uplink import WebhookSink
from common.webhook import WebhookError, post_json
from contracts import Event
from services.uplink.sinks import Receipt, WebhookPoster
from services.uplink.spool import Spooled

SECRET = "hook-secret-5d1e"


class Receiver:
    """A real HTTP server answering each POST with the next status of ``statuses`` (then 204)."""

    def __init__(self, statuses: list[int]) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts.append((self.headers["Content-Type"], body))
                self.send_response(statuses.pop(0) if statuses else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?token={SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    server = Receiver(list(getattr(request, "param", [])))
    yield server
    server.server.shutdown()
    server.server.server_close()


def _refused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again: nobody listens there


def test_post_json_sends_the_body_as_json(receiver: Receiver) -> None:
    asyncio.run(post_json(receiver.url, b'{"id": "e1"}', 5))
    assert receiver.posts == [("application/json", {"id": "e1"})]


@pytest.mark.parametrize(
    ("receiver", "refused"), [([400], True), ([404], True), ([408], False), ([429], False), ([503], False)],
    indirect=["receiver"],
)  # fmt: skip
def test_an_http_error_says_its_status_and_whether_it_is_for_good(receiver: Receiver, refused: bool) -> None:
    with pytest.raises(WebhookError) as caught:
        asyncio.run(post_json(receiver.url, b"{}", 5))
    assert caught.value.refused is refused and caught.value.status is not None and caught.value.reason


@pytest.mark.parametrize(
    "url",
    [
        f"http://127.0.0.1:{_refused_port()}/hook?token={SECRET}",
        f"http://user:{SECRET}@127.0.0.1:{_refused_port()}/hook",
        f"http://127.0.0.1:{_refused_port()}/hook?token={SECRET} with a space",  # http.client quotes it back
    ],
)
def test_no_answer_is_an_outage_whose_message_keeps_the_secret(url: str) -> None:
    with pytest.raises(WebhookError) as caught:
        asyncio.run(post_json(url, b"{}", 5))
    assert caught.value.status is None and not caught.value.refused
    assert SECRET not in str(caught.value) and caught.value.__cause__ is None and caught.value.__suppress_context__


def _spooled(seq: int) -> Spooled:
    event = Event(id=f"e{seq}", event_type="presence", site="s", camera="dock", rule="bay", ts_ns=seq)
    return Spooled(seq, event, None)


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
def test_the_sink_dead_letters_a_refused_event_and_sends_the_rest(receiver: Receiver) -> None:
    receipt = Receipt()
    asyncio.run(WebhookPoster(WebhookSink(url=receiver.url)).deliver([_spooled(1), _spooled(2)], receipt))
    assert receipt.rejected == {1: "HTTP 400 Bad Request"} and receipt.confirmed == [2]
    assert [body["id"] for _, body in receiver.posts] == ["e1", "e2"]


@pytest.mark.parametrize("receiver", [[204, 503]], indirect=True)
def test_the_sink_raises_on_an_outage_keeping_what_was_confirmed(receiver: Receiver) -> None:
    receipt = Receipt()
    with pytest.raises(WebhookError, match="503"):
        asyncio.run(WebhookPoster(WebhookSink(url=receiver.url)).deliver([_spooled(1), _spooled(2)], receipt))
    assert receipt.confirmed == [1] and not receipt.rejected

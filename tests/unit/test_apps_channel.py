"""The apps service's side of what an app sends it: the channel's framing, its output, its tensors."""

from __future__ import annotations

import collections
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import ModelError
from common.models import TensorSpec, conform
from services.apps import output
from services.apps.output import LineGate, split_lines
from services.apps.sdk._edgesight_channel import LIMITS, ChannelError, header_length, pack, unpack_header


def test_a_message_packs_its_header_and_buffers_and_unpacks_the_same() -> None:
    image = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    pieces = pack({"op": "put", "streams": [{"camera": "hall"}]}, [image, b"xyz"])
    length = header_length(bytes(pieces[0]))
    header, sizes = unpack_header(bytes(pieces[1]))
    assert length == len(pieces[1]) and header == {"op": "put", "streams": [{"camera": "hall"}]}
    assert sizes == [12, 3] and bytes(pieces[2]) == image.tobytes() and bytes(pieces[3]) == b"xyz"


@pytest.mark.parametrize(
    "sizes",
    [
        [-1],  # negative
        [LIMITS.buffer_bytes + 1],  # one buffer over its limit
        [LIMITS.buffer_bytes] * 3,  # together over the message's limit
        [1] * (LIMITS.buffers + 1),  # too many buffers
        "12",  # not a list
        [1.5],  # not whole
        [True],  # JSON true is not a size
    ],
)
def test_sizes_an_app_chooses_are_checked_before_anything_is_read(sizes: object) -> None:
    with pytest.raises(ChannelError, match="exceed the channel's limits"):
        unpack_header(json.dumps({"op": "call", "sizes": sizes}).encode())


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'"op"', b"\xff\xfe"])
def test_a_header_that_is_not_a_json_object_is_refused(body: bytes) -> None:
    with pytest.raises(ChannelError):
        unpack_header(body)


def test_a_header_length_over_the_limit_is_refused_before_it_is_read() -> None:
    with pytest.raises(ChannelError, match="header of"):
        header_length(struct.pack("!I", LIMITS.header_bytes + 1))


def gate() -> tuple[LineGate, list[str]]:
    last_words: collections.deque[str] = collections.deque(maxlen=40)
    return LineGate("test-app", last_words), []


def test_a_line_without_end_is_cut_at_4_kib_and_the_rest_skipped() -> None:
    line_gate, _ = gate()
    buffer = bytearray(b"x" * (2 << 20))  # 2 MiB, no newline yet
    skipping = split_lines(buffer, line_gate, source="output", skipping=False)
    assert skipping and not buffer  # nothing of it is kept in memory
    buffer += b"y" * 100 + b"\nnext line\n"  # the rest of the long line, then a normal one
    skipping = split_lines(buffer, line_gate, source="output", skipping=skipping)
    assert not skipping and not buffer
    assert list(line_gate.last_words) == ["x" * output.MAX_LINE + " [cut]", "next line"]


def test_lines_over_the_rate_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    line_gate, _ = gate()
    with caplog.at_level("INFO", logger="services.apps.output"):
        buffer = bytearray(b"".join(b"line %d\n" % i for i in range(5000)))
        split_lines(buffer, line_gate, source="output", skipping=False)
    logged = [r for r in caplog.records if r.getMessage() == "app output"]
    assert output.BURST <= len(logged) < output.BURST + 50  # the burst, and what refilled meanwhile
    assert len(line_gate.last_words) == 40  # the last words are kept whatever the rate


@pytest.mark.parametrize(
    ("shape", "dtype", "spec_shape", "expected"),
    [
        ((3, 416, 416), np.float64, (1, 3, 416, 416), (1, 3, 416, 416)),  # Neo: rank 3 for rank 4
        ((1, 3, 416, 416), np.uint8, (1, 3, 416, 416), (1, 3, 416, 416)),  # cast only
        ((2, 3, 8, 8), np.float32, (None, 3, 8, 8), (2, 3, 8, 8)),  # an open batch dimension
        ((6, 8, 8), np.float32, (None, 3, 8, 8), (2, 3, 8, 8)),  # ... reshaped to it
    ],
)
def test_a_feed_is_cast_and_reshaped_to_the_models_input_as_neo_did(
    shape: tuple[int, ...], dtype: type, spec_shape: tuple[int | None, ...], expected: tuple[int, ...]
) -> None:
    fed = conform(np.zeros(shape, dtype), TensorSpec("images", spec_shape, "float32"))
    assert fed.shape == expected and fed.dtype == np.float32


def test_a_feed_that_does_not_fit_says_what_the_input_takes() -> None:
    with pytest.raises(ModelError, match=r"input 'images' takes \[1x3x416x416\] float32; got \[3, 41, 416\]"):
        conform(np.zeros((3, 41, 416)), TensorSpec("images", (1, 3, 416, 416), "float32"))


def test_what_an_app_puts_in_its_logs_folder_never_makes_the_service_read_elsewhere_or_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The folder is the app's: a folder, a FIFO, a symlink to a secret, 100 empty files named *.log."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$secret-hash\n")
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a-folder.log").mkdir()
    os.mkfifo(logs / "b-fifo.log")
    (logs / "c-secret.log").symlink_to(secret)
    (logs / "d-app.log").write_text("the app's own line\n")
    for index in range(100):
        (logs / f"z{index:04}.log").write_text("")
        os.utime(logs / f"z{index:04}.log", (1, 1))  # old: the app's own log is the newest
    line_gate, _ = gate()
    followed: dict[Path, Any] = {}
    with caplog.at_level("INFO", logger="services.apps.output"):
        output._look(logs, followed, line_gate)  # a first look takes each file from its newest part
        (logs / "d-app.log").write_text("the app's own line\nand a second\n")
        output._look(logs, followed, line_gate)
    said = [getattr(r, "line", "") for r in caplog.records]
    assert "and a second" in said  # the regular file is followed...
    assert not any("secret-hash" in line for line in said)  # ...the symlink never
    assert len(followed) <= output.MAX_FILES


def test_a_flood_costs_the_service_one_pass_not_one_step_per_line() -> None:
    line_gate, _ = gate()
    line_gate.tokens = 0  # over its rate already
    buffer = bytearray(b"a\n" * (1 << 20) + b"Traceback: the app's last words\n")
    split_lines(buffer, line_gate, source="output", skipping=False)
    assert not buffer and line_gate.dropped == (1 << 20) + 1
    assert line_gate.last_words[-1] == "Traceback: the app's last words"

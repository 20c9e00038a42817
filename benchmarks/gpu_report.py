"""The report of ``benchmarks.gpu_check``: a step's outcome (``Step``, or ``StepFailed`` / ``StepSkipped`` raised by
it), the ``Report`` that prints one line a step and writes them all as JSON, and ``Records``, the backend's log
kept for the steps to read."""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STANDIN_NOTICE = "STAND-IN: no GPU; figures are ONNX Runtime on the CPU underneath"
PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"


class StepFailed(Exception):
    def __init__(self, summary: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(summary)
        self.details = details or {}


class StepSkipped(Exception):
    pass


@dataclass
class Step:
    name: str
    status: str
    summary: str
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status} {self.name:<11} {self.seconds:6.1f} s  {self.summary}"


class Report:
    """The steps so far: each printed as it comes and the JSON written again (a run killed from outside leaves
    the steps it finished, ``"finished": false``); closed with one line and the exit status."""

    def __init__(self, path: Path | None, standin: bool) -> None:
        self.path, self.standin = path, standin
        self.steps: dict[str, Step] = {}
        self.started = time.monotonic()
        self.started_at = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self._lock = threading.Lock()
        self._closed = False

    def add(self, step: Step) -> None:
        with self._lock:
            if not self._closed:  # a step that ran out of time has closed the report
                self.steps[step.name] = step
                print(step.line(), flush=True)
                self._write(finished=False)

    def status(self, name: str) -> str | None:
        step = self.steps.get(name)
        return step.status if step else None

    def failed(self) -> list[str]:
        return [name for name, step in self.steps.items() if step.status == FAIL]

    def close(self) -> int:
        """Writes the JSON and the closing line; the exit status: 1 if any step failed."""
        with self._lock:
            self._closed = True
            self._write(finished=True)
            failed = self.failed()
            counts = ", ".join(
                f"{sum(s.status == status for s in self.steps.values())} {status}" for status in (PASS, FAIL, SKIP)
            )
            verdict = f"FAIL ({', '.join(failed)})" if failed else PASS
            written = f"; report: {self.path}" if self.path else ""
            print(f"gpu-check: {verdict}: {counts} in {time.monotonic() - self.started:.0f} s{written}", flush=True)
            return 1 if failed else 0

    def _write(self, finished: bool) -> None:
        if self.path is None:
            return
        report = {
            "standin": self.standin,
            "notice": STANDIN_NOTICE if self.standin else None,
            "finished": finished,
            "passed": finished and not self.failed(),
            "failed": self.failed(),
            "started": self.started_at,
            "seconds": round(time.monotonic() - self.started, 1),
            "host": platform.node(),
            "machine": platform.machine(),
            "python": sys.executable,
            "steps": {name: {k: v for k, v in vars(step).items() if k != "name"} for name, step in self.steps.items()},
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(self.path, json.dumps(report, indent=2, default=_plain) + "\n")


def write_replacing(path: Path, text: str) -> None:
    """``text`` as the file ``path``, whole or not at all: written to a new file of its folder, then renamed over
    ``path``. Run as root into a folder others can write to ($OUT, /tmp), it follows no link planted there: the
    new file has a name no one can guess and is created, not opened (O_EXCL); the rename replaces a link at
    ``path`` itself, not what it points to."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            os.fchmod(file.fileno(), 0o644)  # readable as the report was, by whoever fetches $OUT
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _plain(value: object) -> object:
    return value.item() if isinstance(value, np.generic) else str(value)


class Records(logging.Handler):
    """The backend's log, kept (what it says is how the steps know that an engine was built or loaded) and
    shown only with --verbose: the output stays one line a step."""

    def __init__(self, verbose: bool) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        if self.verbose:
            extra = {k: v for k, v in vars(record).items() if k not in _STANDARD_RECORD}
            print(f"    {record.levelname.lower()}: {record.getMessage()} {extra or ''}", file=sys.stderr)

    def since(self, mark: int, message: str) -> list[logging.LogRecord]:
        return [record for record in self.records[mark:] if record.getMessage() == message]


_STANDARD_RECORD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

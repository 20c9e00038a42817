"""The jsonl sink: events appended to a file, one JSON object a line."""

from __future__ import annotations

from pathlib import Path

from common.config.uplink import JsonlSink
from common.files import private_dir, private_open
from services.uplink.sinks.base import Receipt, Sink, upstream_json
from services.uplink.spool import Spooled

__all__ = ["JsonlWriter"]


class JsonlWriter(Sink):
    """Events to the file at ``path`` (under ``state_dir`` when relative), flushed each batch."""

    name = "jsonl"

    def __init__(self, config: JsonlSink, state_dir: Path) -> None:
        super().__init__()
        path = Path(config.path)
        self.path = path if path.is_absolute() else state_dir / path
        private_dir(self.path.parent, tighten=not path.is_absolute())  # a folder the operator named: left as it is

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        lines = "".join(upstream_json(item) + "\n" for item in batch)
        with private_open(self.path, "a") as out:
            out.write(lines)
            out.flush()
        for item in batch:
            receipt.confirm(item.seq)

"""What every sink shares: the :class:`Receipt` of a batch and the :class:`Sink` loop that drains
the sink's own queue in the spool, with its own connection state and backoff."""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import random

from common._compat import wait_at_most
from common.events import event_dict
from contracts import Event
from services.uplink import metrics
from services.uplink.spool import Spool, Spooled

__all__ = ["BATCH", "Receipt", "Sink", "upstream_json"]

log = logging.getLogger(__package__)  # one logger for the sinks, named as their log lines always were

BATCH = 100


def upstream_json(item: Spooled) -> str:
    """The spooled event as its sinks send it: never image bytes; the snapshot's S3 key once uploaded."""
    return json.dumps(event_dict(item.event, upstream=True, s3_key=item.s3_key))


class Receipt:
    """What the far side made of a batch so far: confirmed seqs, and seqs refused for good (with why)."""

    def __init__(self) -> None:
        self.confirmed: list[int] = []
        self.rejected: dict[int, str] = {}

    def confirm(self, seq: int) -> None:
        self.confirmed.append(seq)

    def reject(self, item: Spooled, reason: str) -> None:
        self.rejected[item.seq] = reason
        log.error(
            "event refused for good: moved to dead letters",
            extra={"id": item.event.id, "camera": item.event.camera, "rule": item.event.rule, "error": reason},
        )

    def __len__(self) -> int:
        return len(self.confirmed) + len(self.rejected)


class Sink(abc.ABC):
    """One way out of the site, named ``name`` (its spool queue, metrics label and site-file key)."""

    name: str

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.connected = False
        metrics.CONNECTED.labels(self.name).set(0)
        for counter in (metrics.SENT, metrics.FAILED, metrics.DEAD_LETTERS):
            counter.labels(self.name)  # at 0 from the start: a rate() or an alert finds the series

    def wants(self, event: Event) -> bool:
        return True

    @abc.abstractmethod
    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        """Sends what it can of ``batch``, noting each confirmation or refusal on ``receipt`` as it
        comes; raises when the sink is down (what the receipt holds by then still counts)."""

    async def run(self, spool: Spool) -> None:
        backoff = 1.0
        while True:
            batch = await asyncio.to_thread(spool.pending, self.name, BATCH)
            if not batch:
                self.wake.clear()
                await wait_at_most(self.wake.wait(), 1.0)
                continue
            receipt = Receipt()
            failure: Exception | None = None
            try:
                await self.deliver(batch, receipt)
            except Exception as exc:  # every sink fails in its own library's way: all mean "retry later"
                failure = exc
            if receipt:  # only what was not confirmed is sent again
                await asyncio.to_thread(spool.done, self.name, receipt.confirmed, receipt.rejected)
                metrics.SENT.labels(self.name).inc(len(receipt.confirmed))
                metrics.DEAD_LETTERS.labels(self.name).inc(len(receipt.rejected))
            if failure is not None:
                self._went_down(failure, first=backoff == 1.0)
                await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, 30.0)
                continue
            metrics.CONNECTED.labels(self.name).set(1)
            self.connected = True
            backoff = 1.0
            if not receipt:
                await asyncio.sleep(0.2)  # waiting on another sink (the S3 key): do not spin

    def _went_down(self, failure: Exception, *, first: bool) -> None:
        metrics.FAILED.labels(self.name).inc()
        if self.connected or first:  # one line when it goes down, not one per retry
            log.warning("sink unavailable; events stay in the spool", extra={"sink": self.name, "error": str(failure)})
        self.connected = False
        metrics.CONNECTED.labels(self.name).set(0)

    async def close(self) -> None:  # noqa: B027 - optional
        pass

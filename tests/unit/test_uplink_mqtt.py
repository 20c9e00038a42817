"""The MQTT sink noticing a lost connection between batches (a client taking over its client id, a
broker gone): the sink is marked down, said once, and connected again. Against a real broker:
tests/integration/test_uplink.py."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest

from common.config.uplink import MqttSink
from services.uplink import metrics
from services.uplink.sinks import MqttPublisher
from services.uplink.spool import Spool


class BrokenClient:
    """A connection the broker has closed: every publish fails, as aiomqtt's does."""

    identifier = "edgesight-test"

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("[code:4] The client is not currently connected.")


class WorkingClient(BrokenClient):
    """The connection made again: publishes go through (a bare object here made the next stats publish
    fail too, and the gauge could read 0 again before the test looked)."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        return None


def connected_gauge() -> float:
    value = metrics.CONNECTED.labels("mqtt")._value.get()
    return float(value)


def test_a_failed_stats_publish_marks_the_sink_down_once_and_it_reconnects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> tuple[int, list[float]]:
        spool = Spool(tmp_path / "spool.sqlite", max_bytes=1 << 20)
        sink = MqttPublisher(MqttSink(host="127.0.0.1", stats_interval_s=0.01), "test", spool, waits_for_s3=False)
        sink._backoff = 0.01  # quick, for the test
        opened = 0
        gauges: list[float] = []

        async def fake_open() -> None:  # what _open does, less the broker
            nonlocal opened
            opened += 1
            gauges.append(connected_gauge())  # as the sink stood before this connection
            sink._client = BrokenClient() if opened == 1 else WorkingClient()
            sink._connected_at = time.monotonic()  # a short-lived connection: the backoff above stays
            sink.connected = True
            metrics.CONNECTED.labels("mqtt").set(1)

        sink._open = fake_open  # type: ignore[method-assign]
        await sink._connect()
        tasks = [asyncio.create_task(sink.publish_stats(dict)), asyncio.create_task(sink.keep_connected())]
        for _ in range(500):
            if opened == 2:
                break
            await asyncio.sleep(0.01)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        sink._client = None
        spool.close()
        return opened, gauges

    with caplog.at_level(logging.INFO):
        opened, gauges = asyncio.run(scenario())
    assert opened == 2  # connected again without any event to deliver
    assert gauges[1] == 0.0  # down until connected again
    assert connected_gauge() == 1.0
    lost = [r for r in caplog.records if r.getMessage() == "mqtt: connection lost; reconnecting"]
    assert len(lost) == 1 and lost[0].levelno == logging.WARNING
    assert "not currently connected" in lost[0].error  # type: ignore[attr-defined]

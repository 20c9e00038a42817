"""Logging format and rate limit; the asset search path."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from common import logging as eslogging
from common.assets import find_asset
from common.errors import AssetError


def test_log_lines_carry_service_camera_and_fields(capsys: pytest.CaptureFixture[str]) -> None:
    eslogging.configure("ingest", "info")
    logging.getLogger("t").info("camera stalled", extra={"camera": "dock-1", "seconds": 5.0})
    line = capsys.readouterr().err.strip()
    assert 'service=ingest camera=dock-1 logger=t msg="camera stalled" seconds=5' in line


def test_repeated_errors_are_rate_limited_and_the_rest_counted(capsys: pytest.CaptureFixture[str]) -> None:
    eslogging.configure("rules", "info", "json")
    log = logging.getLogger("t")
    for _ in range(100):
        log.warning("bus message rejected", extra={"camera": "c1"})
    log.warning("bus message rejected", extra={"camera": "c2"})  # another camera is another stream
    for app in ("flood", "flood", "quiet"):  # one app's trouble never hides another's
        log.warning("app stopped; restarting", extra={"app": app})
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 4
    limiter = next(f for f in logging.getLogger().handlers[0].filters if isinstance(f, eslogging.RateLimitFilter))
    limiter.interval_s = 0
    log.warning("bus message rejected", extra={"camera": "c1"})
    assert '"suppressed": 99' in capsys.readouterr().err


def test_assets_resolve_through_the_search_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shared_dir: Path
) -> None:
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mine.onnx").write_bytes(b"x")
    monkeypatch.setenv("EDGESIGHT_ASSETS", str(tmp_path))
    assert find_asset("mine.onnx") == tmp_path / "models" / "mine.onnx"
    assert find_asset("people.mp4") == shared_dir / "media" / "people.mp4"
    with pytest.raises(AssetError) as caught:
        find_asset("nothing.onnx")
    message = str(caught.value)
    assert message.startswith("nothing.onnx not found; looked in: "), message
    assert str(tmp_path) in message and "EDGESIGHT_ASSETS" in message, message  # where it looked, how to add


@pytest.mark.parametrize("rounds", [1, 5])
def test_wait_at_most_never_loses_a_cancellation(rounds: int) -> None:
    """asyncio.wait_for before 3.12 returns normally when the awaited event is set as the task is cancelled
    (CPython gh-86296): a service loop around it never stopped on SIGTERM. wait_at_most re-raises."""
    import asyncio

    from common._compat import wait_at_most

    async def scenario() -> str:
        woken = asyncio.Event()

        async def loop() -> None:
            while True:
                woken.clear()
                await wait_at_most(woken.wait(), 1.0)

        task = asyncio.create_task(loop())
        for _ in range(rounds):
            await asyncio.sleep(0.01)
        woken.set()
        task.cancel()  # in the same step: the wait completes and is cancelled at once
        try:
            await asyncio.wait_for(task, 5)
        except asyncio.CancelledError:
            return "stopped"
        return "kept running"

    assert asyncio.run(scenario()) == "stopped"
    assert asyncio.run(_wait_at_most_times_out()) is False


async def _wait_at_most_times_out() -> bool:
    import asyncio

    from common._compat import wait_at_most

    return await wait_at_most(asyncio.Event().wait(), 0.05)


def test_a_loop_sees_a_stop_something_it_awaited_swallowed() -> None:
    """aiomqtt's publish waits with asyncio.wait_for, which can swallow a cancellation arriving as it
    completes (gh-86296): the fleet's job loop then waited for ever at a stop (a hung test, 1 run in 7)."""
    from common._compat import raise_if_cancelled

    async def loop_body() -> str:
        asyncio.current_task().cancel()  # type: ignore[union-attr]  # the stop, delivered at the next await
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # what the swallowing wait does
        try:
            raise_if_cancelled()
        except asyncio.CancelledError:
            return "stopped"
        return "would wait for ever"

    assert asyncio.run(loop_body()) == "stopped"

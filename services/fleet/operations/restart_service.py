"""``restart_service``: ask a service (or one instance: ``ingest@east``, ``inference@1``) to shut down, and
confirm its supervisor (``edgesight run``, compose, k3s) started it again and it stays ready.

The request is a ``Control`` ``shutdown``; the service's base stops it and its supervisor starts it
again. The job succeeds once as many instances as were running before send a Health from a process
that started after the request (its uptime shorter than the time since), ``ready``, and stay ready
for ``fleet.healthy_s`` without another restart. Nothing is rolled back: a service that does not come
back is its supervisor's to restart, and the job says what it last heard.

The broker and the fleet service itself are not restarted by a job: the broker's restart cuts the bus
(the fleet's too), and the fleet could not confirm its own restart.
"""

from __future__ import annotations

from typing import Any

from services.fleet.context import JobContext, JobFailed, Target, parse_target
from services.fleet.operations.arguments import argument
from services.fleet.operations.model_live import Step
from services.fleet.watch import HealthSeen, service_key

__all__ = ["restart_service"]

ALIVE_WITHIN_HEALTHS = 3  # an instance heard within this many health intervals is running
START_WAIT_S = 120.0  # a supervisor's backoff and a service's start (inference loads its models)


async def restart_service(args: dict[str, Any], context: JobContext, step: Step) -> dict[str, str]:
    target = parse_target(argument(args, "service", str))
    if target.service in ("broker", "fleet"):
        why = "its restart cuts the bus" if target.service == "broker" else "it cannot confirm its own restart"
        raise JobFailed(f"the {target.service} is not restarted by a job: {why}; restart it where it runs")
    watch = context.watch
    recent = watch.clock() - ALIVE_WITHIN_HEALTHS * context.health_interval_s
    running = [seen for seen in watch.healths(target.service, since=recent) if _matches(seen, target)]
    if not running:
        raise JobFailed(f"no {target} is running here (no Health of it in the last {watch.clock() - recent:.0f} s)")
    await step("restarting")
    asked = watch.clock()
    await context.control(target, "shutdown")
    restarts = _Restarts(context, target, asked, len(running))
    if not await watch.wait_for(restarts.ready, context.bounded(START_WAIT_S)):
        raise JobFailed(f"{target} did not come back ready: {restarts.last_heard()}")
    await step("watching")
    if await watch.wait_for(lambda: restarts.broken() is not None, context.bounded(context.healthy_s)):
        raise JobFailed(restarts.broken() or f"{target} did not stay ready")
    if watch.clock() - restarts.ready_at < context.healthy_s - 0.01:
        raise JobFailed(f"the job's time ran out before {target} was ready for {context.healthy_s:g} s")
    return {"step": "ready", "note": f"{target} restarted ({len(running)} instance(s)) and stayed ready"}


def _matches(seen: HealthSeen, target: Target) -> bool:
    health = seen.message
    if health.service != target.service:
        return False
    if target.suffix is None:
        return True
    key = service_key(health.service, health.instance)
    return key == str(target) or health.instance in (target.suffix, f"{target.service}-{target.suffix}")


class _Restarts:
    """The instances of ``target`` started after ``asked``: ready, and staying so."""

    def __init__(self, context: JobContext, target: Target, asked: float, count: int) -> None:
        self.watch, self.target, self.asked, self.count = context.watch, target, asked, count
        self.ready_at = 0.0
        self.started: dict[str, float] = {}  # instance -> its start, once ready

    def _fresh(self) -> list[HealthSeen]:
        return [
            seen
            for seen in self.watch.healths(self.target.service, since=self.asked)
            if _matches(seen, self.target) and seen.started >= self.asked
        ]

    def ready(self) -> bool:
        ready = [seen for seen in self._fresh() if seen.ready_since is not None]
        if len(ready) < self.count:
            return False
        self.started = {seen.message.instance: seen.started for seen in ready}
        self.ready_at = self.watch.clock()
        return True

    def broken(self) -> str | None:
        for instance, started in self.started.items():
            seen = next((s for s in self.watch.services.values() if s.message.instance == instance), None)
            if seen is None:
                continue
            if abs(seen.started - started) > 1.0:
                return f"{self.target} ({instance}) restarted again"
            if seen.ready_since is None:
                return f"{self.target} ({instance}) is {seen.state} after its restart"
        return None

    def last_heard(self) -> str:
        fresh = self._fresh()
        if not fresh:
            return "no Health from a restarted process"
        return ", ".join(f"{seen.message.instance} {seen.state}" for seen in fresh)

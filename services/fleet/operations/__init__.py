"""The operations a signed fleet job runs, one module each; :func:`run_operation` picks by name.

Every operation succeeds only when its change is live and healthy (for ``fleet.healthy_s``), and
otherwise puts back what it changed and raises :class:`~services.fleet.context.JobFailed` with the
reason. ``step`` is told each stage as it starts (``downloading``, ``installing``...), for the job's
IN_PROGRESS status. What an operation returns becomes the job's ``statusDetails`` on success.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from common.fleet.signing import SignedJob
from services.fleet.context import JobContext, JobFailed
from services.fleet.operations.install_app import install_app
from services.fleet.operations.install_model import install_model
from services.fleet.operations.model_live import Step
from services.fleet.operations.restart_service import restart_service
from services.fleet.operations.rollback_model import rollback_model
from services.fleet.operations.update_rules import update_rules

__all__ = ["OPERATIONS", "Step", "run_operation"]

Operation = Callable[[dict[str, Any], JobContext, Step], Awaitable[dict[str, str]]]

OPERATIONS: dict[str, Operation] = {
    "install_model": install_model,
    "rollback_model": rollback_model,
    "update_rules": update_rules,
    "restart_service": restart_service,
    "install_app": install_app,
}

MAX_DETAILS = 10  # AWS IoT Jobs: statusDetails keys
MAX_VALUE = 1024


async def run_operation(job: SignedJob, context: JobContext, step: Callable[[str], Awaitable[None]]) -> dict[str, str]:
    """Runs ``job`` on this site as its operator; statusDetails on success, :class:`JobFailed` otherwise."""
    operation = OPERATIONS.get(job.operation)
    if operation is None:
        raise JobFailed(f"{job.operation!r} is no operation a job runs (operations: {', '.join(OPERATIONS)})")
    details = {"operation": job.operation, **await operation(job.args, context.for_job(job.operator), step)}
    return {key: value[:MAX_VALUE] for key, value in list(details.items())[:MAX_DETAILS]}

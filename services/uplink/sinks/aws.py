"""The AWS side of the S3 and CloudWatch sinks: long-lived aioboto3 clients, and reading their errors."""

from __future__ import annotations

import contextlib
from typing import Any

__all__ = ["AwsClients", "http_status"]


class AwsClients:
    """One aioboto3 session and one client per service for the sink's life; dropped after an outage."""

    def __init__(self, region: str | None, endpoint_url: str | None) -> None:
        self.kwargs = {"region_name": region, "endpoint_url": endpoint_url}
        self._stack: contextlib.AsyncExitStack | None = None
        self._clients: dict[str, Any] = {}

    async def get(self, service: str) -> Any:
        import aioboto3

        if service not in self._clients:
            if self._stack is None:
                self._stack = contextlib.AsyncExitStack()
                self._session = aioboto3.Session()
            self._clients[service] = await self._stack.enter_async_context(
                self._session.client(service, **self.kwargs)  # type: ignore[call-overload]
            )
        return self._clients[service]

    async def close(self) -> None:
        stack, self._stack, self._clients = self._stack, None, {}
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a botocore ClientError (None for anything else)."""
    response = getattr(exc, "response", None)
    if not isinstance(response, dict):
        return None
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if isinstance(status, int) else None

"""The webhook sink: each event POSTed on its own (the request itself is ``common.webhook``'s)."""

from __future__ import annotations

from common.config.uplink import WebhookSink
from common.webhook import WebhookError, post_json
from services.uplink.sinks.base import Receipt, Sink, upstream_json
from services.uplink.spool import Spooled

__all__ = ["WebhookPoster"]


class WebhookPoster(Sink):
    """Events POSTed one by one to ``url``: a 2xx confirms one, a 4xx other than 408/425/429 refuses
    it for good, anything else is an outage."""

    name = "webhook"

    def __init__(self, config: WebhookSink) -> None:
        super().__init__()
        self.config = config

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        for item in batch:
            try:
                await post_json(self.config.url, upstream_json(item).encode(), self.config.timeout_s)
            except WebhookError as exc:
                if exc.refused:
                    receipt.reject(item, f"HTTP {exc.status} {exc.reason}")
                    continue
                raise
            receipt.confirm(item.seq)

"""The S3 sink: each snapshot uploaded once, its key noted in the spool for the events that name it."""

from __future__ import annotations

import asyncio
import datetime as dt

from common.config.uplink import S3Sink
from contracts import Event
from services.uplink.sinks.aws import AwsClients, http_status
from services.uplink.sinks.base import Receipt, Sink
from services.uplink.spool import Spool, Spooled

__all__ = ["S3Uploader"]


class S3Uploader(Sink):
    """Snapshots to ``<prefix>/<site>/<camera>/<YYYY-MM-DD>/<event-id>.jpg``."""

    name = "s3"

    def __init__(self, config: S3Sink, site: str, spool: Spool) -> None:
        super().__init__()
        self.config = config
        self.site = site
        self.spool = spool
        self.aws = AwsClients(config.region, config.endpoint_url)

    def wants(self, event: Event) -> bool:
        return event.snapshot is not None and bool(event.snapshot.data)

    def key(self, event: Event) -> str:
        day = dt.datetime.fromtimestamp(event.ts_ns / 1e9, dt.timezone.utc).strftime("%Y-%m-%d")
        return f"{self.config.prefix}/{self.site}/{event.camera}/{day}/{event.id}.jpg"

    def _encryption(self) -> dict[str, str]:
        """``put_object``'s server-side encryption arguments, as configured."""
        if self.config.server_side_encryption == "none":
            return {}
        arguments: dict[str, str] = {"ServerSideEncryption": self.config.server_side_encryption}
        if self.config.kms_key_id:
            arguments["SSEKMSKeyId"] = self.config.kms_key_id
        return arguments

    async def deliver(self, batch: list[Spooled], receipt: Receipt) -> None:
        encryption = self._encryption()
        try:
            s3 = await self.aws.get("s3")
            for item in batch:
                snapshot = item.event.snapshot
                if snapshot is None or not snapshot.data:  # dropped on overflow meanwhile
                    receipt.confirm(item.seq)
                    continue
                key = self.key(item.event)
                try:
                    await s3.put_object(
                        Bucket=self.config.bucket,
                        Key=key,
                        Body=snapshot.data,
                        ContentType=snapshot.content_type,
                        **encryption,
                    )
                except Exception as exc:
                    if http_status(exc) in (400, 413):  # this object is refused (a bad key, too large)
                        receipt.reject(item, str(exc))
                        continue
                    raise
                await asyncio.to_thread(self.spool.set_s3_key, item.seq, key)
                receipt.confirm(item.seq)
        except Exception:
            await self.aws.close()
            raise

    async def close(self) -> None:
        await self.aws.close()

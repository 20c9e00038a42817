"""Each app's channel: a Unix socket only its uid may reach, served here, answering its SDK's requests.

The protocol is ``sdk/_edgesight_channel.py`` (length-prefixed JSON and raw buffers, every size
checked). A request is answered where it belongs: ``hello`` here, ``get`` by ``VideoIn``, ``put`` by
``VideoOut``, ``call`` and ``model_info`` by the app's ``AppModels``. An app that breaks the protocol
loses that connection, never the service.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any

from common.errors import EdgeSightError
from services.apps import metrics
from services.apps.channel_requests import Answer, RequestError, model_feeds, typed_parameter, widen_send_buffer
from services.apps.launch import channel_dir
from services.apps.running_app import RunningApp
from services.apps.sdk._edgesight_channel import ChannelError, header_length, pack, unpack_header
from services.apps.video_in import VideoIn
from services.apps.video_out import VideoOut

__all__ = ["ChannelServer"]

log = logging.getLogger(__name__)

MAX_CONNECTIONS = 8  # per app: one per thread of the app that talks to the SDK
BIG_MESSAGE = 1 << 20  # messages larger than this are read one at a time per app


class ChannelServer:
    """Serves the channel of each app under ``apps_dir``: its frames, its video_out and its models."""

    def __init__(self, apps_dir: Path, video_in: VideoIn, video_out: VideoOut) -> None:
        self.apps_dir = apps_dir
        self.video_in = video_in
        self.video_out = video_out

    async def open(self, app: RunningApp) -> asyncio.AbstractServer:
        """Serves ``app``'s channel socket, owned by its uid and reachable by no other."""
        folder = channel_dir(self.apps_dir, app.name)
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o711)  # the app's uid may reach the socket in it, not list or change it
        path = folder / "channel.sock"
        path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(lambda r, w: self._serve(app, r, w), path=str(path))
        os.chown(path, app.uid, app.uid)
        path.chmod(0o600)
        return server

    async def _serve(self, app: RunningApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if app.connections >= MAX_CONNECTIONS:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            writer.close()
            return
        app.connections += 1
        widen_send_buffer(writer)
        try:
            while True:
                length = header_length(await reader.readexactly(4))
                header, sizes = unpack_header(await reader.readexactly(length))
                if sum(sizes) <= BIG_MESSAGE:
                    await self._request(app, header, [await reader.readexactly(size) for size in sizes], writer)
                    continue
                async with app.big_read:  # one large request per app in memory, read to answered
                    await self._request(app, header, [await reader.readexactly(size) for size in sizes], writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the app's thread or process ended
        except asyncio.CancelledError:
            # the service stops: asyncio's stream callback would log this handler's cancellation as an
            # error ("Exception in callback"), so it ends here, quietly, like a closed connection
            return
        except ChannelError as exc:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            log.warning(
                "app broke its channel's protocol; connection closed", extra={"app": app.name, "error": str(exc)}
            )
        finally:
            app.connections -= 1
            writer.close()

    async def _request(
        self, app: RunningApp, header: dict[str, Any], buffers: list[bytes], writer: asyncio.StreamWriter
    ) -> None:
        try:
            answer, out = await self._answer(app, header, buffers)
        except RequestError as exc:
            metrics.CHANNEL_REFUSED.labels(app.name).inc()
            answer, out = {"error": "request", "message": str(exc)[:1000]}, []
        writer.writelines(pack(answer, out))
        await writer.drain()

    async def _answer(self, app: RunningApp, header: dict[str, Any], buffers: list[bytes]) -> Answer:
        op = header.get("op")
        if op == "hello":
            return _hello(app), []
        if op == "get":
            return await self.video_in.get(app, header.get("timeout"))
        if op == "put":
            await self.video_out.put(app, header, buffers)
            return {}, []
        if op in ("call", "model_info"):
            return await _model_request(app, op, header, buffers)
        raise RequestError(f"unknown op {str(op)[:32]!r}")


def _hello(app: RunningApp) -> dict[str, Any]:
    """What the SDK learns of its app at start: its cameras, ports, parameters and model nodes."""
    parameters = {port: typed_parameter(p.type, p.value) for port, p in app.config.parameters.items()}
    return {
        "app": app.name,
        "cameras": list(app.config.cameras),
        "video_in": app.config.video_in,
        "video_out": app.config.video_out,
        "parameters": parameters,
        "models": sorted(app.config.models),
    }


async def _model_request(app: RunningApp, op: str, header: dict[str, Any], buffers: list[bytes]) -> Answer:
    """``model_info``, or a ``call`` of one of the app's model nodes, run here (never in the app)."""
    model = header.get("model")
    if not isinstance(model, str) or model not in app.config.models:
        return {
            "error": "model",
            "message": f"model node {str(model)[:64]!r} is not in apps.{app.name}.models ({sorted(app.config.models)})",
        }, []
    try:
        if op == "model_info":
            return await asyncio.to_thread(app.models.info, model), []
        feeds = model_feeds(header.get("inputs"), buffers)
        outputs = await asyncio.to_thread(app.models.run, model, feeds)
    except EdgeSightError as exc:
        return {"error": "model", "message": str(exc)[:2000]}, []
    except Exception as exc:  # the runtime's own errors (ONNX Runtime's types): the app's to handle
        return {"error": "model", "message": f"{type(exc).__name__}: {str(exc)[:2000]}"}, []
    metrics.MODEL_CALLS.labels(app.name, model).inc()
    return {"outputs": [{"dtype": o.dtype.name, "shape": list(o.shape)} for o in outputs]}, outputs

"""One MQTT connection's settings as aiomqtt takes them, and the loop that keeps one connected.

Every MQTT client of ours (the uplink's sink, the fleet service, the console's fleet page, ``edgesight
fleet``) connects from an ``MqttSink`` section the same way: TLS with the given CA bundle (else the
system's), a client certificate for mutual TLS (AWS IoT Core's), the section's credentials and keepalive.
aiomqtt is imported where a connection is made, not here: ``edgesight`` starts without it.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, NoReturn

from common.backoff import RestartBackoff
from common.config.uplink import MqttSink, TlsConfig

__all__ = ["CONNECT_TIMEOUT_S", "client_options", "keep_connected", "tls_context"]

CONNECT_TIMEOUT_S = 10.0  # connecting, subscribing: a broker that does not answer in this long is down


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    """The TLS of an MQTT connection: the server checked against ``ca_file`` (else the system's CAs), and
    a client certificate where ``cert_file`` and ``key_file`` are given; None without ``tls``.

    >>> tls_context(None) is None
    True
    >>> tls_context(TlsConfig()).verify_mode == ssl.CERT_REQUIRED
    True
    """
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file)
    if tls.cert_file and tls.key_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


def client_options(settings: MqttSink, client_id: str | None) -> dict[str, Any]:
    """``aiomqtt.Client``'s keyword arguments for ``settings`` as ``client_id`` (None: one the client
    makes up); the caller adds its own (``clean_session``, a will, queue sizes). Opens the TLS files now:
    an unreadable one raises OSError (``ssl.SSLError`` is one) here, where a connection attempt fails.

    >>> options = client_options(MqttSink(host="mq.example", username="site"), "edgesight-a")
    >>> options["hostname"], options["port"], options["identifier"], options["tls_context"]
    ('mq.example', 1883, 'edgesight-a', None)
    """
    return {
        "hostname": settings.host,
        "port": settings.port,
        "identifier": client_id,
        "username": settings.username,
        "password": settings.password,
        "keepalive": settings.keepalive_s,
        "tls_context": tls_context(settings.tls),
        "timeout": CONNECT_TIMEOUT_S,
    }


async def keep_connected(
    session: Callable[[], Awaitable[None]],
    backoff: RestartBackoff,
    lost: Callable[[BaseException | None, float], None],
) -> NoReturn:
    """Runs ``session`` (one connection, until it ends) again and again. After each, ``lost(error,
    wait_s)`` is told why (the ``aiomqtt.MqttError`` or ``OSError``: a TLS file unreadable, a refused
    handshake; None when the session just ended) and how long until the next one: ``backoff``'s wait
    for a session that lasted that long, ±20 % so that many clients a broker dropped at once do not
    come back at once. Any other exception ends it."""
    import aiomqtt

    while True:
        began = time.monotonic()
        error: BaseException | None = None
        try:
            await session()
        except (aiomqtt.MqttError, OSError) as exc:
            error = exc
        wait = backoff.next(ran_s=time.monotonic() - began) * random.uniform(0.8, 1.2)
        lost(error, wait)
        await asyncio.sleep(wait)

"""One MQTT connection's settings as aiomqtt takes them, and the loop that keeps one connected.

Every MQTT client of ours (the uplink's sink, the fleet service, the console's fleet page, ``edgesight
fleet``) connects from an ``MqttSink`` section the same way: TLS with the given CA bundle (else the
system's), a client certificate for mutual TLS (AWS IoT Core's), the section's credentials and keepalive.
aiomqtt is imported where a connection is made, not here: ``edgesight`` starts without it.

A client that reads what anyone on the broker may publish (the fleet's retained documents and states)
gives ``max_packet_bytes``: it then speaks MQTT v5 and sends the Maximum Packet Size property with its
CONNECT, so that the broker drops a larger message for it instead of sending it (MQTT v5 3.1.2.11.4;
Mosquitto 2 does; AWS IoT Core takes no message over 128 kB anyway): paho, under aiomqtt, reads a packet
whole before anyone can look at its size. The uplink, which only publishes, keeps MQTT v3.1.1.
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

__all__ = ["CONNECT_TIMEOUT_S", "NEVER_EXPIRES", "client_options", "keep_connected", "tls_context"]

CONNECT_TIMEOUT_S = 10.0  # connecting, subscribing: a broker that does not answer in this long is down
NEVER_EXPIRES = 0xFFFFFFFF  # MQTT v5's Session Expiry Interval for a session kept as v3.1.1 keeps one
MQTT_V5 = 5  # paho's MQTTv5, aiomqtt's ProtocolVersion.V5


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


def client_options(
    settings: MqttSink,
    client_id: str | None,
    *,
    clean_session: bool | None = None,
    max_packet_bytes: int | None = None,
) -> dict[str, Any]:
    """``aiomqtt.Client``'s keyword arguments for ``settings`` as ``client_id`` (None: one the client
    makes up); the caller adds its own (a will, queue sizes). Opens the TLS files now: an unreadable one
    raises OSError (``ssl.SSLError`` is one) here, where a connection attempt fails.

    ``max_packet_bytes``: MQTT v5, and the broker told to send nothing larger (see the module). v5 has no
    ``clean_session``: pass it here, not to the client, and it becomes v5's clean start and session expiry.

    >>> options = client_options(MqttSink(host="mq.example", username="site"), "edgesight-a")
    >>> options["hostname"], options["port"], options["identifier"], options["tls_context"]
    ('mq.example', 1883, 'edgesight-a', None)
    >>> "protocol" in options  # MQTT v3.1.1, aiomqtt's default
    False
    >>> limited = client_options(MqttSink(host="mq.example"), "f", clean_session=True, max_packet_bytes=262_144)
    >>> limited["protocol"].value, limited["clean_start"], limited["properties"].MaximumPacketSize
    (5, True, 262144)
    """
    options: dict[str, Any] = {
        "hostname": settings.host,
        "port": settings.port,
        "identifier": client_id,
        "username": settings.username,
        "password": settings.password,
        "keepalive": settings.keepalive_s,
        "tls_context": tls_context(settings.tls),
        "timeout": CONNECT_TIMEOUT_S,
    }
    if max_packet_bytes is None:
        if clean_session is not None:
            options["clean_session"] = clean_session
        return options
    if not 0 < max_packet_bytes <= 0xFFFFFFFF:  # a four-byte integer, never 0 (v5 3.1.2.11.4)
        raise ValueError(f"max_packet_bytes {max_packet_bytes}: not between 1 and 2**32 - 1")
    import aiomqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = max_packet_bytes
    if clean_session is False:  # the session outlives the connection, as v3.1.1's does
        properties.SessionExpiryInterval = NEVER_EXPIRES
    # clean_session True or None: a clean start, and the session ends with the connection (v5's default)
    return {
        **options,
        "protocol": aiomqtt.ProtocolVersion(MQTT_V5),
        "clean_start": clean_session is not False,
        "properties": properties,
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

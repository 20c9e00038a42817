"""The ZeroMQ bus: endpoint strings, broadcast streams, acknowledged events.

``endpoint`` (a plain value the site file's models use too), ``opening`` (a socket on an endpoint:
Curve, private ipc files), ``broadcast`` (Publisher, Subscriber), ``acknowledged`` (EventSender,
EventReceiver), ``security`` (who may speak).
"""

from common.bus.acknowledged import Delivery, EventReceiver, EventSender
from common.bus.broadcast import Publisher, Received, Subscriber
from common.bus.endpoint import Endpoint, Pattern
from common.bus.opening import open_socket

__all__ = [
    "Delivery",
    "Endpoint",
    "EventReceiver",
    "EventSender",
    "Pattern",
    "Publisher",
    "Received",
    "Subscriber",
    "open_socket",
]

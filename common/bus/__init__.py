"""The ZeroMQ bus: endpoint strings, broadcast streams, acknowledged events."""

from common.bus.endpoint import Endpoint, Pattern
from common.bus.sockets import Delivery, EventReceiver, EventSender, Publisher, Received, Subscriber

__all__ = ["Delivery", "Endpoint", "EventReceiver", "EventSender", "Pattern", "Publisher", "Received", "Subscriber"]

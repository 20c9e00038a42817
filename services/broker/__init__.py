"""The bus broker: ZeroMQ's own XSUB/XPUB forwarder, so producers and consumers need one address."""

from services.broker.service import BrokerService

__all__ = ["BrokerService"]

"""The service base's names agree with the wire: a state a service sets is one its Health may carry."""

from __future__ import annotations

from typing import get_args

from common.service import ServiceState
from contracts import ServiceState as WireServiceState


def test_every_service_state_is_a_wire_state() -> None:
    """``contracts.ServiceState`` is the source of truth; the enum only names the states a service sets."""
    assert {state.value for state in ServiceState} <= set(get_args(WireServiceState))
    assert [state.name.lower() for state in ServiceState] == [state.value for state in ServiceState]

"""The rule kinds, one module each: zone, line, dwell, crowd, PPE, presence (``base``: what they share).

Each is a ``RuleState``: built from its ``common.config.rules`` model by ``CameraRules``
(``services.rules.engine``), stepped once a frame, and answering with drafts of events.
"""

from services.rules.kinds.base import RuleState, Zone, ZoneTrack
from services.rules.kinds.crowd import CrowdState
from services.rules.kinds.dwell import DwellState
from services.rules.kinds.line import LineState
from services.rules.kinds.ppe import PpeState
from services.rules.kinds.presence import PresenceState
from services.rules.kinds.zone import ZoneState

__all__ = [
    "CrowdState",
    "DwellState",
    "LineState",
    "PpeState",
    "PresenceState",
    "RuleState",
    "Zone",
    "ZoneState",
    "ZoneTrack",
]

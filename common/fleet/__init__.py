"""A fleet of sites, seen and steered over MQTT in AWS IoT's shapes: the protocol both ends share.

- :mod:`~common.fleet.signing`: signed job documents (ed25519), verified before anything runs;
- :mod:`~common.fleet.ledger`: what a site remembers (nonces, finished jobs) against replays;
- :mod:`~common.fleet.topics`: every topic, AWS IoT's named shadow and Jobs API under a topic root;
- :mod:`~common.fleet.shapes`: the messages, built and parsed (parsers raise only ``MalformedMessage``);
- :mod:`~common.fleet.untrusted`: values off the network read safely (payloads, numbers, printable text);
- :mod:`~common.fleet.roster`: one row per site from its reported state;
- :mod:`~common.fleet.fleet_file`: the operator's ``fleet.yaml``.

The site's side is ``services/fleet``, the operator's ``edgesight fleet`` (``common/cli``).
"""

from common.fleet.fleet_file import BucketConfig, FleetFile, FleetSite, load_fleet_file, parse_fleet_file
from common.fleet.ledger import Ledger, LedgerError
from common.fleet.roster import SiteRow, roster
from common.fleet.shapes import (
    Desired,
    Execution,
    MalformedMessage,
    StatusUpdate,
    desired_delta,
    desired_update,
    job_execution,
    notify_next,
    parse_desired,
    parse_execution,
    parse_reported,
    parse_status_update,
    reported_update,
    shadow_get,
    start_next,
    status_update,
)
from common.fleet.signing import OPERATIONS, JobRefused, SignedJob, canonical, sign_document, verify_document
from common.fleet.topics import FleetTopics, job_id_of, thing_of

__all__ = [
    "OPERATIONS",
    "BucketConfig",
    "Desired",
    "Execution",
    "FleetFile",
    "FleetSite",
    "FleetTopics",
    "JobRefused",
    "Ledger",
    "LedgerError",
    "MalformedMessage",
    "SignedJob",
    "SiteRow",
    "StatusUpdate",
    "canonical",
    "desired_delta",
    "desired_update",
    "job_execution",
    "job_id_of",
    "load_fleet_file",
    "notify_next",
    "parse_desired",
    "parse_execution",
    "parse_fleet_file",
    "parse_reported",
    "parse_status_update",
    "reported_update",
    "roster",
    "shadow_get",
    "sign_document",
    "start_next",
    "status_update",
    "thing_of",
    "verify_document",
]

"""Rules per camera (``cameras.<name>.rules``), with 0-1 geometry, class filters, schedules and actions."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from common.config._types import Line, Name, Polygon, Section, Unit

__all__ = [
    "Action",
    "CommandAction",
    "CrowdRule",
    "DwellRule",
    "EventsConfig",
    "ExternalRule",
    "GpioAction",
    "LineRule",
    "PpeRule",
    "PresenceRule",
    "Rule",
    "ScheduleWindow",
    "TrackerConfig",
    "WebhookAction",
    "ZoneRule",
]


Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
ALL_DAYS: list[Day] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class ScheduleWindow(Section):
    days: list[Day] = Field(default_factory=lambda: list(ALL_DAYS))
    start: str = Field("00:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$", description="HH:MM, site local time")
    end: str = Field(
        "24:00", pattern=r"^(([01]\d|2[0-3]):[0-5]\d|24:00)$", description="HH:MM; before start wraps midnight"
    )


class WebhookAction(Section):
    type: Literal["webhook"]
    url: str = Field(..., pattern=r"^https?://")
    timeout_s: float = Field(5.0, gt=0, le=120)
    retries: int = Field(3, ge=0, le=20)


class GpioAction(Section):
    type: Literal["gpio"]
    chip: str = Field("/dev/gpiochip0")
    line: int = Field(..., ge=0, le=1023)
    active_s: float = Field(1.0, gt=0, le=3600, description="How long the line stays active.")


class CommandAction(Section):
    type: Literal["command"]
    argv: list[str] = Field(..., min_length=1, description="Run directly, never through a shell.")
    timeout_s: float = Field(10.0, gt=0, le=3600)


Action = Annotated[WebhookAction | GpioAction | CommandAction, Field(discriminator="type")]


class _RuleBase(Section):
    # the event types the rules service makes for a rule of this kind (the uplink refuses others naming
    # it: an integrator's events name an external rule); None: any (an external rule's)
    EVENT_TYPES: ClassVar[frozenset[str] | None] = None

    classes: list[str] = Field(default_factory=list, description="Labels this rule looks at; empty means all.")
    min_score: Unit = Field(0.0, description="Ignore detections scored below this.")
    schedule: list[ScheduleWindow] = Field(default_factory=list, description="Active windows; empty means always.")
    cooldown_s: float = Field(0.0, ge=0, le=86400, description="Quiet time per object after an event.")
    snapshot: bool = Field(False, description="Attach a (privacy-masked) JPEG of the best frame to events.")
    actions: list[Action] = Field(default_factory=list)
    model: Name | None = Field(
        None,
        description="The model whose tracks this rule sees; unset: every model of the camera (two models "
        "detecting the same class then count each object once per model).",
    )


class ZoneRule(_RuleBase):
    type: Literal["zone"]
    EVENT_TYPES = frozenset({"zone_enter", "zone_exit", "count_report"})
    polygon: Polygon
    anchor: Literal["bottom_center", "center", "top_center"] = Field(
        "bottom_center", description="Point of the box tested against the zone (feet, as Frigate and nvdsanalytics do)."
    )
    inertia_frames: int = Field(
        3, ge=1, le=100, description="Frames inside before an object counts as in the zone; damps flicker."
    )


class LineRule(_RuleBase):
    type: Literal["line"]
    EVENT_TYPES = frozenset({"line_cross", "count_report"})
    line: Line
    in_side: Literal["left", "right"] = Field(
        "right", description="Crossing onto this side (seen walking from the first point to the second) counts as 'in'."
    )
    min_distance: float = Field(
        0.2,
        ge=0,
        le=10,
        description="How far past the line the object's anchor must get before a crossing counts, in the box's "
        "own extent across the line: damps jitter at any frame rate.",
    )
    min_frames: int = Field(
        1,
        ge=1,
        le=100,
        description="Frames on the new side before a crossing counts (with min_distance); an object that vanishes "
        "there, past min_distance, counts sooner.",
    )


class DwellRule(_RuleBase):
    type: Literal["dwell"]
    EVENT_TYPES = frozenset({"dwell", "count_report"})
    zone: Name
    seconds: float = Field(..., gt=0, le=86400)


class CrowdRule(_RuleBase):
    type: Literal["crowd"]
    EVENT_TYPES = frozenset({"overcrowded", "cleared", "count_report"})
    zone: Name
    min_count: int = Field(..., ge=1, le=10_000)
    seconds: float = Field(0.0, ge=0, le=86400)


class PpeRule(_RuleBase):
    type: Literal["ppe"]
    EVENT_TYPES = frozenset({"ppe_violation"})
    zone: Name | None = None
    person_class: str = "person"
    required: list[str] = Field(..., min_length=1, description="Items every person needs, e.g. [vest, helmet].")
    overlap: Unit = Field(0.3, description="Share of the item's box inside the person's box to count as worn.")
    min_frames: int = Field(5, ge=1, le=1000)


class PresenceRule(_RuleBase):
    type: Literal["presence"]
    EVENT_TYPES = frozenset({"presence"})
    zone: Name | None = None


class ExternalRule(_RuleBase):
    """Events decided by a service of your own, sent on the acknowledged path (``bus.events.send``): the
    uplink takes events naming this rule; the rules service keeps no state for it and decides nothing."""

    type: Literal["external"]

    @field_validator("actions")
    @classmethod
    def _no_actions(cls, actions: list[Action]) -> list[Action]:
        if actions:  # the rules service runs a rule's actions on the events it decides, and it decides none here
            raise ValueError(
                "an external rule cannot have actions: the rules service runs actions only for the events it "
                "decides itself, and another service decides this rule's events"
            )
        return actions


Rule = Annotated[
    ZoneRule | LineRule | DwellRule | CrowdRule | PpeRule | PresenceRule | ExternalRule, Field(discriminator="type")
]


class TrackerConfig(Section):
    """``tracker:`` — multi-object tracking per camera and model (rules service). Every setting is in
    seconds, scores or box sizes, never frames or pixels, so the defaults hold from 5 to 30 fps."""

    high_score: Unit = Field(0.5, description="Detections at or above this are matched first and may start tracks.")
    low_score: Unit = Field(0.1, description="Detections between this and high_score only continue existing tracks.")
    match_iou: Unit = Field(
        0.2, description="IoU between a track's predicted box and a detection that matches them outright."
    )
    match_distance: float = Field(
        1.0,
        ge=0,
        le=20,
        description="Where boxes no longer overlap: how far (in box sizes) a detection's centre may be from a "
        "track's predicted centre, before the gate widens with time; 0 matches by IoU alone.",
    )
    max_speed: float = Field(
        15.0,
        gt=0,
        le=1000,
        description="The fastest objects move, in box sizes per second: the most the gate of a track matched once "
        "(velocity unknown) widens per second; below it, three times the median speed of the camera's moving "
        "tracks of that class plus one. Raise for highways at low fps; lower in dense crowds.",
    )
    min_hits: int = Field(3, ge=1, le=100, description="Matches before a track exists (and rules see it)...")
    confirm_s: float = Field(
        0.15, ge=0, le=60, description="...or two matches at least this many seconds apart (low frame rates)."
    )
    max_age_s: float = Field(
        1.0, gt=0, le=600, description="Unmatched this long, a track is gone; until then it can be re-found."
    )


class EventsConfig(Section):
    """``events:`` — where the rules service writes events besides the bus, and how snapshots look."""

    jsonl: str | None = Field(None, description="Also append every event here as a JSON line (relative: state_dir).")
    jpeg_quality: int = Field(85, ge=10, le=100)
    outbox_max_mb: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Room of the rules outbox on disk (events the uplink has not acknowledged); "
        "unset: the same as uplink.spool.max_mb.",
    )

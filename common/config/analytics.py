"""``analytics:`` — the counts kept over time by rules (minutes, hours, days) and their interval reports."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from common.config._types import Section

__all__ = ["AnalyticsConfig", "HeatmapConfig"]


class HeatmapConfig(Section):
    columns: int = Field(
        64,
        ge=4,
        le=256,
        description="Heatmap cells across the frame; more shows finer paths and costs more room per camera, "
        "label and hour (columns * rows * 4 bytes before compression).",
    )
    rows: int = Field(36, ge=4, le=256, description="Grid rows down the frame (64x36 keeps 16:9 cells square).")


class AnalyticsConfig(Section):
    """Series of line crossings, zone occupancy, dwell times, crowd counts and a heatmap, kept by rules in
    ``state_dir/rules.sqlite`` beside the running totals (one transaction: a restart never counts twice)."""

    enabled: bool = Field(True, description="Keep the series; off, rules keeps only the running totals.")
    minute_days: int = Field(
        7,
        ge=1,
        le=90,
        description="Days minute rows are kept; longer gives 15-minute buckets further back, "
        "costs about 1440 rows per series per day.",
    )
    retention_days: int = Field(400, ge=1, le=3660, description="Days hour and day rows (and daily heatmaps) are kept.")
    report_interval_s: int = Field(
        900,
        ge=60,
        le=86400,
        description="Seconds between count reports upstream, aligned to the wall clock (UTC epoch); whole minutes "
        "(a report is made of minute rows) that divide a day (60, 300, 900, 3600, ...). Shorter is fresher upstream, "
        "costs an event per rule per interval.",
    )
    heatmap: HeatmapConfig = Field(default_factory=HeatmapConfig)

    @field_validator("report_interval_s")
    @classmethod
    def _divides_a_day(cls, seconds: int) -> int:
        if seconds % 60 or 86400 % seconds:
            raise ValueError(
                "must be whole minutes that divide a day (60, 300, 900, 3600, ...), so intervals align to days"
            )
        return seconds

    @model_validator(mode="after")
    def _minutes_within_retention(self) -> AnalyticsConfig:
        if self.minute_days > self.retention_days:
            raise ValueError(
                f"analytics.minute_days ({self.minute_days}) is longer than retention_days ({self.retention_days}):"
                " hours and days are what is left of minutes, so they are kept at least as long"
            )
        return self

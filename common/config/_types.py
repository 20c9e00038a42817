"""Building blocks shared by the config sections: strict models, names, 0-1 geometry."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, WithJsonSchema

__all__ = [
    "NAME_PATTERN",
    "NAME_RULE",
    "HttpUrl",
    "Line",
    "Name",
    "Point",
    "Polygon",
    "Section",
    "Unit",
    "auto_or_count",
    "auto_or_count_schema",
]


class Section(BaseModel):
    """Every config model: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


# Checked by pydantic-core's Rust regex, whose `$` is the end of the text. With Python's `re`, use fullmatch:
# there `$` also matches before a trailing "\n" ("person\n" would pass re.match).
NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$"
NAME_RULE = "a name may use letters, digits, '_', '.', '-' (at most 64, not starting with '.' or '-')"  # NAME_PATTERN
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, _ . -")]
Unit = Annotated[float, Field(ge=0.0, le=1.0)]
Point = Annotated[tuple[Unit, Unit], Field(description="[x, y] as fractions of the frame's width and height (0-1)")]


def _distinct(
    points: tuple[tuple[float, float], tuple[float, float]],
) -> tuple[tuple[float, float], tuple[float, float]]:
    if points[0] == points[1]:
        raise ValueError("a line needs two different points")
    return points


def _has_area(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    twice_area = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1], strict=True))
    if abs(twice_area) < 1e-9:
        raise ValueError("a polygon's points must enclose an area")
    return points


Line = Annotated[tuple[Point, Point], AfterValidator(_distinct), Field(description="[[x0, y0], [x1, y1]], 0-1")]
Polygon = Annotated[
    list[Point], Field(min_length=3, max_length=64, description="[[x, y], ...], 0-1"), AfterValidator(_has_area)
]


_HTTP_URL = re.compile(r"https?://[^\s]{1,2000}")


def _http_url(url: str) -> str:
    if not _HTTP_URL.fullmatch(url):
        raise ValueError("must be an http:// or https:// URL")
    return url


HttpUrl = Annotated[str, AfterValidator(_http_url)]  # a link shown to people: a site's console


def auto_or_count(low: int, high: int) -> PlainValidator:
    """Accepts ``auto`` or a whole number from ``low`` to ``high``, with one error that says both (a
    union's error would name each branch): ``Annotated[int | Literal["auto"], auto_or_count(1, 64),
    auto_or_count_schema(1, 64)]``."""

    def check(value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            return value
        raise ValueError(f"expected auto or a whole number from {low} to {high}")

    return PlainValidator(check)


def auto_or_count_schema(low: int, high: int) -> WithJsonSchema:
    return WithJsonSchema({"anyOf": [{"const": "auto"}, {"type": "integer", "minimum": low, "maximum": high}]})

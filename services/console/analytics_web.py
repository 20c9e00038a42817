"""Counts over time in the console's API (shown at ``/analytics``): what series rules keeps, one rule's
series in buckets (JSON, and the very same as CSV), a dwell rule's histogram and a camera's heatmap.

Every parameter is checked by services/console/analytics_query.py before anything is read (a question that
does not check is a 400 saying why); reading is services/console/analytics.py, read-only.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import functools
import io
import json
import logging
import math
import sqlite3
import time
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from aiohttp import web
from aiohttp.typedefs import Handler

from common.analytics import BUCKETS, CROWD_LABEL, DWELL_BOUNDS_S, KIND_METRICS, SeriesKey
from common.analytics.histogram import quantile
from services.console.analytics_query import (
    ADDITIVE,
    MAX_POINTS,
    MAX_RANGE_DAYS,
    QueryError,
    Range,
    bucket_of,
    label_of,
    metrics_of,
    name_of,
    range_of,
)
from services.console.context import CONSOLE, ConsoleContext, error
from services.console.heatmap import render_heatmap

__all__ = ["ROUTES", "series_csv_text"]

log = logging.getLogger(__name__)

PNG_COMPRESSION = 3  # of 9: a 1280x720 heatmap in tens of milliseconds


def _checked(handler: Handler) -> Handler:
    """A question that does not check is a 400 with its reason; a file rules holds that cannot be read,
    a 503 (the reason in the console's log, not in the answer)."""

    @functools.wraps(handler)
    async def answer(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except QueryError as exc:
            return error(400, str(exc))
        except sqlite3.Error as exc:
            where = str(request.app[CONSOLE].analytics.path)
            log.warning("series unreadable", extra={"path": where, "error": str(exc)})
            return error(503, "the series cannot be read now (see the console's log)")

    return answer


def _utc(seconds: int) -> str:
    """A bucket's edge as the API writes it (ISO 8601, UTC), 1970 included."""
    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat()


def _camera(console: ConsoleContext, query: Mapping[str, str]) -> str:
    camera = name_of(query, "camera")
    assert camera is not None
    if camera not in console.config.cameras:
        raise _not_found(f"no camera {camera!r}")
    return camera


def _kind(console: ConsoleContext, camera: str, rule: str) -> str:
    """The kind of series the rule keeps: as the site file says now, else as rules kept it (a rule since
    removed keeps its history)."""
    configured = console.config.cameras[camera].rules.get(rule)
    if configured is not None and configured.type in KIND_METRICS:
        return configured.type
    for key in console.analytics.catalog():
        if key.camera == camera and key.rule == rule:
            return key.kind
    kinds = ", ".join(KIND_METRICS)
    raise _not_found(f"camera {camera!r} has no rule {rule!r} that keeps series ({kinds})")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def _camera_labels(console: ConsoleContext, camera: str, keys: list[SeriesKey]) -> set[str]:
    """The labels the camera is known to see: its series' (a crowd's ``all`` aside), its rules' and its
    models' classes where they list them, and what the live view has seen since the console started."""
    labels = {key.label for key in keys if key.camera == camera and key.kind != "crowd"}
    for rule in console.config.cameras[camera].rules.values():
        labels.update(rule.classes)
    for model in console.config.cameras[camera].models or list(console.config.models):
        config = console.config.models.get(model)
        labels.update(config.classes if config is not None else ())
    view = console.live.cameras.get(camera)
    return labels | (view.labels if view else set())


def _heatmap_labels(console: ConsoleContext, camera: str) -> set[str]:
    """The labels a heatmap can be asked for: those it holds, and those the camera is known to see."""
    return console.analytics.heat_labels(camera) | _camera_labels(console, camera, console.analytics.catalog())


def _rule_labels(console: ConsoleContext, camera: str, rule: str, kind: str, keys: list[SeriesKey]) -> list[str]:
    """The labels a rule can be asked for: those it kept series of, and those its ``classes`` name (kept or
    not yet: zeros); a crowd rule's one label is CROWD_LABEL; a rule with no ``classes`` (every label),
    any label the camera is known to see."""
    if kind == "crowd":
        return [CROWD_LABEL]
    labels = {key.label for key in keys if key.camera == camera and key.rule == rule and key.kind == kind}
    configured = console.config.cameras[camera].rules.get(rule)
    if configured is not None and configured.type == kind and configured.classes:
        labels.update(configured.classes)
    else:
        labels |= _camera_labels(console, camera, keys)
    return sorted(labels)


def _label(console: ConsoleContext, camera: str, rule: str, kind: str, label: str | None) -> None:
    """An unknown label is a 404 naming the known ones (a typo is not an empty chart)."""
    if label is None:
        return
    known = _rule_labels(console, camera, rule, kind, console.analytics.catalog())
    if label in known:
        return
    if kind == "crowd":
        raise QueryError(
            f"label: a crowd rule counts every label together; its only label is {CROWD_LABEL!r} "
            f"(or none), not {label!r}"
        )
    raise _not_found(
        f"label: rule {rule!r} of camera {camera!r} has no label {label!r}; "
        f"known: {', '.join(known) if known else 'none yet'}"
    )


def _minutes_kept(console: ConsoleContext, span: Range) -> None:
    """Buckets finer than an hour come from minute rows, kept analytics.minute_days (from a whole hour): a
    range reaching further back would show its old buckets as empty, so it is refused."""
    if span.bucket_s >= 3600:
        return
    days = console.config.analytics.minute_days
    kept_from = int(time.time()) - days * 86400
    if span.start_s < kept_from - kept_from % 3600:
        raise QueryError(
            f"bucket: 15-minute buckets are kept {days} days (analytics.minute_days); this range starts "
            "earlier: choose an hour or a day"
        )


def _labels(label: str | None, kept: list[str], metrics: tuple[str, ...]) -> list[str]:
    """The labels to add up: the one asked for, or every label the rule kept where the metrics add up."""
    if label is not None:
        return [label]
    spread = [metric for metric in metrics if metric not in ADDITIVE]
    if spread and len(kept) > 1:
        raise QueryError(f"label: required for {', '.join(spread)}: this rule has several ({', '.join(kept)})")
    return kept


def _rule_asked(console: ConsoleContext, query: Mapping[str, str]) -> tuple[str, str, str | None]:
    """The camera, rule and (optional) label a series or dwell question names, each checked in that order."""
    camera = _camera(console, query)
    rule = name_of(query, "rule")
    assert rule is not None
    return camera, rule, label_of(query)


async def _series(request: web.Request) -> dict[str, Any]:
    console = request.app[CONSOLE]
    query = request.query
    camera, rule, label = _rule_asked(console, query)
    span = range_of(query, bucket_of(query))
    _minutes_kept(console, span)
    kind = await asyncio.to_thread(_kind, console, camera, rule)
    await asyncio.to_thread(_label, console, camera, rule, kind, label)
    metrics = metrics_of(query, kind)
    labels = _labels(label, await asyncio.to_thread(console.analytics.labels, camera, rule), metrics)
    columns = {
        metric: await asyncio.to_thread(console.analytics.series, camera, rule, labels, metric, span)
        for metric in metrics
    }
    points = [
        {"start": _utc(start_s), **{metric: values[i] for metric, values in columns.items()}}
        for i, start_s in enumerate(span.starts)
    ]
    return {
        "camera": camera,
        "rule": rule,
        "kind": kind,
        "label": label,
        "labels": labels,
        "metrics": list(metrics),
        "bucket_s": span.bucket_s,
        "from": _utc(span.start_s),
        "to": _utc(span.end_s),
        "points": points,
        "totals": {metric: _total(metric, values) for metric, values in columns.items()},
    }


def _total(metric: str, values: list[float | int | None]) -> float | int | None:
    """The range's figure: a sum of counts, a mean of means, the peak of anything else (peaks, percentiles)."""
    present = [value for value in values if value is not None]
    if metric in ADDITIVE:
        return sum(present)
    if not present:
        return None
    if metric.endswith("_mean"):
        return round(sum(present) / len(present), 3)
    return max(present)


def series_csv_text(answer: dict[str, Any]) -> str:
    """The JSON answer's points as CSV: a ``start`` column and one per metric, the same values (an empty
    cell where the JSON has null)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["start", *answer["metrics"]])
    for point in answer["points"]:
        writer.writerow([point["start"], *("" if point[m] is None else point[m] for m in answer["metrics"])])
    return out.getvalue()


@_checked
async def series(request: web.Request) -> web.StreamResponse:
    return web.json_response(await _series(request))


@_checked
async def series_csv(request: web.Request) -> web.StreamResponse:
    answer = await _series(request)
    day = (answer["from"] or "")[:10]
    label = (answer["label"] or "all").replace(" ", "_")  # a file name without quotes or spaces to escape
    name = "-".join([answer["camera"], answer["rule"], label, day, str(answer["bucket_s"])])
    return web.Response(
        text=series_csv_text(answer),
        content_type="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"', "Cache-Control": "no-store"},
    )


@_checked
async def dwell(request: web.Request) -> web.StreamResponse:
    """``?camera=&rule=&label=&from=&to=&bucket=``: how long objects stayed, in bins; p50 and p90 bounds."""
    console = request.app[CONSOLE]
    query = request.query
    camera, rule, label = _rule_asked(console, query)
    span = range_of(query, bucket_of(query, default=900), max_points=None)
    kind = await asyncio.to_thread(_kind, console, camera, rule)
    if kind != "dwell":
        raise QueryError(f"rule: {rule} is a {kind} rule; only dwell rules keep dwell times")
    await asyncio.to_thread(_label, console, camera, rule, kind, label)
    labels = [label] if label is not None else await asyncio.to_thread(console.analytics.labels, camera, rule)
    counts = await asyncio.to_thread(console.analytics.dwell, camera, rule, labels, span)
    bins = [
        {"upper_s": None if math.isinf(bound) else bound, "count": count}
        for bound, count in zip(DWELL_BOUNDS_S, counts, strict=True)
    ]
    return web.json_response(
        {
            "camera": camera,
            "rule": rule,
            "label": label,
            "labels": labels,
            "from": _utc(span.start_s),
            "to": _utc(span.end_s),
            "bins": bins,
            "count": sum(counts),
            "p50_s": quantile(counts, 0.5),
            "p90_s": quantile(counts, 0.9),
        }
    )


@_checked
async def heatmap_png(request: web.Request) -> web.StreamResponse:
    """``?from=&to=&label=``: where tracked objects went, coloured over the camera's newest frame."""
    console = request.app[CONSOLE]
    camera = _camera(console, {"camera": request.match_info["name"]})
    label = label_of(request.query)
    span = range_of(request.query, 3600, max_points=None)  # rules keeps the grid per hour
    if label is not None:
        known = sorted(await asyncio.to_thread(_heatmap_labels, console, camera))
        if label not in known:
            raise _not_found(
                f"label: camera {camera!r} has no heatmap of {label!r}; known: {', '.join(known) or 'none yet'}"
            )
    grid = await asyncio.to_thread(console.analytics.heatmap, camera, label, span)
    png = await asyncio.to_thread(_heatmap_picture, console, camera, grid)
    return web.Response(
        body=png,
        content_type="image/png",
        headers={"Cache-Control": "no-store", "X-Heatmap-Peak": str(int(grid.max()) if grid.size else 0)},
    )


def _heatmap_picture(console: ConsoleContext, camera: str, grid: np.ndarray[Any, Any]) -> bytes:
    jpeg = console.live.picture(camera, console.config.cameras[camera], overlay=False)  # masks applied
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
    frame = None if decoded is None else np.asarray(decoded, np.uint8)
    ok, png = cv2.imencode(".png", render_heatmap(grid, frame), [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return png.tobytes()


@_checked
async def catalog(request: web.Request) -> web.StreamResponse:
    """The cameras of the site file, each with the rules that keep series (as the site file has them, and
    any removed since whose history rules still keeps), their labels and metrics."""
    console = request.app[CONSOLE]
    keys = await asyncio.to_thread(console.analytics.catalog)
    cameras = []
    for name, camera in console.config.cameras.items():
        kept = [key for key in keys if key.camera == name]
        rules: dict[str, dict[str, Any]] = {
            rule: {"name": rule, "kind": config.type, "labels": [], "in_site_file": True}
            for rule, config in camera.rules.items()
            if config.type in KIND_METRICS
        }
        for key in kept:
            removed = {"name": key.rule, "kind": key.kind, "labels": [], "in_site_file": False}
            found = rules.setdefault(key.rule, removed)
            if found["kind"] == key.kind:  # a rule whose kind changed: its old series are not this one's
                found["labels"] = sorted({*found["labels"], key.label})
        for rule in rules.values():
            rule["metrics"] = list(KIND_METRICS[rule["kind"]])
            configured = camera.rules.get(rule["name"])
            if rule["in_site_file"] and configured is not None and rule["kind"] != "crowd":
                rule["labels"] = sorted({*rule["labels"], *configured.classes})  # not counted yet: zeros
        labels = _camera_labels(console, name, keys)
        cameras.append({"name": name, "rules": list(rules.values()), "labels": sorted(labels)})
    return web.json_response(
        {
            "available": console.analytics.available,
            "recording": console.config.analytics.enabled,
            "cameras": cameras,
            "kinds": {kind: list(metrics) for kind, metrics in KIND_METRICS.items()},
            "buckets": list(BUCKETS),
            "max_days": MAX_RANGE_DAYS,
            "max_points": MAX_POINTS,
        }
    )


ROUTES = [
    ("GET", "/api/analytics/catalog", catalog),
    ("GET", "/api/series", series),
    ("GET", "/api/series.csv", series_csv),
    ("GET", "/api/dwell", dwell),
    ("GET", "/api/cameras/{name}/heatmap.png", heatmap_png),
]

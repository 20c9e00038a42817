"""The rules service: Detections in, tracked objects, counts and events out.

Per camera and model a tracker turns detections into tracks; the camera's rules turn tracks into
event drafts; each becomes an Event with a stable id (``services.rules.identity``: unguessable
without the site's secret), the frame it was decided on and, where the rule asks, a privacy-masked
snapshot; it goes to the uplink (acknowledged, resent until then), to ``events.jsonl`` when
configured, and to the rule's local actions. A camera's trackers have slots (``services.rules.slots``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from common._compat import TaskGroup
from common.bus import EventSender, Subscriber
from common.config import CameraConfig, SiteConfig, load_config
from common.config.rules import Action
from common.errors import EdgeSightError, ShmError, StaleFrameError
from common.files import private_dir, private_open
from common.service import Service, ServiceState, control_reply
from common.shm import FrameReaders
from contracts import (
    ContractError,
    Control,
    Detections,
    Event,
    FrameRef,
    Refusal,
    decode,
    encode,
    topic,
)
from services.rules import metrics
from services.rules.analytics import SeriesRecorder, continue_counters
from services.rules.engine import CameraRules
from services.rules.identity import EventIds
from services.rules.labels import bounded, first_entries, occupancy_text, set_zone_gauges
from services.rules.moment import Draft, Moment, Observed
from services.rules.outbox import Outbox
from services.rules.outputs import SqliteCountStore, event_json, make_snapshot, run_action
from services.rules.reports import IntervalReporter
from services.rules.scene import scene_of
from services.rules.silence import SilentModels
from services.rules.slots import MAX_MODELS_PER_CAMERA, CameraState, reserved_models
from services.rules.tracker import Track

__all__ = ["MAX_MODELS_PER_CAMERA", "RulesService"]

log = logging.getLogger(__name__)

ITEM_MAX_AGE_S = 1.0  # detections of another model count for PPE this long
MAX_RUNNING_ACTIONS = 64  # local actions (webhook, command, GPIO) running at once; past it they are dropped


def _box(values: npt.NDArray[Any]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = values.tolist()  # Python floats in one call, not four float()s (per track, per frame)
    return x1, y1, x2, y2


def _outbox_max_bytes(config: SiteConfig) -> int:
    """The outbox's room on disk: ``events.outbox_max_mb``, else the uplink spool's (both hold events the
    uplink has not yet sent on, so by default one bound holds for both)."""
    return (config.events.outbox_max_mb or config.uplink.spool.max_mb) << 20


def _observed(detections: Detections, tracks: list[Track]) -> list[Observed]:
    """The rules' view of ``tracks``, tracked from ``detections``' model."""
    observed = []
    for track in tracks:
        label = detections.labels.get(track.class_id, str(track.class_id))
        box, origin = _box(track.box), _box(track.origin)
        observed.append(Observed(track.track_id, label, round(track.score, 4), box, origin, detections.model))
    return observed


def _count_and_log(camera: str, draft: Draft, store: SqliteCountStore) -> None:
    """The draft in the metrics and the debug log."""
    track = draft.track
    metrics.EVENTS.labels(draft.rule, draft.event_type).inc()
    if draft.event_type == "line_cross" and track is not None:
        direction = str(draft.attributes["direction"])
        label = store.label_for(camera, draft.rule, track.label)  # as counted: ``other`` past a line's labels
        metrics.LINE_CROSSINGS.labels(camera, draft.rule, direction, label).inc()
    log.debug(
        "event",
        extra={
            "camera": camera,
            "rule": draft.rule,
            "type": draft.event_type,
            "lifecycle": draft.lifecycle,
            "track": track.track_id if track else None,
        },
    )


class RulesService(Service):
    """Tracks objects and applies each camera's rules."""

    name = "rules"

    def setup(self) -> None:
        self.timezone = zoneinfo.ZoneInfo(self.config.site.timezone)
        self.store = SqliteCountStore(Path(self.config.site.state_dir) / "rules.sqlite", self.config.analytics)
        self.series = SeriesRecorder(self.store.series)  # counts over time, beside the totals
        continue_counters(self.store)
        self.cameras = {
            name: self._camera(name, camera, CameraRules(name, camera, self.store), self.config)
            for name, camera in self.config.cameras.items()
            if camera.enabled and camera.rules
        }
        state_dir = Path(self.config.site.state_dir)
        self.event_ids = EventIds(state_dir)
        site, analytics = self.config.site.name, self.config.analytics
        self.reporter = IntervalReporter(self.store, self.store.db, state_dir / "rules.sqlite", site, analytics)
        self.outbox = Outbox(state_dir / "rules-outbox.sqlite", max_bytes=_outbox_max_bytes(self.config))
        self.outbox_changed = asyncio.Event()
        # tracks gauges of silent models go to 0; made-up models' trackers give their slots up
        self.silent = SilentModels(self.config.tracker.max_age_s, on_silent=self._model_silent)
        self.events_sent = 0
        self.frames_handled = 0  # Detections messages handled: frames through rules (benchmarks' rate)
        self._readers = FrameReaders(self.config.site.shm_dir)  # snapshots, on a worker thread
        self._actions: set[asyncio.Task[None]] = set()
        self._group: TaskGroup | None = None
        self._detections: Subscriber | None = None  # a camera added by a reload is subscribed to here
        self._last_reload: str | None = None  # how the last reload Control ended, for its sender (Health detail)
        jsonl = self.config.events.jsonl
        self.jsonl = None if jsonl is None else Path(self.config.site.state_dir) / jsonl

    async def main(self) -> None:
        topics = [topic("detections", name) for name in self.cameras]
        if self.jsonl is not None:  # a folder the operator named may be shared on purpose: left as it is
            private_dir(self.jsonl.parent, tighten=not Path(self.config.events.jsonl or "").is_absolute())
        bus = self.config.bus
        try:
            async with (
                Subscriber(bus.subscribe, self.name, topics, hwm=1000) as detections,
                EventSender(
                    bus.events.send,
                    self.name,
                    window=bus.events_window,
                    ack_timeout_s=bus.ack_timeout_s,
                    on_ack=self._acked,
                    on_refused=self._refused,
                ) as sender,
            ):
                self._detections = detections
                self.set_state(ServiceState.READY)
                async with TaskGroup() as group:
                    self._group = group  # actions run here: cancelled with the service, never orphaned
                    group.create_task(self._send(sender), name="send")
                    group.create_task(self.series.run(), name="series")
                    group.create_task(self.silent.run(), name="silent-models")
                    if self.config.analytics.enabled:  # reports are made of the series
                        reports = self.reporter.run(self.cameras, self.series.flush, self._report)
                        group.create_task(reports, name="reports")  # (a reload changes cameras in place)
                    async for received in detections:
                        if isinstance(received.message, Detections) and not self.paused:
                            await self.handle(received.message)
        finally:
            self.series.try_flush()
            self.store.close()
            self.outbox.close()

    async def handle(self, detections: Detections) -> None:
        camera = self.cameras.get(detections.frame.camera)
        if camera is None:
            return
        tracker = camera.tracker(detections, self.config.tracker)
        if tracker is None:  # a sender inventing model names: bounded, and the site's models keep theirs
            metrics.DETECTIONS_DROPPED.labels(camera.name, "models").inc()
            return
        frame = detections.frame
        t = frame.monotonic_ns / 1e9
        boxes = detections.boxes.to_numpy()
        class_ids = detections.class_ids.to_numpy()
        scores = detections.scores.to_numpy()
        keep = camera.labels.admit(detections, class_ids)  # labels past the model's bound: left out
        if keep is not None:
            boxes, class_ids, scores = boxes[keep], class_ids[keep], scores[keep]
        camera.items[detections.model] = (
            t,
            [(detections.labels.get(int(c), str(int(c))), _box(b)) for c, b in zip(class_ids, boxes, strict=True)],
        )
        seen, gone = tracker.update(boxes, class_ids, scores, t, aspect=frame.width / frame.height)
        self.frames_handled += 1
        metrics.ACTIVE_TRACKS.labels(camera.name, detections.model).set(len(seen))
        self.silent.heard(camera.name, detections.model)

        items = [
            item
            for model_t, model_items in camera.items.values()
            if abs(t - model_t) <= ITEM_MAX_AGE_S  # a frame dated in the future does not stay forever
            for item in model_items
        ]
        wall = dt.datetime.fromtimestamp(frame.capture_ns / 1e9, self.timezone)
        moment = Moment(t, wall, _observed(detections, seen), _observed(detections, gone), items, detections.model)
        for draft in camera.rules.step(moment):
            await self._emit(camera, detections, draft, t)
        for track in gone:  # its ids never come back: nothing about it is needed any more
            camera.last_seen.pop(track.track_id, None)
        zones = {zone: bounded(occupancy) for zone, occupancy in camera.rules.occupancy().items()}
        set_zone_gauges(camera.name, camera.zone_labels, zones)  # a label whose last object left reads 0
        self.series.frame(camera.name, camera.rules, moment, zones, frame.capture_ns)
        await self._publish_scene(camera, detections, seen, zones)

    async def _model_silent(self, camera_name: str, model: str) -> None:
        """``model`` fell silent on the camera (the sweep): a model the site does not name gives its slot up,
        and its tracks end as its tracker would have ended them, with their events (a zone exit, a crossing
        settled) dated by its last frame; the rules forget them (their state would otherwise stay for ever)."""
        camera = self.cameras.get(camera_name)
        evicted = None if camera is None else camera.evict(model)
        if camera is None or evicted is None:
            return
        tracker, last = evicted
        t = last.frame.monotonic_ns / 1e9
        _, gone = tracker.update(np.zeros((0, 4), "<f4"), [], [], t + self.config.tracker.max_age_s + 1e-3)
        log.debug("silent model's tracker evicted", extra={"camera": camera_name, "model": model, "ended": len(gone)})
        if gone:
            wall = dt.datetime.fromtimestamp(last.frame.capture_ns / 1e9, self.timezone)
            for draft in camera.rules.step(Moment(t, wall, [], _observed(last, gone), [], model)):
                await self._emit(camera, last, draft, t)
        for track in gone:
            camera.last_seen.pop(track.track_id, None)
        camera.rules.models.discard(model)  # the overlap check counts models tracked, not every name ever sent

    async def _publish_scene(
        self, camera: CameraState, detections: Detections, seen: list[Track], zones: dict[str, dict[str, int]]
    ) -> None:
        """The camera as rules sees it now, for local consumers (the console; newest wins), at most at the
        camera's fps (``SceneRate``): nothing of it is built for a frame that gets none."""
        if self.publisher is None:
            return
        if camera.scene_rate.due(detections.model, detections.frame.monotonic_ns / 1e9, camera.config.fps):
            scene = scene_of(camera.name, detections, seen, camera.rules.line_counts(), zones)
            await self.publisher.publish("scene", camera.name, scene)

    async def _emit(self, camera: CameraState, detections: Detections, draft: Draft, t: float) -> None:
        """Makes ``draft`` an Event and hands it on: outbox (for the uplink), the console's copy,
        ``events.jsonl``, the rule's actions."""
        event = self._event(camera, detections.frame, draft, t)
        rule = camera.config.rules[draft.rule]
        if rule.snapshot:
            event = await asyncio.to_thread(self._with_snapshot, camera, event)
        _count_and_log(camera.name, draft, self.store)
        try:
            decode(encode(event), Event)  # the uplink would refuse it, and it would be resent for ever
        except ContractError as exc:
            metrics.OUTBOX_DROPPED.labels("invalid").inc()
            log.error("event breaks the contract; dropped", extra={"rule": draft.rule, "error": str(exc)})
            return
        await self._deliver(camera.name, event)
        for action in rule.actions:
            self._start_action(draft.rule, action, event)

    def _event(self, camera: CameraState, frame: FrameRef, draft: Draft, t: float) -> Event:
        """The Event of a draft decided on ``frame`` (captured at monotonic ``t``), with its stable id."""
        track = draft.track
        start_ns = None
        if draft.start_t is not None:
            start_ns = max(0, frame.capture_ns - int((t - draft.start_t) * 1e9))
        after, before = camera.now_and_before(draft)
        identity = f"{self.config.site.name}/{camera.name}/{draft.rule}/{draft.event_type}/{draft.lifecycle}/"
        identity += f"{track.track_id if track else '-'}/{start_ns}/{frame.seq}"
        return Event(
            id=self.event_ids.of(identity),  # the same decision, the same id; unguessable without the secret
            event_type=draft.event_type,
            lifecycle=draft.lifecycle,  # type: ignore[arg-type]
            site=self.config.site.name,
            camera=camera.name,
            rule=draft.rule,
            ts_ns=frame.capture_ns,
            start_ns=start_ns,
            end_ns=frame.capture_ns if draft.lifecycle == "end" else None,
            object=after,
            before=before,
            counts=bounded(draft.counts, keep=track.label if track else None),  # 300 labels in a zone: still valid
            attributes=first_entries(
                {k: v for k, v in draft.attributes.items() if v is None or isinstance(v, str | int | float | bool)}
            ),
            frame=frame,
        )

    async def _report(self, event: Event) -> None:
        """A count report: counted and delivered like any event, with no snapshot and no action."""
        metrics.EVENTS.labels(event.rule, event.event_type).inc()
        await self._deliver(event.camera, event, stored=self.reporter.reported)

    async def _deliver(self, camera: str, event: Event, stored: Callable[[Event], None] | None = None) -> None:
        """To the outbox first (on disk before anything else hears of it; then ``stored``, before anything
        else can run: what the outbox holds and what it was told agree whatever kills us), then the local copies."""
        self.outbox.put(event)
        if stored is not None:
            stored(event)
        self.outbox_changed.set()
        if self.publisher is not None:  # a copy for local consumers (the console); the uplink's is the outbox's
            await self.publisher.publish("events", camera, event)
        if self.jsonl is not None:
            with private_open(self.jsonl) as out:
                out.write(event_json(event) + b"\n")

    def _start_action(self, rule: str, action: Action, event: Event) -> None:
        """Runs a local action in the background, unless MAX_RUNNING_ACTIONS already run (then dropped)."""
        if len(self._actions) >= MAX_RUNNING_ACTIONS:
            metrics.ACTIONS_DROPPED.labels(rule, action.type).inc()
            log.warning("too many actions running; this one dropped", extra={"rule": rule})
            return
        spawn = self._group.create_task if self._group is not None else asyncio.create_task
        task = spawn(run_action(action, event), name=f"action-{rule}")
        self._actions.add(task)
        task.add_done_callback(self._actions.discard)

    def _with_snapshot(self, camera: CameraState, event: Event) -> Event:
        """Copies the frame out of shared memory now (generation checked) and attaches a masked JPEG."""
        assert event.frame is not None
        ref = event.frame
        try:
            pixels = self._readers.copy(ref, "bgr")  # whatever the camera's pixel_format: JPEGs are BGR
        except (StaleFrameError, ShmError):
            metrics.SNAPSHOTS_MISSED.labels(camera.name).inc()
            return event
        snapshot = make_snapshot(pixels, camera.config, event, self.config.events.jpeg_quality)
        return msgspec.structs.replace(event, snapshot=snapshot)

    async def _send(self, sender: EventSender) -> None:
        """Hands the outbox's events to the sender in order, those left by a previous run first; the
        sender resends each until the uplink acknowledges it, and the ack deletes it from the outbox."""
        cursor = 0
        while True:
            self.outbox_changed.clear()
            batch = self.outbox.after(cursor)
            if not batch:
                await self.outbox_changed.wait()
                continue
            for seq, event in batch:
                await sender.send(event)  # waits while the window of unacknowledged events is full
                cursor = seq
                self.events_sent += 1
            metrics.EVENTS_QUEUED.set(len(self.outbox))

    async def on_control(self, command: Control) -> None:
        await super().on_control(command)
        if command.command == "reload":
            refused = await self.reload()
            outcome = "applied" if refused is None else "refused"
            self._last_reload = control_reply(command, outcome, refused)
            await self.send_health()  # whoever sent it (the console, the fleet) waits for this

    async def reload(self) -> str | None:
        """Reads the site file again and applies its cameras' rules (the console's rule editor and the
        fleet's update_rules send ``reload`` after a save). Rules unchanged keep their state; line counts
        are kept per rule name; other sections (tracker, events, uplink) take effect at the next restart.
        Returns why it was refused (the rules in force stay), or None once applied."""
        try:
            config: SiteConfig = await asyncio.to_thread(load_config, self.config.source)
        except EdgeSightError as exc:
            metrics.RELOADS.labels("refused").inc()
            log.error("reload refused; the rules in force stay", extra={"error": " | ".join(str(exc).splitlines())})
            await self.audit("rules.reload", self.config.source, result="refused", error=str(exc).splitlines()[0])
            return str(exc)
        wanted = {name: camera for name, camera in config.cameras.items() if camera.enabled and camera.rules}
        for name in set(self.cameras) - set(wanted):
            del self.cameras[name]
            self.silent.forget(name)
        changed = []
        for name, camera_config in wanted.items():
            rules = CameraRules(name, camera_config, self.store)
            camera = self.cameras.get(name)
            if camera is None:
                self.cameras[name] = self._camera(name, camera_config, rules, config)
                if self._detections is not None:
                    self._detections.subscribe(topic("detections", name))
                changed.append(name)
                continue
            kept = rules.carry_over(camera.rules)
            if len(kept) != len(rules.rules) or len(kept) != len(camera.rules.rules):
                changed.append(name)
            camera.reconfigure(camera_config, rules, reserved_models(config, camera_config))
        metrics.RELOADS.labels("applied").inc()
        log.info("rules reloaded", extra={"changed": ",".join(sorted(changed)) or "none"})
        await self.audit("rules.reload", self.config.source, result="applied", cameras=",".join(sorted(changed)))
        return None

    def _camera(self, name: str, config: CameraConfig, rules: CameraRules, site: SiteConfig) -> CameraState:
        """A camera's state; its labels are held for the tracker's ``max_age_s`` (``services.rules.labels``)."""
        return CameraState(name, config, rules, reserved_models(site, config), self.config.tracker.max_age_s)

    def _acked(self, ids: list[str]) -> None:
        self.outbox.acked(ids)
        metrics.EVENTS_QUEUED.set(len(self.outbox))

    def _refused(self, refusals: list[Refusal]) -> None:
        """The uplink will never take these (the sender logged and counted them): out of the outbox, or
        they would be sent again after every restart."""
        self.outbox.refused(refusal.id for refusal in refusals)
        metrics.EVENTS_QUEUED.set(len(self.outbox))

    def health_counters(self) -> dict[str, float]:
        return {
            "cameras": len(self.cameras),
            "frames": self.frames_handled,
            "events": self.events_sent,
            "queued": len(self.outbox),
        }

    def health_detail(self) -> dict[str, str]:
        detail = {} if self._last_reload is None else {"reload": self._last_reload}
        for camera in self.cameras.values():
            for zone, occupancy in camera.rules.occupancy().items():
                detail[f"{camera.name}.{zone}"] = occupancy_text(bounded(occupancy))
        return detail

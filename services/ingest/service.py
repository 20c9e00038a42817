"""The ingest service: one process serves this group's cameras, each on a decode thread of its own.

Several ingest processes split a site's cameras by ``cameras.<name>.ingest_group``; each serves
the group named by ``EDGESIGHT_INGEST_GROUP`` (default ``default``).
"""

from __future__ import annotations

import asyncio
import logging
import os

import cv2

from common._compat import TaskGroup
from common.bus import Subscriber
from common.config import DEFAULT_INGEST_GROUP, INGEST_GROUP_VARIABLE, CameraConfig, SiteConfig
from common.errors import AssetError
from common.service import Service, ServiceState
from common.shm import FrameRingWriter, frame_bytes
from contracts import CameraStatus, Control, Detections, FrameRef, Message, topic
from services.ingest import metrics
from services.ingest.camera import CameraWorker
from services.ingest.gates import ConsumerGate
from services.ingest.source import Source

__all__ = ["IngestService"]

log = logging.getLogger(__name__)

OUTBOX_LIMIT = 1000  # messages waiting for the publisher; beyond it frames are dropped, counted


class IngestService(Service):
    """Decodes cameras into shared-memory rings and publishes FrameRefs and CameraStatus."""

    name = "ingest"

    def setup(self) -> None:
        self.group = os.environ.get(INGEST_GROUP_VARIABLE, DEFAULT_INGEST_GROUP)
        # OpenCV converts the frames FFmpeg's scaler cannot write into a slot, on the camera's own thread:
        # its worker pool would only spin on the cores the decoders' threads need (pixels.PixelWriter)
        cv2.setNumThreads(1)
        self.workers: dict[str, CameraWorker] = {}
        self._outbox: asyncio.Queue[Message] = asyncio.Queue(OUTBOX_LIMIT)

    @classmethod
    def check(cls, config: SiteConfig) -> list[str]:
        """Every camera's URL is one ingest can open: a supported scheme, a media file that exists."""
        problems = []
        for name, camera in config.cameras.items():
            if not camera.enabled:
                continue
            try:
                Source.for_camera(camera, tuple(config.site.asset_paths))
            except AssetError as exc:
                problems.append(f"{config.where('cameras', name, 'url')}: {exc}")
        return problems

    def cameras(self) -> dict[str, CameraConfig]:
        return {
            name: camera
            for name, camera in self.config.cameras.items()
            if camera.enabled and camera.ingest_group == self.group
        }

    async def main(self) -> None:
        cameras = self.cameras()
        if not cameras:
            log.warning("no cameras to serve", extra={"group": self.group})
        asset_paths = tuple(self.config.site.asset_paths)
        sources = {}
        for name, camera in cameras.items():
            try:
                sources[name] = Source.for_camera(camera, asset_paths)
            except AssetError as exc:  # this camera retries (the file may appear); the others run
                log.error(
                    "camera source not found; it will be retried",
                    extra={"camera": name, "error": f"cameras.{name}.url: {exc}"},
                )
                sources[name] = Source(camera.url, "file")
        rings: list[FrameRingWriter] = []
        try:
            for name, camera in cameras.items():
                ring = FrameRingWriter.create(
                    self.config.site.name,
                    name,
                    slots=camera.ring_slots,
                    capacity=frame_bytes(camera.pixel_format, camera.max_frame_width, camera.max_frame_height),
                    shm_dir=self.config.site.shm_dir,
                )
                rings.append(ring)
                gate = ConsumerGate() if self._backpressured(camera, sources[name]) else None
                self.workers[name] = CameraWorker(
                    name, camera, sources[name], ring, instance=self.instance, deliver=self._deliver, consumer=gate
                )
            self.set_state(ServiceState.READY)
            async with TaskGroup() as group:
                group.create_task(self._publish_loop(), name="publish")
                group.create_task(self._status_loop(), name="status")
                paced = [worker.name for worker in self.workers.values() if worker.consumer is not None]
                if paced:
                    group.create_task(self._answers_loop(paced), name="answers")
                for worker in self.workers.values():
                    group.create_task(worker.run(), name=f"camera-{worker.name}")
        finally:
            for worker in self.workers.values():
                worker.stop()
            for worker in self.workers.values():
                await asyncio.to_thread(worker.join, 2.0)
            for ring in rings:
                ring.close()

    def _backpressured(self, camera: CameraConfig, source: Source) -> bool:
        """A file read faster than real time, on a camera some model serves: paced by inference's answers."""
        served = bool(camera.models or self.config.models)
        return camera.backpressure and not camera.realtime and not source.is_live and served

    async def _answers_loop(self, cameras: list[str]) -> None:
        """Detections of the backpressured cameras, heard as answers: each frees room for the next frame.

        Listening to a broadcast adds no edge to the frame's path: inference neither knows nor waits."""
        topics = [topic("detections", camera) for camera in cameras]
        async with Subscriber(self.config.bus.subscribe, self.name, topics, hwm=1000) as answers:
            async for received in answers:
                message = received.message
                if isinstance(message, Detections):
                    worker = self.workers.get(message.frame.camera)
                    if worker is not None and worker.consumer is not None:
                        worker.consumer.answered(message.frame.seq)

    def _deliver(self, message: Message) -> None:
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            if isinstance(message, FrameRef):
                metrics.FRAMES_DROPPED.labels(message.camera, "bus").inc()

    async def _publish_loop(self) -> None:
        assert self.publisher is not None
        while True:
            message = await self._outbox.get()
            while True:  # everything queued meanwhile in this turn of the loop: no wake-up per message
                if isinstance(message, FrameRef):
                    await self.publisher.publish("frames", message.camera, message)
                elif isinstance(message, CameraStatus):
                    await self.publisher.publish("cameras", message.camera, message)
                try:
                    message = self._outbox.get_nowait()
                except asyncio.QueueEmpty:
                    break

    async def _status_loop(self) -> None:
        """Every camera's status with each Health, so a late subscriber learns it without a change."""
        while True:
            await asyncio.sleep(self.config.bus.health_interval_s)
            for worker in self.workers.values():
                metrics.CAMERA_FPS.labels(worker.name).set(worker.fps())
                self._deliver(worker.status())

    async def on_control(self, command: Control) -> None:
        """``pause``/``resume`` stop and restart publishing (decoding goes on, so resuming is instant);
        with ``camera`` set, only that camera."""
        if command.command in ("pause", "resume"):
            for worker in self.workers.values():
                if command.camera in (None, worker.name):
                    worker.paused = command.command == "pause"
        else:
            await super().on_control(command)

    def health_counters(self) -> dict[str, float]:
        states = [worker.state for worker in self.workers.values()]
        return {
            "cameras": len(states),
            "streaming": states.count("streaming"),
            "fps": sum(worker.fps() for worker in self.workers.values()),
        }

    def health_detail(self) -> dict[str, str]:
        return {name: worker.state for name, worker in self.workers.items()}

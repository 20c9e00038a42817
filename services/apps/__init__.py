"""AWS Panorama applications, run unchanged: one process per app, frames from shared memory."""

from services.apps.service import AppsService

__all__ = ["AppsService"]

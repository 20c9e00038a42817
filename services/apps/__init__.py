"""AWS Panorama applications, run unchanged: each in its own sandbox, served by this service's channel."""

from services.apps.service import AppsService

__all__ = ["AppsService"]

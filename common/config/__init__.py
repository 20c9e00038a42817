"""The site file: ``load_config(path)`` -> :class:`SiteConfig`, errors as file:line: key: message."""

from common.config.analytics import AnalyticsConfig, HeatmapConfig
from common.config.apps import AppConfig, AppLimits, AppModel, AppParameter, AppPort
from common.config.bus import BusConfig
from common.config.cameras import (
    DEFAULT_INGEST_GROUP,
    INGEST_GROUP_VARIABLE,
    CameraConfig,
    CameraDefaults,
    MotionConfig,
    PrivacyMask,
)
from common.config.console import ConsoleConfig
from common.config.fleet import FleetConfig
from common.config.loader import MAX_RULES_PER_CAMERA, MAX_VERTICES_PER_SITE, load_config, load_yaml, parse_config
from common.config.metrics import LoggingConfig, MetricsConfig
from common.config.models import INFERENCE_SHARD_VARIABLE, ModelConfig
from common.config.rules import EventsConfig, Rule, TrackerConfig
from common.config.site import RunConfig, SiteConfig, SiteSection
from common.config.uplink import UplinkConfig

__all__ = [
    "DEFAULT_INGEST_GROUP",
    "INFERENCE_SHARD_VARIABLE",
    "INGEST_GROUP_VARIABLE",
    "MAX_RULES_PER_CAMERA",
    "MAX_VERTICES_PER_SITE",
    "AnalyticsConfig",
    "AppConfig",
    "AppLimits",
    "AppModel",
    "AppParameter",
    "AppPort",
    "BusConfig",
    "CameraConfig",
    "CameraDefaults",
    "ConsoleConfig",
    "EventsConfig",
    "FleetConfig",
    "HeatmapConfig",
    "LoggingConfig",
    "MetricsConfig",
    "ModelConfig",
    "MotionConfig",
    "PrivacyMask",
    "Rule",
    "RunConfig",
    "SiteConfig",
    "SiteSection",
    "TrackerConfig",
    "UplinkConfig",
    "load_config",
    "load_yaml",
    "parse_config",
]

"""Home Assistant's MQTT sensor discovery schema, written out for tests: what Home Assistant accepts
on ``<prefix>/sensor/[<node_id>/]<object_id>/config``.

From Home Assistant's documentation of the MQTT sensor and MQTT discovery, and its voluptuous
schemas (``homeassistant/components/mqtt/sensor.py`` ``DISCOVERY_SCHEMA``, ``schemas.py``
``MQTT_ENTITY_COMMON_SCHEMA``, ``MQTT_AVAILABILITY_SCHEMA``, ``MQTT_ENTITY_DEVICE_INFO_SCHEMA``, and
``validate_sensor_state_and_device_class_config``). Stricter than Home Assistant in one way on
purpose: it drops a key it does not know without a word (``REMOVE_EXTRA``), which would hide our
typo, so here an unknown key is a problem. ``object_id`` counts as unknown: Home Assistant deprecated
it for ``default_entity_id`` in 2025.10 and stopped honouring it in 2026.4.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["ABBREVIATIONS", "config_problems", "discovery_topic_problems", "valid_subscribe_topic"]

STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ENTITY_CATEGORIES = {"diagnostic"}  # "config" is refused for sensors: a sensor configures nothing
AVAILABILITY_MODES = {"all", "any", "latest"}
DEVICE_CLASSES = {
    "apparent_power", "aqi", "area", "atmospheric_pressure", "battery", "blood_glucose_concentration",
    "carbon_dioxide", "carbon_monoxide", "conductivity", "current", "data_rate", "data_size", "date", "distance",
    "duration", "energy", "energy_distance", "energy_storage", "enum", "frequency", "gas", "humidity",
    "illuminance", "irradiance", "moisture", "monetary", "nitrogen_dioxide", "nitrogen_monoxide", "nitrous_oxide",
    "ozone", "ph", "pm1", "pm10", "pm25", "pm4", "power", "power_factor", "precipitation", "precipitation_intensity",
    "pressure", "reactive_energy", "reactive_power", "signal_strength", "sound_pressure", "speed",
    "sulphur_dioxide", "temperature", "timestamp", "volatile_organic_compounds", "volatile_organic_compounds_parts",
    "voltage", "volume", "volume_flow_rate", "volume_storage", "water", "weight", "wind_direction", "wind_speed",
}  # fmt: skip

# Home Assistant's abbreviations (``abbreviations.py``) of the keys a sensor may have; one config
# uses either name of a key, and an abbreviation is expanded only where Home Assistant knows it.
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "avty_t": "availability_topic",
    "avty_tpl": "availability_template", "dev": "device", "dev_cla": "device_class", "e": "encoding",
    "en": "enabled_by_default", "ent_cat": "entity_category", "ent_pic": "entity_picture", "exp_aft": "expire_after",
    "frc_upd": "force_update", "ic": "icon", "json_attr_t": "json_attributes_topic",
    "json_attr_tpl": "json_attributes_template", "lrst_val_tpl": "last_reset_value_template", "o": "origin",
    "obj_id": "object_id", "def_ent_id": "default_entity_id", "ops": "options", "pl_avail": "payload_available",
    "pl_not_avail": "payload_not_available", "stat_cla": "state_class", "stat_t": "state_topic",
    "sug_dsp_prc": "suggested_display_precision", "uniq_id": "unique_id", "unit_of_meas": "unit_of_measurement",
    "val_tpl": "value_template", "t": "topic", "ids": "identifiers", "cns": "connections", "mf": "manufacturer",
    "mdl": "model", "mdl_id": "model_id", "hw": "hw_version", "sw": "sw_version", "sn": "serial_number",
    "sa": "suggested_area", "cu": "configuration_url", "via_device": "via_device",
}  # fmt: skip


def _string(value: Any) -> bool:
    return isinstance(value, str)


def _optional_string(value: Any) -> bool:
    return value is None or isinstance(value, str)


def _boolean(value: Any) -> bool:
    return isinstance(value, bool)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def valid_subscribe_topic(topic: Any) -> bool:
    """Home Assistant's ``valid_subscribe_topic``: UTF-8, no NUL, at most 65535 bytes, ``+`` and ``#``
    only as whole levels and ``#`` only last."""
    if not isinstance(topic, str) or not topic or "\0" in topic or len(topic.encode()) > 65535:
        return False
    levels = topic.split("/")
    for index, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            return False
        if level == "#" and index != len(levels) - 1:
            return False
    return True


def _topic(value: Any) -> bool:
    return valid_subscribe_topic(value)


def _icon(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[a-z0-9_-]+:[a-z0-9_-]+", value) is not None


def _entity_id(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"sensor\.[a-z0-9_]+", value) is not None


def _url(value: Any) -> bool:
    return isinstance(value, str) and re.match(r"^(https?://|homeassistant://)", value) is not None


SENSOR_KEYS: dict[str, Any] = {
    "availability": None,  # checked below
    "availability_mode": lambda v: v in AVAILABILITY_MODES,
    "availability_template": _string,
    "availability_topic": _topic,
    "default_entity_id": _entity_id,
    "device": None,
    "device_class": lambda v: v is None or v in DEVICE_CLASSES,
    "enabled_by_default": _boolean,
    "encoding": _string,
    "entity_category": lambda v: v in ENTITY_CATEGORIES,
    "entity_picture": _url,
    "expire_after": _positive_int,
    "force_update": _boolean,
    "icon": _icon,
    "json_attributes_template": _string,
    "json_attributes_topic": _topic,
    "last_reset_value_template": _string,
    "name": _optional_string,
    "options": lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v),
    "origin": None,
    "payload_available": _string,
    "payload_not_available": _string,
    "qos": lambda v: v in (0, 1, 2) and not isinstance(v, bool),
    "state_class": lambda v: v is None or v in STATE_CLASSES,
    "state_topic": _topic,
    "suggested_display_precision": _positive_int,
    "unique_id": _string,
    "unit_of_measurement": _optional_string,
    "value_template": _string,
}
AVAILABILITY_KEYS: dict[str, Any] = {
    "topic": _topic,
    "payload_available": _string,
    "payload_not_available": _string,
    "value_template": _string,
}
DEVICE_KEYS: dict[str, Any] = {
    "identifiers": lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "connections": lambda v: isinstance(v, list) and all(isinstance(c, list) and len(c) == 2 for c in v),
    "manufacturer": _string,
    "model": _string,
    "model_id": _string,
    "name": _string,
    "hw_version": _string,
    "serial_number": _string,
    "sw_version": _string,
    "via_device": _string,
    "suggested_area": _string,
    "configuration_url": _url,
}
ORIGIN_KEYS: dict[str, Any] = {"name": _string, "sw_version": _string, "support_url": _url}


def _mapping_problems(where: str, value: Any, keys: dict[str, Any], required: tuple[str, ...] = ()) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping, got {type(value).__name__}"]
    problems = [f"{where}.{key}: required" for key in required if key not in value]
    for key, item in value.items():
        if key in ABBREVIATIONS and ABBREVIATIONS[key] != key:
            problems.append(f"{where}.{key}: an abbreviation (of {ABBREVIATIONS[key]}); full names only")
        elif key not in keys:
            problems.append(f"{where}.{key}: not a key Home Assistant knows here")
        elif keys[key] is not None and not keys[key](item):
            problems.append(f"{where}.{key}: invalid value {item!r}")
    return problems


def config_problems(config: Any) -> list[str]:
    """What Home Assistant would refuse (or silently drop) in an MQTT sensor's discovery config; [] if none."""
    if not isinstance(config, dict):
        return [f"config: expected a JSON object, got {type(config).__name__}"]
    problems = _mapping_problems("config", config, SENSOR_KEYS, required=("state_topic",))
    if "~" in config:
        problems.append("config.~: a base topic makes every topic depend on it; none expected")
    if "availability" in config:
        if "availability_topic" in config:
            problems.append("config: availability and availability_topic exclude each other")
        entries = config["availability"]
        if not isinstance(entries, list) or not entries:
            problems.append("config.availability: expected a non-empty list")
        else:
            for index, entry in enumerate(entries):
                problems += _mapping_problems(f"config.availability[{index}]", entry, AVAILABILITY_KEYS, ("topic",))
    if "device" in config:
        problems += _mapping_problems("config.device", config["device"], DEVICE_KEYS)
        device = config["device"]
        if isinstance(device, dict) and not (device.get("identifiers") or device.get("connections")):
            problems.append("config.device: needs identifiers or connections")
    if "origin" in config:
        problems += _mapping_problems("config.origin", config["origin"], ORIGIN_KEYS, ("name",))
    return problems + _sensor_rules(config)


def _sensor_rules(config: dict[str, Any]) -> list[str]:
    """``validate_sensor_state_and_device_class_config``, and what a state class promises."""
    problems = []
    if "last_reset_value_template" in config and config.get("state_class") != "total":
        problems.append("config.last_reset_value_template: only with state_class total")
    if "options" in config:
        if not config["options"]:
            problems.append("config.options: an empty list is not allowed")
        if config.get("state_class") or config.get("unit_of_measurement"):
            problems.append("config.options: not with state_class or unit_of_measurement")
        if config.get("device_class") != "enum":
            problems.append("config.options: only with device_class enum")
    if config.get("device_class") == "enum" and not config.get("options"):
        problems.append("config.device_class: enum needs options")
    return problems


def discovery_topic_problems(topic: str, prefix: str = "homeassistant") -> list[str]:
    """``<prefix>/sensor/[<node_id>/]<object_id>/config`` with ids of ``[a-zA-Z0-9_-]``."""
    match = re.fullmatch(rf"{re.escape(prefix)}/sensor/(?:([a-zA-Z0-9_-]+)/)?([a-zA-Z0-9_-]+)/config", topic)
    return [] if match else [f"{topic!r}: not <prefix>/sensor/[<node_id>/]<object_id>/config"]

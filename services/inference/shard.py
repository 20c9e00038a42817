"""Which cameras an inference replica serves: replica ``i`` of ``n`` takes the enabled cameras whose
index (sorted by name) is ``i`` modulo ``n``, so no frame is processed twice.

``n`` has one source, the site file's ``run.inference_replicas`` (``auto``: 1). A replica learns its share from
its environment, whoever starts it:

- ``EDGESIGHT_INFERENCE_REPLICA=i`` (compose: a service per replica; k3s: the StatefulSet pod's
  ordinal): ``n`` is read from the site file here.
- ``EDGESIGHT_INFERENCE_SHARD=i/n`` (``edgesight run``, which takes ``n`` from the same site file):
  both given.
- neither: ``0/1``, every camera (one process serves the site).
"""

from __future__ import annotations

from collections.abc import Mapping

from common.config import INFERENCE_SHARD_VARIABLE, SiteConfig
from common.errors import ConfigError

__all__ = ["INFERENCE_REPLICA_VARIABLE", "assignment", "parse_shard", "replica_shard"]

INFERENCE_REPLICA_VARIABLE = "EDGESIGHT_INFERENCE_REPLICA"

Shard = tuple[int, int]  # (this replica's index, how many replicas), 0 <= index < count


def parse_shard(text: str) -> Shard:
    """``"1/3"`` -> (1, 3): this replica is number 1 of 3 (0-based).

    >>> parse_shard("1/3")
    (1, 3)
    """
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ConfigError([f"{INFERENCE_SHARD_VARIABLE}={text!r}: expected INDEX/COUNT, e.g. 0/2"]) from None
    if count < 1 or not 0 <= index < count:
        raise ConfigError([f"{INFERENCE_SHARD_VARIABLE}={text!r}: need 0 <= INDEX < COUNT"])
    return index, count


def replica_shard(environment: Mapping[str, str], config: SiteConfig) -> Shard:
    """This replica's share, from its environment and the site file (see the module docstring)."""
    shard = environment.get(INFERENCE_SHARD_VARIABLE)
    if shard is not None:
        return parse_shard(shard)
    replica = environment.get(INFERENCE_REPLICA_VARIABLE)
    if replica is None:
        return 0, 1
    count = config.run.inference_processes
    if not replica.isdigit() or int(replica) >= count:
        raise ConfigError(
            [
                f"{INFERENCE_REPLICA_VARIABLE}={replica!r}: expected a replica number from 0 to {count - 1} "
                f"({config.where('run', 'inference_replicas')} is {count})"
            ]
        )
    return int(replica), count


def assignment(config: SiteConfig, shard: Shard) -> dict[str, list[str]]:
    """Camera -> model names, for this replica's share of the cameras (cameras no model serves left out)."""
    index, count = shard
    enabled = sorted(name for name, camera in config.cameras.items() if camera.enabled)
    mine = [camera for position, camera in enumerate(enabled) if position % count == index]
    return {
        camera: list(config.cameras[camera].models or config.models)
        for camera in mine
        if config.cameras[camera].models or config.models
    }

"""EdgeSight's benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--json FILE]``.

Each benchmark is a module here with ``run(quick: bool) -> dict[str, float]`` (a dict among them is a status,
printed as text: ``inference_throughput``'s ``tensorrt``) and a ``TITLE``.
A benchmark that compares with a baseline measured in the same run also returns ``ratio``
(ours / baseline). Figures are never asserted: this is a 2-core, noisy machine.
"""

BENCHMARKS = {
    "pipeline": "benchmarks.pipeline",
    "frame_hop": "benchmarks.frame_hop",
    "ingest_decode": "benchmarks.ingest_decode",
    "inference_throughput": "benchmarks.inference_throughput",
    "uplink_throughput": "benchmarks.uplink_throughput",
    "tracking": "benchmarks.tracking",
    "model_package": "benchmarks.model_package",
    "app_channel": "benchmarks.app_channel",
    "analytics": "benchmarks.analytics",
    "rules_cpu": "benchmarks.rules_cpu",
    "fleet": "benchmarks.fleet",
    "soak": "benchmarks.soak",
}
# Run only when named (minutes long): ``python -m benchmarks soak --minutes 20``.
ON_REQUEST = frozenset({"soak"})

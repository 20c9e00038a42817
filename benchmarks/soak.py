"""``soak``: the whole pipeline for ``--minutes`` (default 20; not part of ``python -m benchmarks``
without a name, nor of CI): the shared clip as a looping file camera at 8 fps -> ingest ->
inference (YOLOX-Nano) -> rules (a line, a zone, a dwell) -> uplink (JSONL sink). Every 10 s the
resident memory (RSS) of each service is sampled; after a warm-up (a quarter of the run, at most
5 minutes) a least-squares line through the samples gives each service's growth in MB per hour.
The goal is under 5 MB/h per service.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._site import start, write_site
from common.assets import find_asset

TITLE = "RSS of every service over a long run of the whole pipeline: growth per hour after warm-up"
SERVICES = ("broker", "ingest", "inference", "rules", "uplink")
SAMPLE_S = 10.0
WHOLE_FRAME = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def growth_mb_per_hour(times_s: list[float], rss: list[float], warm_up_s: float) -> float:
    kept = [(t, r) for t, r in zip(times_s, rss, strict=True) if t >= warm_up_s]
    if len(kept) < 3:
        return float("nan")
    slope_per_s = np.polyfit([t for t, _ in kept], [r for _, r in kept], 1)[0]
    return float(slope_per_s * 3600)


def run(quick: bool, minutes: float | None = None) -> dict[str, float]:
    duration_s = 60.0 if quick else (minutes or 20.0) * 60
    warm_up_s = min(300.0, duration_s / 4)
    rules = {
        "door": {"type": "line", "line": [[0.0, 0.55], [1.0, 0.55]], "classes": ["person"]},
        "hall": {"type": "zone", "polygon": WHOLE_FRAME, "classes": ["person"]},
        "linger": {"type": "dwell", "zone": "hall", "seconds": 3},
    }
    clip = str(find_asset("people.mp4"))
    with tempfile.TemporaryDirectory(prefix="edgesight-soak-") as folder:
        site, config = write_site(
            Path(folder),
            "soak",
            {
                "models": {"people": {"path": "yolox_nano.onnx", "classes": ["person"]}},
                "cameras": {"hall": {"url": clip, "fps": 8, "loop": True, "rules": rules}},
                "uplink": {"jsonl": {"path": "uplink.jsonl"}},
            },
        )
        processes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for service in SERVICES:
                processes[service] = start(service, site)
                time.sleep(1.0)
            started = time.monotonic()
            times: list[float] = []
            samples: dict[str, list[float]] = {service: [] for service in SERVICES}
            print(f"  {'t s':>6}  " + "  ".join(f"{s:>9}" for s in SERVICES) + "   (RSS MB)", flush=True)
            while (elapsed := time.monotonic() - started) < duration_s:
                dead = [s for s, p in processes.items() if p.poll() is not None]
                if dead:
                    raise RuntimeError(f"{', '.join(dead)} exited during the soak")
                times.append(elapsed)
                for service, process in processes.items():
                    samples[service].append(rss_mb(process.pid))
                row = "  ".join(f"{samples[s][-1]:>9.1f}" for s in SERVICES)
                print(f"  {elapsed:>6.0f}  {row}", flush=True)
                time.sleep(SAMPLE_S)
            events_file = Path(config.site.state_dir) / "uplink.jsonl"
            events = sum(1 for _ in events_file.open()) if events_file.exists() else 0
        finally:
            for process in processes.values():
                process.terminate()
            for process in processes.values():
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
    figures: dict[str, float] = {"minutes": duration_s / 60, "warm_up_minutes": warm_up_s / 60, "events": events}
    for service in SERVICES:
        figures[f"{service}_rss_start_mb"] = samples[service][0]
        figures[f"{service}_rss_end_mb"] = samples[service][-1]
        figures[f"{service}_growth_mb_per_h"] = growth_mb_per_hour(times, samples[service], warm_up_s)
    return figures


if __name__ == "__main__":
    print(json.dumps(run(quick=True), indent=2))

"""`python -m benchmarks` ends with one table of ratios against their goals (#25), not the raw figures."""

from __future__ import annotations

import doctest

from benchmarks import BENCHMARKS, _summary


def test_every_benchmark_has_a_row_and_the_doc_example_runs() -> None:
    assert {goal.benchmark for goal in _summary.GOALS} == set(BENCHMARKS)
    assert doctest.testmod(_summary).failed == 0


def test_a_row_per_benchmark_run_with_its_goal_met_or_not() -> None:
    results = {
        "pipeline": {"ratio": 1.35, "streams2_newest_wins_cpu_ms_per_frame_broker": 3.077},
        "frame_hop": {"ratio": 2.1},
        "tracking": {"highway_ours_5fps_count_share": 0.89},
        "soak": {"broker_growth_mb_per_h": 0.4, "rules_growth_mb_per_h": 6.0},
    }
    lines = _summary.table(results, failed=["uplink_throughput"]).splitlines()
    assert lines[0].split()[:4] == ["benchmark", "ratio", "goal", "met"]
    rows = {line.split()[0]: line.split()[1:5] for line in lines[1:]}
    assert rows["pipeline"] == ["1.35", ">=", "1.3", "yes"]
    assert rows["frame_hop"] == ["2.10", ">=", "3", "no"]
    assert rows["uplink_throughput"] == ["failed", ">=", "0.5", "no"]
    assert rows["tracking"][:3] == ["0.89", "-", "-"]  # no goal set for it
    assert rows["soak"] == ["6.00", "<=", "5", "no"]  # the worst service
    assert "ingest_decode" not in rows  # not run: no row
    assert "cpu_ms_per_frame" not in "\n".join(lines)

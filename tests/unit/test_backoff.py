"""The restart backoff `edgesight run` and the apps service share (common/backoff.py)."""

from __future__ import annotations

import pytest

from common.backoff import STABLE_AFTER_S, RestartBackoff


@pytest.mark.parametrize(
    ("first_s", "max_s", "expected"),
    [
        (1.0, 30.0, [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]),  # the defaults of both supervisors
        (5.0, 5.0, [5.0] * 7),
        (10.0, 4.0, [10.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]),  # a first wait over the cap is kept once, as before
    ],
)
def test_waits_double_up_to_the_cap_while_the_process_dies_at_once(
    first_s: float, max_s: float, expected: list[float]
) -> None:
    backoff = RestartBackoff(first_s, max_s)
    assert [backoff.next(ran_s=0.1) for _ in expected] == expected


def test_a_process_that_ran_past_a_minute_starts_over_and_one_that_ran_a_minute_does_not() -> None:
    backoff = RestartBackoff(1.0, 30.0)
    assert [backoff.next(ran_s=1.0) for _ in range(3)] == [1.0, 2.0, 4.0]
    assert backoff.next(ran_s=STABLE_AFTER_S) == 8.0  # exactly a minute is not yet healthy
    assert backoff.next(ran_s=STABLE_AFTER_S + 0.1) == 1.0
    assert backoff.next(ran_s=0.0) == 2.0

"""The waiting helpers the other tests lean on (tests/timing.py)."""

import pytest

from tests.timing import eventually, refilled, upper_bound, wait_until


async def test_eventually_returns_the_first_truthy_value_and_retries_failed_asserts():
    calls = []

    async def probe():
        calls.append(1)
        assert len(calls) > 1, "not yet"
        return len(calls) >= 3 and "ready"

    assert await eventually(probe, within_s=5, every_s=0.001) == "ready"
    assert len(calls) == 3


async def test_eventually_fails_with_the_last_value_after_its_time():
    with pytest.raises(AssertionError, match=r"the queue not true within 0.05 s; last: \[\]"):
        await eventually(lambda: [], within_s=0.05, every_s=0.01, what="the queue")


def test_wait_until_is_the_synchronous_twin():
    values = iter([0, 0, 7])
    assert wait_until(lambda: next(values), within_s=5, every_s=0.001) == 7
    with pytest.raises(AssertionError, match="not true within"):
        wait_until(lambda: None, within_s=0.02, every_s=0.01)


def test_bounds_come_from_what_was_measured():
    assert refilled(0.0, 5) == 1 and refilled(0.39, 5) == 2 and refilled(2.0, 5) == 11
    assert upper_bound([], floor=0.3) == 0.3
    assert upper_bound([0.1, 0.2], floor=0.3) == 0.3
    samples = [0.01 * n for n in range(1, 101)]  # 0.01 .. 1.00
    assert upper_bound(samples, floor=0.3) == pytest.approx(0.99, abs=0.011)
    assert upper_bound(samples, floor=0.3, q=0.5) == pytest.approx(0.5, abs=0.011)

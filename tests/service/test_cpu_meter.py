"""The CPU meter's sampled timing: one call in ``every`` timed, counted ``every`` times."""

from __future__ import annotations

import pytest

from pbkv.service.cpu_meter import CpuMeter


class StepClock:
    """A CPU clock that the timed function advances by the cost it is given."""

    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s

    def spend(self, cost_s: float) -> None:
        self.now_s += cost_s


def timed_total(costs: list[float], every: int) -> float:
    clock = StepClock()
    meter = CpuMeter(path=None, clock=clock)  # type: ignore[arg-type]
    spend = meter.timed("manager", clock.spend, every=every)
    for cost_s in costs:
        spend(cost_s)
    return meter.cpu_s["manager"]


def test_every_call_timed_gives_the_exact_total() -> None:
    costs = [1.0, 2.0, 3.0] * 100
    assert timed_total(costs, every=1) == 600.0


def test_one_call_in_eight_estimates_the_total_within_five_percent() -> None:
    # 8,000 calls of 1 s: ~1,000 timed, each counted 8 times.
    assert timed_total([1.0] * 8_000, every=8) == pytest.approx(8_000, rel=0.05)


def test_a_periodic_pattern_of_costs_is_not_aliased_by_the_sampling() -> None:
    # Cheap and dear calls alternate with period 8 (the sampling's mean gap): a fixed
    # stride of 8 would time only one of the two kinds and be off by 2x.
    costs = ([0.0] * 4 + [2.0] * 4) * 1_000
    assert timed_total(costs, every=8) == pytest.approx(sum(costs), rel=0.05)


def test_every_must_be_positive() -> None:
    meter = CpuMeter(path=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="every must be >= 1, got 0"):
        meter.timed("manager", print, every=0)

"""Queue names, rate limits and the rate decision (pure: no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasklib.limits import Rate, allowance, check_limit, check_queue

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def test_rates_parse_and_refuse_what_they_cannot_mean() -> None:
    assert Rate.parse("20/s") == Rate(20, 1)
    assert Rate.parse(" 100 / m ") == Rate(100, 60)
    assert Rate.parse("500/h").interval == timedelta(seconds=7.2)
    assert str(Rate.parse("3/min")) == "3/m"
    for bad in ("0/s", "20", "20/d", "-1/s", "x/s", 20, None):
        with pytest.raises(ValueError, match="rate_limit"):
            Rate.parse(bad)


def test_queue_names_and_limits() -> None:
    assert check_queue("emails") == "emails" and check_queue("a.b:c-d_1") == "a.b:c-d_1"
    for bad in ("", "no spaces", "-lead", "x" * 64, 3, None):
        with pytest.raises(ValueError, match="queue name"):
            check_queue(bad)
    assert check_limit(None) is None and check_limit(2) == 2
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError):
            check_limit(bad)


def test_a_rate_spreads_starts_one_interval_apart() -> None:
    rate = Rate(20, 1)
    first = allowance(rate, None, NOW)  # never started: one start now, and one more caught up at most
    assert first.count == 2 and first.clock_after(2) == NOW + timedelta(seconds=0.05)
    early = allowance(rate, NOW + timedelta(seconds=0.05), NOW + timedelta(seconds=0.01))
    assert early.count == 0 and early.wait_seconds(NOW + timedelta(seconds=0.01)) == pytest.approx(0.04)
    on_time = allowance(rate, NOW, NOW)
    assert on_time.count == 1 and on_time.clock_after(1) == NOW + timedelta(seconds=0.05)
    late = allowance(rate, NOW, NOW + timedelta(seconds=0.03))  # a late claim keeps the cadence
    assert late.count == 1 and late.clock_after(1) == NOW + timedelta(seconds=0.05)
    later = allowance(rate, NOW, NOW + timedelta(seconds=0.075))  # one and a half intervals late: none lost
    assert later.count == 2 and later.clock_after(2) == NOW + timedelta(seconds=0.1)


def test_an_idle_spell_banks_no_burst() -> None:
    after_an_hour = allowance(Rate(20, 1), NOW, NOW + timedelta(hours=1))
    assert after_an_hour.count == 2  # one now and one caught up, not 72,000


@pytest.mark.parametrize("every_ms", [7, 60, 90])
def test_a_simulated_backlog_starts_at_the_rate(every_ms: int) -> None:
    """Claims every few ms, or late by more than an interval each time (a busy machine), against one
    clock, each taking what it is allowed: 20/s over 10 s, never more than 22 in a second."""
    rate, clock, starts = Rate(20, 1), None, []
    for step in range(0, 10_000, every_ms):
        now = NOW + timedelta(milliseconds=step)
        allowed = allowance(rate, clock, now)
        starts += [now] * allowed.count
        if allowed.count:
            clock = allowed.clock_after(allowed.count)
    assert 200 <= len(starts) <= 202
    per_second = [
        sum(1 for s in starts if NOW + timedelta(seconds=i) <= s < NOW + timedelta(seconds=i + 1)) for i in range(10)
    ]
    assert max(per_second) <= 21

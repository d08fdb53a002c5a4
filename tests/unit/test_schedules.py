"""Recurring schedules and retention periods as pure functions: slots, DST, keys, validation. No database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

import tasklib
from tasklib.config import parse_duration
from tasklib.registry import definition_for
from tasklib.schedules import Schedule, describe, slot_key, slot_time

PARIS = ZoneInfo("Europe/Paris")


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc]


def test_interval_slots_are_aligned_to_the_epoch_so_every_worker_computes_the_same() -> None:
    every = Schedule.build(None, 30, None, False)
    assert every.next_after(utc(2026, 12, 1, 10, 0, 0)) == utc(2026, 12, 1, 10, 0, 30)  # strictly after
    assert every.next_after(utc(2026, 12, 1, 10, 0, 29, 999999)) == utc(2026, 12, 1, 10, 0, 30)
    assert every.latest_at_or_before(utc(2026, 12, 1, 10, 0, 30)) == utc(2026, 12, 1, 10, 0, 30)
    assert every.latest_at_or_before(utc(2026, 12, 1, 10, 0, 59)) == utc(2026, 12, 1, 10, 0, 30)
    assert Schedule.build(None, timedelta(minutes=5), None, False).every_seconds == 300


def test_cron_slots_with_and_without_seconds() -> None:
    five = Schedule.build("*/5 * * * *", None, None, False)
    assert five.next_after(utc(2026, 12, 1, 10, 0, 0)) == utc(2026, 12, 1, 10, 5)
    assert five.latest_at_or_before(utc(2026, 12, 1, 10, 5, 0)) == utc(2026, 12, 1, 10, 5)
    assert five.latest_at_or_before(utc(2026, 12, 1, 10, 4, 59)) == utc(2026, 12, 1, 10, 0)
    seconds = Schedule.build("*/10 * * * * *", None, None, False)
    assert seconds.next_after(utc(2026, 12, 1, 10, 0, 3)) == utc(2026, 12, 1, 10, 0, 10)


def test_cron_in_a_timezone_across_both_dst_changes() -> None:
    """Europe/Paris: 2:30 daily does not exist on 29 March 2026 and happens twice on 25 October 2026."""
    daily = Schedule.build("30 2 * * *", None, "Europe/Paris", False)
    spring = daily.next_after(datetime(2026, 3, 29, 0, 0, tzinfo=PARIS).astimezone(UTC))
    assert spring.astimezone(PARIS) == datetime(2026, 3, 29, 3, 0, tzinfo=PARIS)  # first minute after the gap
    assert spring == utc(2026, 3, 29, 1, 0)
    following = daily.next_after(spring)
    assert following == utc(2026, 3, 30, 0, 30)  # 2:30 CEST (UTC+2) once the clocks have moved
    autumn = daily.next_after(datetime(2026, 10, 25, 0, 0, tzinfo=PARIS).astimezone(UTC))
    assert autumn == utc(2026, 10, 25, 0, 30)  # the first 2:30 (still CEST)
    assert daily.next_after(autumn) == utc(2026, 10, 26, 1, 30)  # not the repeated 2:30: next day, CET
    # the same expression in UTC ignores Paris's clocks
    assert Schedule.build("30 2 * * *", None, None, False).next_after(utc(2026, 3, 29)) == utc(2026, 3, 29, 2, 30)


def test_slot_keys_name_the_task_and_the_slot() -> None:
    slot = utc(2026, 12, 1, 10, 5)
    key = slot_key("app.tasks:odd.name", slot)
    assert key.startswith("tasklib.slot:app.tasks:odd.name:") and slot_time(key) == slot
    assert slot_time("invoice:42") is None


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "* * *"}, "invalid cron"),
        ({"cron": "*/5 * * * *", "every": 5}, "either cron= or every="),
        ({"every": 0}, "at least 1"),
        ({"every": 1.5}, "whole number"),
        ({"every": 5, "timezone": "Europe/Paris"}, "timezone applies to cron"),
        ({"cron": "0 * * * *", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"timezone": "UTC"}, "need a schedule"),
        ({"catch_up": True}, "need a schedule"),
    ],
)
def test_bad_schedules_fail_at_decoration(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):

        @tasklib.task(name="unit.bad_schedule", **kwargs)  # type: ignore[call-overload]
        def job() -> None: ...


def test_schedule_kwargs_are_validated_like_a_submit() -> None:
    with pytest.raises(tasklib.ValidationError, match="count"):

        @tasklib.task(name="unit.sched_kwargs", every=60, schedule_kwargs={"count": "many"})
        def job(count: int) -> None: ...

    @tasklib.task(name="unit.sched_ok", cron="0 9 * * 1", timezone="Europe/Paris", schedule_kwargs={"count": "3"})
    def ok(count: int) -> None: ...

    schedule = definition_for(ok).schedule
    assert schedule is not None and dict(schedule.kwargs) == {"count": 3}
    assert schedule.tags() == {"schedule": "0 9 * * 1", "timezone": "Europe/Paris"}
    assert ok(count=1) is None  # still an ordinary function


def test_schedules_in_words() -> None:
    assert describe("every 30s") == "Every 30 seconds"
    assert describe("every 300s") == "Every 5 minutes"
    assert describe("every 3600s") == "Every hour"
    assert describe("*/5 * * * *") == "Every fifth minute of every hour"
    assert describe("0 9 * * 1", "Europe/Paris").endswith("(Europe/Paris)")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("12h", 43200), ("7d", 604800), ("2w", 1209600), (5, 5)]
)
def test_retention_periods(text: object, seconds: int) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["7", "7 days", "-1d", "0s", True])
def test_retention_periods_refused(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)

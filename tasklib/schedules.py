"""Recurring tasks: when each slot of a schedule falls, and the key that makes a slot one row.

A schedule is part of a task's registration (``@tasklib.task(cron=...)`` or ``every=``). Slot times
are a pure function of the schedule and a clock reading, so every worker computes the same slots
without talking to the others; the database clock is the one used (``tasklib.worker.scheduler``), so
worker clocks that disagree by a few seconds change nothing. A slot's row carries the key
``tasklib.slot:<task>:<epoch seconds>``, unique in the table for as long as the row exists.

Cron expressions are parsed by cronsim: 5 fields, or 6 with seconds first; in a timezone, DST
follows Debian cron (a time skipped by spring-forward runs at the first minute after the gap, a time
repeated by fall-back runs once).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from tasklib.states import SLOT_KEY_PREFIX

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Schedule:
    """When a recurring task runs: a cron expression or a fixed interval, in a timezone."""

    cron: str | None = None
    every_seconds: int | None = None
    timezone: str = "UTC"
    #: Run the most recent slot missed while no worker was scheduling (once), instead of skipping it.
    catch_up: bool = False
    #: The validated JSON arguments every run gets.
    kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def build(cls, cron: str | None, every: float | timedelta | None, timezone: str | None, catch_up: bool) -> Schedule:
        """Validate a decorator's schedule arguments (ValueError naming the problem)."""
        if (cron is None) == (every is None):
            raise ValueError("give either cron= or every=, not both")
        zone = timezone or "UTC"
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {zone!r} (an IANA name such as 'Europe/Paris')") from None
        if cron is not None:
            if not isinstance(cron, str):
                raise ValueError("cron must be a string such as '*/5 * * * *'")
            try:
                CronSim(cron, datetime.now(UTC))
            except CronSimError as exc:
                raise ValueError(f"invalid cron expression {cron!r}: {exc}") from None
            return cls(cron=cron, timezone=zone, catch_up=catch_up)
        seconds = every.total_seconds() if isinstance(every, timedelta) else every
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 1 or seconds != int(seconds):
            raise ValueError("every must be a whole number of seconds (or a timedelta), at least 1")
        if timezone is not None:
            raise ValueError("timezone applies to cron schedules; every= counts seconds")
        return cls(every_seconds=int(seconds), catch_up=catch_up)

    def with_kwargs(self, kwargs: dict[str, Any]) -> Schedule:
        return Schedule(self.cron, self.every_seconds, self.timezone, self.catch_up, tuple(sorted(kwargs.items())))

    @property
    def written(self) -> str:
        """The schedule as the decorator wrote it (``*/5 * * * *``, ``every 30s``)."""
        return self.cron if self.cron is not None else f"every {self.every_seconds}s"

    def next_after(self, now: datetime) -> datetime:
        """The first slot strictly after ``now`` (UTC)."""
        if self.every_seconds is not None:
            period = self.every_seconds
            slot = (math.floor((now - _EPOCH).total_seconds() / period) + 1) * period
            return _EPOCH + timedelta(seconds=slot)
        assert self.cron is not None
        return next(CronSim(self.cron, now.astimezone(ZoneInfo(self.timezone)))).astimezone(UTC)

    def latest_at_or_before(self, now: datetime) -> datetime:
        """The most recent slot at or before ``now`` (UTC)."""
        if self.every_seconds is not None:
            period = self.every_seconds
            return _EPOCH + timedelta(seconds=math.floor((now - _EPOCH).total_seconds() / period) * period)
        assert self.cron is not None
        # cronsim's reverse iteration starts strictly before a whole second; a fraction makes "at" count.
        probe = now if now.microsecond else now + timedelta(microseconds=1)
        return next(CronSim(self.cron, probe.astimezone(ZoneInfo(self.timezone)), reverse=True)).astimezone(UTC)

    def tags(self) -> dict[str, str]:
        """What each slot row carries, so the dashboard can show the schedule without importing the app."""
        tags = {"schedule": self.written}
        if self.cron is not None:
            tags["timezone"] = self.timezone
        return tags


def describe(written: str, timezone: str | None = None) -> str:
    """A schedule in words (``Every fifth minute of every hour``), from what its slot rows carry."""
    if written.startswith("every ") and written.endswith("s"):
        try:
            seconds = int(written[6:-1])
        except ValueError:
            return written
        return "Every " + _interval(seconds)
    try:
        words = CronSim(written, datetime.now(UTC)).explain()
    except (CronSimError, ValueError):
        return written
    return words if not timezone or timezone == "UTC" else f"{words} ({timezone})"


def _interval(seconds: int) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}s" if count != 1 else unit
    return f"{seconds} seconds" if seconds != 1 else "second"


def slot_key(task_name: str, slot: datetime) -> str:
    """The unique key of one slot of one task."""
    return f"{SLOT_KEY_PREFIX}{task_name}:{int((slot - _EPOCH).total_seconds())}"


def slot_time(key: str) -> datetime | None:
    """The slot a slot key names, or None for any other key."""
    if not key.startswith(SLOT_KEY_PREFIX):
        return None
    try:
        return _EPOCH + timedelta(seconds=int(key.rpartition(":")[2]))
    except ValueError:
        return None

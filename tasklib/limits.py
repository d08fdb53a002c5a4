"""Queue names, rate limits and the decisions the claim makes with them. Pure: no I/O.

A rate limit is kept as one time per task, the start the next claim may make (a "theoretical
arrival time", as in the generic cell rate algorithm): each start moves it one interval on. Starts
are spread evenly through the period, never bunched at its start; a claim that comes late may catch
up what it fell behind by, within a bound, so a rate is kept over time without bursts after idle
spells.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

#: The queue a task runs in unless its ``@task`` or its submit names another.
DEFAULT_QUEUE = "default"
_QUEUE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}")
_RATE = re.compile(r"\s*(\d+)\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}


def check_queue(name: object) -> str:
    """``name`` if it can name a queue, else ValueError saying what a queue name may be."""
    if not isinstance(name, str) or not _QUEUE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid queue name {name!r}: 1 to 63 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"
        )
    return name


def check_limit(limit: object, what: str = "concurrency_limit") -> int | None:
    """A concurrency limit: None (no limit) or a whole number of at least 1."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"{what} must be a whole number >= 1 (or None for no limit), got {limit!r}")
    return limit


@dataclass(frozen=True)
class Rate:
    """At most ``count`` starts per ``period_seconds``, spread evenly."""

    count: int
    period_seconds: int

    @classmethod
    def parse(cls, text: object) -> Rate:
        """``"20/s"``, ``"100/m"``, ``"500/h"`` (ValueError otherwise)."""
        match = _RATE.fullmatch(text) if isinstance(text, str) else None
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"invalid rate_limit {text!r}: a count of at least 1 per s, m or h, such as '20/s'")
        return cls(int(match.group(1)), _PERIODS[match.group(2)])

    @property
    def interval(self) -> timedelta:
        """The time between two starts."""
        return timedelta(seconds=self.period_seconds / self.count)

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}[self.period_seconds]
        return f"{self.count}/{unit}"


@dataclass(frozen=True)
class Allowance:
    """How many tasks a rate lets start now, and the clock once ``n`` of them have started."""

    count: int
    base: datetime
    interval: timedelta

    def clock_after(self, started: int) -> datetime:
        """The next start's time once ``started`` tasks started (the clock moves one interval each)."""
        return self.base + self.interval * started

    def wait_seconds(self, now: datetime) -> float:
        """Seconds until the next start is allowed (0 when one is allowed now)."""
        return max(0.0, (self.base - now).total_seconds())


#: How far behind (in intervals) a rate's clock may fall and still be caught up. Below 2, so a claim
#: takes at most two starts at once and a period never holds more than its count plus two.
CATCH_UP = 1.9


def allowance(rate: Rate, clock: datetime | None, now: datetime) -> Allowance:
    """How many starts ``rate`` allows at ``now`` given the task's ``clock`` (None: never started).

    A clock in the future allows nothing until then. A clock in the past allows the starts it has
    fallen behind by, remembered for up to ``CATCH_UP`` intervals: a claim that comes late (a busy
    machine) loses no start, an idle spell never banks a burst, and any period holds at most two
    starts more than the rate."""
    interval = rate.interval
    behind = clock is None or clock < now - interval * CATCH_UP  # idle: start afresh, one caught up
    base = now - interval if behind else clock
    if base > now:
        return Allowance(0, base, interval)
    return Allowance(math.floor((now - base) / interval) + 1, base, interval)


def lock_key(kind: str, name: str) -> str:
    """The text of the advisory lock that serialises the claims counted against one limit."""
    return f"tasklib.{kind}:{name}"

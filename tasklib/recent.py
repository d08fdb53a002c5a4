"""Outcomes of the last 24 hours, per minute and task name, kept up to date incrementally.

Aggregating a day of rows on every request would cost in proportion to the day's traffic, and every
open tab polls. So each process keeps per-minute buckets and each refresh reads only the minutes
since its last read (and, after a start, one bounded slice of the rest of the day):
docs/design/dashboard.md.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tasklib import sql
from tasklib.db import Database

WINDOW = timedelta(hours=24)
SLICE = timedelta(minutes=15)
#: Rows one backfill read aims at (tens of milliseconds).
BACKFILL_ROWS = 20_000
OVERLAP = timedelta(seconds=10)


@dataclass(frozen=True)
class Bucket:
    """One minute's outcomes of one task name."""

    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    run_seconds: float = 0.0  # summed over completed tasks that have a start time
    timed: int = 0


@dataclass(frozen=True)
class NameTotals:
    name: str
    completed: int
    failed: int
    cancelled: int
    avg_seconds: float | None


def _minute(at: datetime) -> datetime:
    return at.replace(second=0, microsecond=0)


class RecentOutcomes:
    """Per-minute buckets of one database's outcomes. Thread-safe: one refresh at a time, and a
    request that finds another refresh running serves the buckets it has rather than waiting."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[datetime, dict[str, Bucket]] = {}  # replaced whole, never mutated
        self._totals: list[NameTotals] = []  # by_name() of those buckets
        self._head: datetime | None = None  # re-read from this minute on the next refresh
        self._tail: datetime | None = None  # oldest minute loaded
        self.read_at: datetime | None = None  # the database's clock at the last refresh
        self._span = SLICE  # how far back the next backfill read reaches

    def refresh(self, db: Database) -> None:
        if not self._lock.acquire(blocking=False):
            return
        try:
            buckets = dict(self._buckets)
            first = self._head is None or self._tail is None
            if first:  # the last SLICE now, then older slices one per refresh
                self._tail = self._head = _minute(db.value(sql.NOW)) - SLICE
            assert self._head is not None and self._tail is not None
            read_at, rows = self._read(db, self._head, None)
            self._replace(buckets, self._head, rows)
            if first:
                self._span = _next_span(SLICE, _count(rows))
            start = _minute(read_at - WINDOW)
            if self._tail > start:
                # All that is left, if it is small (a capped count on the index is cheap); else a slice.
                left = db.value(sql.COUNT_FINISHED_BETWEEN, {"since": start, "until": self._tail, "cap": BACKFILL_ROWS + 1})
                older = start if left <= BACKFILL_ROWS else max(_minute(self._tail - self._span), start)
                _, rows = self._read(db, older, self._tail)
                buckets.update(_group(rows))
                self._span = _next_span(self._tail - older, _count(rows))
                self._tail = older
            for minute in [m for m in buckets if m < start]:
                del buckets[minute]
            self._head = _minute(read_at - OVERLAP)
            self._buckets, self._totals, self.read_at = buckets, _totals(buckets), read_at
        finally:
            self._lock.release()

    def _read(self, db: Database, since: datetime, until: datetime | None) -> tuple[datetime, list[Any]]:
        rows = db.rows(sql.OUTCOMES_SINCE, {"since": since, "until": until})
        return rows[0]["read_at"], [r for r in rows if r["minute"] is not None]

    @staticmethod
    def _replace(buckets: dict[datetime, dict[str, Bucket]], since: datetime, rows: list[Any]) -> None:
        for minute in [m for m in buckets if m >= since]:
            del buckets[minute]
        buckets.update(_group(rows))

    # -- what the pages read -------------------------------------------------------------------

    @property
    def covers(self) -> timedelta:
        """How much of the window is loaded (less than WINDOW while it fills after a start)."""
        if self.read_at is None or self._tail is None:
            return timedelta(0)
        return min(self.read_at - self._tail, WINDOW)

    @property
    def complete(self) -> bool:
        return self.covers >= WINDOW - timedelta(minutes=1)

    def by_name(self) -> list[NameTotals]:
        """Each name's outcomes over the window, summed once per refresh (not per request: a day holds
        1,440 minutes of every name, and each scrape and tab would add them up again)."""
        return self._totals

    def per_minute(self, minutes: int = 60) -> list[tuple[datetime, int, int]]:
        """(minute, completed, failed) for the last ``minutes`` minutes, oldest first, zeros included."""
        if self.read_at is None:
            return []
        buckets = self._buckets
        last = _minute(self.read_at)
        chart = []
        for i in range(minutes - 1, -1, -1):
            minute = last - timedelta(minutes=i)
            names = buckets.get(minute, {}).values()
            chart.append((minute, sum(b.completed for b in names), sum(b.failed for b in names)))
        return chart


def _next_span(span: timedelta, rows: int) -> timedelta:
    """The next backfill span: about BACKFILL_ROWS at the density just read, at most 4x wider than the
    last (a few quiet minutes say little about the hours before them), at least one minute."""
    wider = span * min(4.0, BACKFILL_ROWS / rows) if rows else span * 4
    return min(max(wider, timedelta(minutes=1)), WINDOW)


def _totals(buckets: dict[datetime, dict[str, Bucket]]) -> list[NameTotals]:
    totals: dict[str, list[float]] = {}
    for names in buckets.values():
        for name, b in names.items():
            t = totals.setdefault(name, [0, 0, 0, 0.0, 0])
            t[0] += b.completed
            t[1] += b.failed
            t[2] += b.cancelled
            t[3] += b.run_seconds
            t[4] += b.timed
    return [
        NameTotals(name, int(t[0]), int(t[1]), int(t[2]), t[3] / t[4] if t[4] else None)
        for name, t in sorted(totals.items())
    ]


def _count(rows: Iterable[Any]) -> int:
    return sum(r["n"] for r in rows)


def _group(rows: Iterable[Any]) -> dict[datetime, dict[str, Bucket]]:
    grouped: dict[datetime, dict[str, dict[str, Any]]] = {}
    for r in rows:
        b = grouped.setdefault(r["minute"], {}).setdefault(r["name"], {})
        b[r["state"]] = r["n"]
        if r["state"] == "completed":
            b["run_seconds"], b["timed"] = float(r["run_seconds"] or 0.0), r["timed"]
    return {m: {name: Bucket(**fields) for name, fields in names.items()} for m, names in grouped.items()}

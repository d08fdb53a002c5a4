"""The overview's last-24-hours figures, kept incrementally, against exact SQL over the same rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest

from tasklib import recent
from tasklib.db import Database
from tasklib.recent import RecentOutcomes
from tests.factory import make_task


def exact(url: str) -> dict[str, tuple[int, int, int]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            """SELECT name, count(*) FILTER (WHERE state = 'completed'), count(*) FILTER (WHERE state = 'failed'),
                      count(*) FILTER (WHERE state = 'cancelled')
               FROM tasks WHERE completed_at >= date_trunc('minute', now() - interval '24 hours') GROUP BY name"""
        ).fetchall()
    return {name: (c, f, x) for name, c, f, x in rows}


def seen(outcomes: RecentOutcomes) -> dict[str, tuple[int, int, int]]:
    return {t.name: (t.completed, t.failed, t.cancelled) for t in outcomes.by_name()}


@pytest.fixture
def db(tl) -> Database:
    database = Database(tl.database_url)
    yield database
    database.close()


def test_fills_in_slices_then_reads_only_new_minutes(tl, db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(UTC)
    url = tl.database_url
    for hours in (0.01, 0.5, 3, 9, 17, 23.5):
        make_task(
            url,
            "completed",
            name="a",
            completed_at=now - timedelta(hours=hours),
            started_at=now - timedelta(hours=hours, seconds=2),
        )
    make_task(url, "completed", name="a", completed_at=now - timedelta(hours=25))  # outside the window
    make_task(url, "failed", name="b", completed_at=now - timedelta(hours=2))
    make_task(url, "cancelled", name="b", completed_at=now - timedelta(minutes=1))
    make_task(url, "pending", name="b")
    monkeypatch.setattr(recent, "BACKFILL_ROWS", 1)  # about one row per backfill read: many slices

    outcomes = RecentOutcomes()
    refreshes = 0
    while not outcomes.complete:
        outcomes.refresh(db)
        refreshes += 1
        assert refreshes < 200
    assert refreshes > 3, "a busy day must load over several refreshes, not in one read"
    assert seen(outcomes) == exact(url) == {"a": (6, 0, 0), "b": (0, 1, 1)}
    totals = {t.name: t for t in outcomes.by_name()}
    assert totals["a"].avg_seconds == pytest.approx(2.0, abs=0.01)

    # New outcomes, including one whose completed_at is a few seconds older than its commit.
    make_task(url, "completed", name="a")
    make_task(url, "failed", name="c", completed_at=datetime.now(UTC) - timedelta(seconds=5))
    outcomes.refresh(db)
    assert seen(outcomes) == exact(url) == {"a": (7, 0, 0), "b": (0, 1, 1), "c": (0, 1, 0)}
    chart = outcomes.per_minute(60)
    assert len(chart) == 60 and sum(c for _, c, _ in chart) == 3 and sum(f for _, _, f in chart) == 1


def test_a_quiet_day_loads_on_the_first_refresh(tl, db: Database) -> None:
    make_task(tl.database_url, "completed", name="a", completed_at=datetime.now(UTC) - timedelta(hours=20))
    outcomes = RecentOutcomes()
    outcomes.refresh(db)
    assert outcomes.complete and seen(outcomes) == {"a": (1, 0, 0)}

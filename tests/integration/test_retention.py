"""Retention: prune removes exactly the old finished rows asked for, in batches; workers prune one at a time."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

import tasklib
from tasklib import retention, sql
from tests.workers import ROOT, wait_for, workers

#: (state, hours since completion) -> rows. Pending and running rows carry old timestamps too.
SHAPE = {
    ("completed", 48): 130,
    ("completed", 0.5): 20,
    ("failed", 48): 70,
    ("failed", 2): 15,
    ("cancelled", 48): 25,
    ("pending", 48): 10,
    ("running", 48): 10,
}


def fill(url: str) -> None:
    """Rows interleaved by completion time across states (so a batch of one state steps over others)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (state, hours), rows in SHAPE.items():
            finished = state in ("completed", "failed", "cancelled")
            conn.execute(
                """
                INSERT INTO tasks (id, name, kwargs, state, created_at, scheduled_at, started_at, completed_at,
                                   worker_id, locked_until)
                SELECT gen_random_uuid(), 'old', '{}', CAST(%(state)s AS varchar), t, t, t,
                       CASE WHEN %(finished)s THEN t END,
                       CASE WHEN CAST(%(state)s AS varchar) = 'running' THEN 'w' END,
                       CASE WHEN CAST(%(state)s AS varchar) = 'running' THEN now() + interval '1 day' END
                FROM (SELECT now() - make_interval(secs => %(hours)s * 3600 + g * 7) AS t
                      FROM generate_series(1, %(rows)s) AS g) AS times
                """,
                {"state": state, "hours": hours, "rows": rows, "finished": finished},
            )


def by_state(url: str) -> dict[str, int]:
    with psycopg.connect(url) as conn:
        return dict(conn.execute("SELECT state, count(*) FROM tasks GROUP BY 1").fetchall())  # type: ignore[arg-type]


def test_prune_removes_exactly_the_old_rows_asked_for(tl: tasklib.Config, database_url: str, monkeypatch) -> None:
    fill(database_url)
    batches: list[dict[str, Any]] = []
    real = retention.prune_with

    def counting(run, periods, pause=0.0):  # type: ignore[no-untyped-def]
        def wrapped(statement: str, params: dict[str, Any]) -> list[Any]:
            if statement == sql.PRUNE_BATCH:
                batches.append(params)
            return run(statement, params)

        return real(wrapped, periods, pause)

    monkeypatch.setattr(retention, "BATCH_ROWS", 40)
    monkeypatch.setattr(retention, "prune_with", counting)
    removed = tasklib.prune(completed_older_than=timedelta(hours=1), failed_older_than="1d")
    assert removed == 130 + 70
    assert by_state(database_url) == {"completed": 20, "failed": 15, "cancelled": 25, "pending": 10, "running": 10}
    # keyset batches: 130 rows / 40 -> 4 batches, 70 / 40 -> 2; each continues after the last one
    assert [b["state"] for b in batches] == ["completed"] * 4 + ["failed"] * 2
    assert all(b["limit"] == 40 for b in batches) and batches[1]["after"] is not None

    assert tasklib.prune(cancelled_older_than=3600 * 24) == 25
    assert tasklib.prune(completed_older_than="1h") == 0


@pytest.mark.parametrize("bad", [{}, {"completed_older_than": "7 days"}, {"failed_older_than": -5}])
def test_prune_refuses_unclear_periods(tl: tasklib.Config, bad: dict[str, Any]) -> None:
    with pytest.raises(tasklib.ValidationError):
        tasklib.prune(**bad)


def test_prune_command(tl: tasklib.Config, database_url: str) -> None:
    fill(database_url)
    cmd = [sys.executable, "-m", "tasklib.cli", "prune", "--database-url", database_url]
    done = subprocess.run([*cmd, "--completed-older-than", "1d"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed 130 finished task(s)" in done.stdout, done.stderr
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "--completed-older-than" in refused.stderr
    bad = subprocess.run([*cmd, "--failed-older-than", "soon"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "7d" in bad.stderr


def test_workers_prune_one_at_a_time_and_record_each_round(tl: tasklib.Config, database_url: str, tmp_path: Path) -> None:
    fill(database_url)
    # (The running rows' worker "w" never registered its presence: nobody rescues its claims before
    # their locks expire, as for a worker of a version without presence.)
    with workers(database_url, tmp_path / "log", 3, "--retention", "completed=1h,failed=1d,every=1s"):
        assert wait_for(lambda: by_state(database_url).get("failed", 0) == 15, timeout=30)
        assert wait_for(lambda: record(database_url) is not None, timeout=30)
        first = record(database_url)
        assert first is not None and wait_for(
            lambda: record(database_url)["completed_at"] > first["completed_at"], timeout=30
        )  # type: ignore[index]
    after = by_state(database_url)
    assert after["pending"] == 10 and after["running"] == 10 and after["cancelled"] == 25
    assert after["completed"] == 20 and after["failed"] == 15  # every old row removed, none other
    last = record(database_url)
    assert last is not None and last["value"]["policy"] == {"completed": 3600.0, "failed": 86400.0}
    assert last["value"]["worker_id"] and last["value"]["total"] == 0  # (later rounds found nothing left)
    with psycopg.connect(database_url) as conn:  # the tasks table holds only tasks
        assert conn.execute("SELECT count(*) FROM tasks WHERE name LIKE 'tasklib.%'").fetchone() == (0,)


def test_a_round_waits_its_turn_while_another_holds_the_lease(tl: tasklib.Config, database_url: str) -> None:
    fill(database_url)
    policy = tasklib.Retention(completed="1h")
    with psycopg.connect(database_url, autocommit=True) as other, psycopg.connect(database_url, autocommit=True) as mine:
        assert other.execute(sql.TAKE_RETENTION_LEASE, {"worker_id": "w0", "seconds": 600}).fetchall()
        assert retention.automatic_round(mine, policy, "w1") is None
        assert by_state(database_url)["completed"] == 150 and record(database_url) is None
        other.execute(sql.END_RETENTION_LEASE, {"worker_id": "w0"})
        assert retention.automatic_round(mine, policy, "w1") == {"completed": 130}
        # A lease whose holder died mid-round is taken once it runs out.
        other.execute(sql.TAKE_RETENTION_LEASE, {"worker_id": "dead", "seconds": 0.2})
        assert retention.automatic_round(mine, policy, "w1") is None
        time.sleep(0.3)
        assert retention.automatic_round(mine, policy, "w1") == {"completed": 0}
    last = record(database_url)
    assert last is not None and last["value"]["removed"] == {"completed": 0} and last["value"]["worker_id"] == "w1"


def record(url: str) -> dict[str, Any] | None:
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql.LAST_RETENTION_RECORD).fetchone()

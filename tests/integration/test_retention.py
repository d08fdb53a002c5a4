"""Retention: prune removes exactly the old finished rows asked for, in batches; workers prune one at a time."""

from __future__ import annotations

import subprocess
import sys
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
    # The running rows' worker "w" stays connected (else the workers would rescue its claims after 5 s).
    live = psycopg.connect(database_url, application_name="tasklib-worker w")
    with live, workers(database_url, tmp_path / "log", 3, "--retention", "completed=1h,failed=1d,every=1s"):
        assert wait_for(lambda: by_state(database_url).get("failed", 0) == 15, timeout=30)
        assert wait_for(lambda: len(records(database_url)) >= 4, timeout=30)
    after = by_state(database_url)
    assert after["pending"] == 10 and after["running"] == 10 and after["cancelled"] == 25
    rounds = records(database_url)
    assert sum(r["result"]["total"] for r in rounds) == 130 + 70  # every row removed once, by some round
    assert rounds[0]["kwargs"] == {"completed": 3600.0, "failed": 86400.0}


def test_a_round_waits_its_turn_while_another_holds_the_lock(tl: tasklib.Config, database_url: str) -> None:
    fill(database_url)
    policy = tasklib.Retention(completed="1h")
    with psycopg.connect(database_url, autocommit=True) as other, psycopg.connect(database_url, autocommit=True) as mine:
        assert other.execute(sql.RETENTION_TRY_LOCK).fetchone()[0]  # type: ignore[index]
        assert retention.automatic_round(mine, policy, "w1") is None
        assert by_state(database_url)["completed"] == 150 and records(database_url) == []
        other.execute(sql.RETENTION_UNLOCK)
        assert retention.automatic_round(mine, policy, "w1") == {"completed": 130}
        # (its own session's: pg_locks is the whole server's, where other tests' workers take limits' locks)
        held = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
        assert mine.execute(held).fetchone()[0] == 0  # type: ignore[index]
    assert [r["result"] for r in records(database_url)] == [{"removed": {"completed": 130}, "total": 130}]


def records(url: str) -> list[dict[str, Any]]:
    from psycopg.rows import dict_row

    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT kwargs, result, worker_id, started_at, completed_at FROM tasks WHERE name = %s ORDER BY started_at",
            [retention.RECORD_NAME],
        ).fetchall()

"""A worker's outcome that arrives after its claim ended (cancelled, rescued, claimed again) is ignored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from psycopg.rows import dict_row

from tasklib import actions, sql
from tasklib.api import database
from tasklib.outcome import Action
from tasklib.states import TaskState
from tests.factory import make_task

STARTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DONE = Action(state=TaskState.COMPLETED, retry_count=0, result_json='"late"')


def row(url: str, task_id: object) -> dict:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute("SELECT * FROM tasks WHERE id = %s", [task_id]).fetchone()  # type: ignore[return-value]


def finish(url: str, task_id: object, worker_id: str, started_at: datetime) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql.FINISH_MANY, sql.outcome_params([(task_id, started_at, DONE)], worker_id)).rowcount


def test_late_finish_after_cancel_changes_nothing(tl) -> None:
    url = tl.database_url
    task_id = make_task(url, "running", worker_id="w1", started_at=STARTED)
    actions.cancel(database(), task_id)
    cancelled = row(url, task_id)
    assert finish(url, task_id, "w1", STARTED) == 0
    assert row(url, task_id) == cancelled
    assert cancelled["state"] == "cancelled" and cancelled["result"] is None


def test_late_finish_after_rescue_and_reclaim_changes_nothing(tl) -> None:
    url = tl.database_url
    task_id = make_task(
        url, "running", worker_id="w1", started_at=STARTED, locked_until=datetime.now(UTC) - timedelta(seconds=1)
    )
    retry = Action(state=TaskState.PENDING, retry_count=1, error="WorkerLost: lock expired")
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(sql.RESCUE_MANY, sql.outcome_params([(task_id, STARTED, retry)], "w1")).rowcount == 1
    rescued = row(url, task_id)
    assert rescued["state"] == "pending"
    assert finish(url, task_id, "w1", STARTED) == 0  # lost worker comes back with its result
    assert row(url, task_id) == rescued
    # Claimed again by another worker: the first worker's result still cannot land on the new claim.
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE tasks SET state = 'running', worker_id = 'w2', started_at = now(),"
            " locked_until = now() + interval '1 min', scheduled_at = now() WHERE id = %s",
            [task_id],
        )
    reclaimed = row(url, task_id)
    assert finish(url, task_id, "w1", STARTED) == 0
    assert finish(url, task_id, "w2", STARTED) == 0  # right worker, but an older claim
    assert row(url, task_id) == reclaimed
    assert finish(url, task_id, "w2", reclaimed["started_at"]) == 1
    assert row(url, task_id)["state"] == "completed"

"""Helpers for testing your own tasks: run what is due in this process, check what was enqueued."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pydantic_core
from psycopg.rows import dict_row

from tasklib import sql
from tasklib.api import current_config, database, list_tasks
from tasklib.models import Task
from tasklib.outcome import Outcome, decide
from tasklib.queues import queue_settings_on
from tasklib.registry import definition_for, registered_definitions, registered_queues
from tasklib.worker.child import run_one
from tasklib.worker.claim import EARLIEST, queue_params
from tasklib.worker.jobs import Job


def drain(*, max_tasks: int = 10_000, batch: int = 100, queues: list[str] | None = None) -> int:
    """Run due tasks synchronously in this process until none is due; returns how many ran.

    ``queues``: the queues to run (default: every queue a registered task names); a paused queue's
    tasks are not run. Concurrency and rate limits do not apply here.

    Uses the same claim and finish statements as the worker, so states, results, errors and retry
    scheduling are what a worker would record (retries land in the future and are not run again).
    There is no process isolation here: timeouts are not enforced.
    """
    config = current_config()
    definitions = registered_definitions()
    worker_id = f"tasklib.testing:{os.getpid()}"
    served = queues if queues is not None else registered_queues(definitions)
    paused = {queue for queue, settings in queue_settings_on(database()).items() if settings.get("paused")}
    served = [queue for queue in served if queue not in paused]
    ran = 0
    with database().pool().connection() as conn:
        while ran < max_tasks:
            rows = [
                row
                for queue in served
                for row in conn.cursor(row_factory=dict_row)
                .execute(
                    sql.CLAIM_NEXT,
                    {
                        "names": sorted(definitions),
                        "limit": min(batch, max_tasks - ran),
                        "floor": EARLIEST,
                        "worker_id": worker_id,
                        "lock_seconds": float(config.lock_timeout_seconds),
                        **queue_params(queue),
                    },
                )
                .fetchall()
            ]
            jobs = sorted((Job.from_row(row) for row in rows if row["id"] is not None), key=lambda j: j.queue_order)
            if not jobs:
                break
            outcomes = []
            for job in jobs:
                outcome = Outcome.from_child(*run_one(definitions, job.name, job.kwargs_json))
                action = decide(outcome, job.retry_count, job.max_retries, config)
                outcomes.append((job.id, job.started_at, action))
            conn.execute(sql.FINISH_MANY, sql.outcome_params(outcomes, worker_id))
            ran += len(jobs)
    return ran


def enqueued(func: Callable[..., Any] | str, state: str | None = "pending", **kwargs: Any) -> list[Task]:
    """Tasks of ``func`` (optionally in ``state``) whose stored arguments include ``kwargs``."""
    name = definition_for(func).name
    expected = {k: pydantic_core.to_jsonable_python(v) for k, v in kwargs.items()}  # as stored
    return [
        t for t in list_tasks(state=state, name=name, limit=10_000) if all(t.kwargs.get(k) == v for k, v in expected.items())
    ]


def assert_enqueued(func: Callable[..., Any] | str, state: str | None = "pending", **kwargs: Any) -> Task:
    """The one matching task; AssertionError if there is none or more than one."""
    found = enqueued(func, state, **kwargs)
    assert len(found) == 1, (
        f"expected one {state or 'any-state'} task {definition_for(func).name}({kwargs}), found {len(found)}"
    )
    return found[0]

"""``states.TRANSITIONS`` is the contract every state-changing statement in ``tasklib.sql`` keeps.

Each statement is run against a row in every state (made by ``make_task``, named so only that row
matches) with every new state it can be asked to write, and the changes that actually happen in the
table are collected: they must be exactly the transitions the table allows.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklib import sql
from tasklib.filters import TaskFilter
from tasklib.outcome import Action
from tasklib.states import TRANSITIONS, TaskState
from tasklib.worker.claim import queue_params
from tests.factory import make_task

WORKER = "w-transitions"
STARTED = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
Params = Callable[[uuid.UUID, str], tuple[str, dict[str, Any]]]


def _claim(_: uuid.UUID, name: str) -> tuple[str, dict[str, Any]]:
    floor = datetime(2000, 1, 1, tzinfo=UTC)
    return sql.CLAIM_NEXT, {
        "worker_id": WORKER,
        "lock_seconds": 60,
        "floor": floor,
        "names": [name],
        "limit": 5,
        **queue_params(),
    }


def _outcome(statement: str, state: TaskState) -> Params:
    def params(task_id: uuid.UUID, _: str) -> tuple[str, dict[str, Any]]:
        action = Action(state=state, retry_count=1, result_json="1" if state == TaskState.COMPLETED else None)
        return statement, sql.outcome_params([(task_id, STARTED, action)], WORKER)

    return params


def _by_id(statement: str, **extra: Any) -> Params:
    return lambda task_id, _: (statement, {"id": task_id, "ids": [task_id], "worker_id": WORKER, **extra})


def _matching(statement: Callable[[str], str], states: tuple[str, ...]) -> Params:
    def params(_: uuid.UUID, name: str) -> tuple[str, dict[str, Any]]:
        where, values = TaskFilter(name=name).clause(states=states)
        return statement(where), {**values, "cap": 10}

    return params


#: What ``outcome.decide`` can ask the worker to write (a row is never written back as running).
DECIDED = (TaskState.COMPLETED, TaskState.FAILED, TaskState.PENDING)
STATEMENTS: dict[str, list[Params]] = {
    "CLAIM_NEXT": [_claim],
    "FINISH_MANY": [_outcome(sql.FINISH_MANY, s) for s in DECIDED],
    "RESCUE_MANY": [_outcome(sql.RESCUE_MANY, s) for s in DECIDED],
    "HEARTBEAT": [_by_id(sql.HEARTBEAT, lock_seconds=60)],
    "RELEASE_MANY": [_by_id(sql.RELEASE_MANY)],
    "CANCEL_TASK": [_by_id(sql.CANCEL_TASK)],
    "RETRY_TASK": [_by_id(sql.RETRY_TASK)],
    "RETRY_MATCHING": [_matching(sql.retry_matching, ("failed", "cancelled"))],
    "CANCEL_MATCHING": [_matching(sql.cancel_matching, ("pending", "waiting"))],
}

#: The workflow statements act on the children of a task: each is run on a child in every state.
#: ``SETTLE_CHILDREN`` is the trigger that fires when a parent marked ``has_children`` ends (by any
#: statement: here a plain UPDATE to each ending state); RESTORE_CHILDREN follows a retry.
CHILD_STATEMENTS: dict[str, list[str]] = {
    "SETTLE_CHILDREN": ["completed", "failed", "cancelled"],
    "RESTORE_CHILDREN": ["failed"],
}


def _child_transitions(url: str, seen: dict[tuple[TaskState, TaskState], set[str]]) -> set[tuple[str, TaskState]]:
    changed_nothing: set[tuple[str, TaskState]] = set()
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for (label, ends), source in itertools.product(CHILD_STATEMENTS.items(), TaskState):
            for ended in ends:
                restoring = label == "RESTORE_CHILDREN"
                parent = make_task(url, ended if restoring else "running", name=f"t.{label}.parent", has_children=True)
                child = make_task(
                    url,
                    source.value,
                    name=f"t.{label}.{source}",
                    parent_ids=[parent],
                    error=f"ParentFailed: task {parent} failed" if source == TaskState.CANCELLED else None,
                )
                if restoring:
                    conn.execute(sql.RESTORE_CHILDREN, {"ids": [str(parent)]})
                else:
                    conn.execute(
                        "UPDATE tasks SET state = %s, completed_at = now(), locked_until = NULL WHERE id = %s",
                        [ended, parent],
                    )
                target = TaskState(conn.execute("SELECT state FROM tasks WHERE id = %s", [child]).fetchone()["state"])
                if target != source:
                    seen.setdefault((source, target), set()).add(label)
                else:
                    changed_nothing.add((label, source))
    return changed_nothing


def _row(url: str, state: TaskState, name: str) -> uuid.UUID:
    """A row in ``state`` that each statement's other conditions accept (due, this worker's claim
    with an expired lock), so that only the state decides."""
    past = datetime.now(UTC) - timedelta(minutes=5)
    columns: dict[str, Any] = {"scheduled_at": past, "started_at": STARTED, "worker_id": WORKER}
    if state == TaskState.RUNNING:
        columns["locked_until"] = past
    return make_task(url, state.value, name=name, **columns)


def test_statements_make_exactly_the_documented_transitions(tl) -> None:
    url = tl.database_url
    seen: dict[tuple[TaskState, TaskState], set[str]] = {}
    changed_nothing: set[tuple[str, TaskState]] = set()
    with psycopg.connect(url, autocommit=True, row_factory=dict_row) as conn:
        for (label, variants), source in itertools.product(STATEMENTS.items(), TaskState):
            for variant in variants:
                name = f"t.{label}.{source}.{uuid.uuid4().hex[:8]}"
                task_id = _row(url, source, name)
                before = conn.execute("SELECT state, locked_until FROM tasks WHERE id = %s", [task_id]).fetchone()
                statement, params = variant(task_id, name)
                conn.execute(statement, params)
                after = conn.execute("SELECT state, locked_until FROM tasks WHERE id = %s", [task_id]).fetchone()
                target = TaskState(after["state"])
                if target != source:
                    seen.setdefault((source, target), set()).add(label)
                elif after != before:
                    assert (label, source) == ("HEARTBEAT", TaskState.RUNNING), (label, source, before, after)
                else:
                    changed_nothing.add((label, source))
    changed_nothing |= _child_transitions(url, seen)
    undocumented = {pair: labels for pair, labels in seen.items() if pair not in TRANSITIONS}
    assert not undocumented, f"statements make transitions states.TRANSITIONS does not allow: {undocumented}"
    unused = set(TRANSITIONS) - set(seen)
    assert not unused, f"TRANSITIONS lists changes no statement makes: {unused}"
    # Finished rows are final for everything but an explicit retry.
    for label in [*STATEMENTS, *CHILD_STATEMENTS]:
        if label not in ("RETRY_TASK", "RETRY_MATCHING"):
            assert (label, TaskState.COMPLETED) in changed_nothing, label

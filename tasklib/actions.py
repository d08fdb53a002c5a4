"""What can be done to tasks after they were submitted: read one, cancel, retry, one by id or in bulk.

Each function takes the :class:`~tasklib.db.Database` it acts on, so the dashboard runs them on its
own pool (with its statement timeout) and ``tasklib.api`` exposes them on the default database.
Every statement checks the state it expects (``tasklib.states.TRANSITIONS``); a task in another state
is left alone and reported as :class:`InvalidTransition`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from tasklib import sql
from tasklib.db import Database
from tasklib.errors import InvalidTransition, TaskNotFound, UniqueKeyTaken, ValidationError
from tasklib.filters import TaskFilter
from tasklib.ids import new_id
from tasklib.models import Task

#: Most tasks one bulk action changes per call (the page says so and can be applied again).
BULK_CAP = 50_000


def parse_task_id(task_id: uuid.UUID | str) -> uuid.UUID:
    """A task id from a UUID or its string form; ValidationError otherwise."""
    if isinstance(task_id, uuid.UUID):
        return task_id
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        raise ValidationError(f"not a task id (expected a UUID): {str(task_id)[:80]!r}") from None


def row_to_task(row: Mapping[str, Any]) -> Task:
    return Task.model_validate(dict(row))


def get(db: Database, task_id: uuid.UUID | str) -> Task | None:
    rows = db.rows(sql.GET_TASK, {"id": parse_task_id(task_id)})
    return row_to_task(rows[0]) if rows else None


def _transition(
    db: Database,
    statement: str,
    task_id: uuid.UUID | str,
    verb: str,
    done: str,
    expected: str,
    then: Callable[[Callable[..., list[Any]], list[uuid.UUID]], None] | None = None,
) -> Task:
    """``statement`` on one task, and ``then`` in the same transaction when it changed it."""
    tid = parse_task_id(task_id)
    if then is None:
        changed = db.rows(statement, {"id": tid})
    else:
        with db.transaction() as run:
            changed = run(statement, {"id": tid})
            if changed:
                then(run, [tid])
    task = get(db, tid)
    if task is None:
        raise TaskNotFound(f"no task with id {tid}")
    if not changed:
        raise InvalidTransition(
            f"cannot {verb} task {tid}: it is {task.state}, and only {expected} tasks can be {done}",
            current_state=str(task.state),
        )
    return task


def restore_children(run: Callable[..., list[Any]], retried: list[uuid.UUID]) -> None:
    """In the transaction that retried ``retried``: the descendants their end cancelled wait again."""
    if retried:
        run(sql.RESTORE_CHILDREN, {"ids": [str(i) for i in retried]})


def cancel(db: Database, task_id: uuid.UUID | str) -> Task:
    """pending/waiting/running -> cancelled; a running task's worker kills its code. What waits for
    it (``depends_on``) is cancelled too, unless it runs anyway (``on_parent_failure="run"``)."""
    return _transition(db, sql.CANCEL_TASK, task_id, "cancel", "cancelled", "pending, waiting or running")


def retry(db: Database, task_id: uuid.UUID | str) -> Task:
    """failed/cancelled -> pending, due now; refused while another task holds its ``unique_key``.
    The descendants its failure cancelled wait for it again, so one retry resumes a workflow."""
    try:
        return _transition(db, sql.RETRY_TASK, task_id, "retry", "retried", "failed or cancelled", restore_children)
    except InvalidTransition as exc:
        task = get(db, task_id)
        if task is None or task.unique_key is None or task.state not in ("failed", "cancelled"):
            raise
        raise UniqueKeyTaken(
            f"cannot retry task {task.id}: another pending or running task holds its unique_key {task.unique_key!r}",
            current_state=str(task.state),
        ) from exc


def run_schedule_now(db: Database, name: str) -> uuid.UUID:
    """Submit one extra run of a recurring task now, with its schedule's arguments (the dashboard's
    "Run now"); the schedule itself is unchanged. TaskNotFound if the task has never been scheduled."""
    rows = db.rows(sql.RUN_SCHEDULE_NOW, {"id": new_id(), "name": name})
    if not rows:
        raise TaskNotFound(f"no recurring task named {name[:200]!r} has been scheduled")
    return uuid.UUID(str(rows[0]["id"]))


#: Which states each bulk action changes.
BULK_SOURCES: dict[str, tuple[str, ...]] = {"retry": ("failed", "cancelled"), "cancel": ("pending", "waiting")}


def count_matching(db: Database, flt: TaskFilter, states: tuple[str, ...]) -> int:
    """How many tasks in ``states`` match (counted up to BULK_CAP)."""
    where, params = flt.clause(states=states)
    return int(db.value(sql.count_matching(where), {**params, "cap": BULK_CAP}))


def retry_matching(db: Database, flt: TaskFilter) -> int:
    """failed/cancelled -> pending for up to BULK_CAP tasks matching the filter; returns how many."""
    where, params = flt.clause(states=BULK_SOURCES["retry"])
    with db.transaction() as run:
        retried = [row[0] for row in run(sql.retry_matching(where), {**params, "cap": BULK_CAP})]
        restore_children(run, retried)
    return len(retried)


def cancel_matching(db: Database, flt: TaskFilter) -> int:
    """pending/waiting -> cancelled for up to BULK_CAP tasks matching the filter; returns how many."""
    where, params = flt.clause(states=BULK_SOURCES["cancel"])
    return len(db.rows(sql.cancel_matching(where), {**params, "cap": BULK_CAP}, as_dict=False))


def act_on_steps(db: Database, kind: str, steps: Iterable[Any]) -> int:
    """A workflow page's buttons: ``retry`` each failed step (its descendants wait again), or
    ``cancel`` each step that has not ended (with what waits for it). Steps that moved on meanwhile
    are left alone; returns how many changed."""
    done = 0
    for step in steps:
        try:
            if kind == "retry" and step.state == "failed":
                retry(db, step.id)
            elif kind == "cancel" and step.state in ("pending", "waiting", "running"):
                cancel(db, step.id)
            else:
                continue
        except InvalidTransition:
            continue
        done += 1
    return done

"""The public library API on the default database: init, inspect, cancel, retry and prune tasks.

Reads and state changes are ``tasklib.actions`` applied to the database ``init`` configured;
submitting is ``tasklib.submit``.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pydantic

from tasklib import actions, listing, retention, sql
from tasklib.actions import row_to_task
from tasklib.config import Config, Retention
from tasklib.db import Database, translated_errors
from tasklib.errors import DatabaseError, NotInitialized, ValidationError, problems_of, summary_of
from tasklib.models import Task
from tasklib.registry import resolve_names
from tasklib.schema import ensure_schema
from tasklib.states import TaskState

_MAX_LIST_LIMIT = 10_000

_lock = threading.Lock()
_config: Config | None = None
_database: Database | None = None


def init(config: Config) -> None:
    """Make ``config`` the default and create or upgrade the ``tasks`` table. Idempotent.

    Calling it again with another config switches to it and closes the previous pools.
    """
    global _config, _database
    database = Database(config.resolved_database_url(), prepared_statements=config.prepares())
    with database.connect("tasklib-init") as conn:
        try:
            ensure_schema(conn)
        except psycopg.Error as exc:
            raise DatabaseError(f"could not create the tasks table: {exc}") from exc
    with _lock:
        previous, _config, _database = _database, config, database
    if previous is not None:
        previous.close()


def configured() -> Config | None:
    """The config of the last ``init`` call, or None before any."""
    return _config


def current_config() -> Config:
    """The config passed to the last ``init`` call."""
    if _config is None:
        raise NotInitialized()
    return _config


def database() -> Database:
    """The pools of the current config's database."""
    if _database is None:
        raise NotInitialized()
    return _database


def get_task(task_id: uuid.UUID | str) -> Task | None:
    """The task with that id, or None."""
    return actions.get(database(), task_id)


def parse_state(state: TaskState | str) -> TaskState:
    try:
        return TaskState(state)
    except ValueError:
        valid = ", ".join(s.value for s in TaskState)
        raise ValidationError(f"unknown state {str(state)[:40]!r}; expected one of: {valid}") from None


def list_tasks(
    state: TaskState | str | None = None,
    name: str | None = None,
    limit: int = 100,
    before: uuid.UUID | str | None = None,
    queue: str | None = None,
    kwargs_contain: dict[str, Any] | None = None,
) -> list[Task]:
    """Tasks newest first (by ``created_at``, then id), optionally of one state, task name and/or queue,
    and whose arguments contain ``kwargs_contain`` (``{"user_id": 42}``: JSON containment, nested
    objects and lists included).

    ``name`` is a full name (``myapp.tasks.send_email``) or, for tasks registered in this process, the
    bare function name (``send_email``). ``before`` is the id of a task: the page starts after it in
    the same order (a keyset, so pages stay stable while tasks are added); pass the last task of
    one page to get the next. :func:`iter_tasks` walks every page.
    """
    if not isinstance(limit, int) or not 1 <= limit <= _MAX_LIST_LIMIT:
        raise ValidationError(f"limit must be an integer from 1 to {_MAX_LIST_LIMIT}")
    cursor = None
    if before is not None:
        anchor = get_task(_task_id(before, "before"))
        if anchor is None:
            raise ValidationError(f"before: no task {before} (deleted, or never existed)")
        cursor = (anchor.created_at, anchor.id)
    return _page(state, name, limit, cursor, queue, kwargs_contain)


def iter_tasks(
    state: TaskState | str | None = None,
    name: str | None = None,
    page_size: int = 500,
    queue: str | None = None,
    kwargs_contain: dict[str, Any] | None = None,
) -> Iterator[Task]:
    """Every matching task, newest first, read page by page (each ``page_size`` rows, a keyset
    after the last one): each task present when the walk started comes once, however many tasks
    are added meanwhile (those come before the start and are not walked)."""
    if not isinstance(page_size, int) or not 1 <= page_size <= _MAX_LIST_LIMIT:
        raise ValidationError(f"page_size must be an integer from 1 to {_MAX_LIST_LIMIT}")
    cursor = None
    while True:
        page = _page(state, name, page_size, cursor, queue, kwargs_contain)
        yield from page
        if len(page) < page_size:
            return
        cursor = (page[-1].created_at, page[-1].id)


def _page(
    state: TaskState | str | None,
    name: str | None,
    limit: int,
    cursor: tuple[object, object] | None,
    queue: str | None,
    kwargs_contain: dict[str, Any] | None = None,
) -> list[Task]:
    from tasklib.filters import contained
    from tasklib.queues import valid_queue

    query, params = listing.page_query(
        state=None if state is None else parse_state(state).value,
        names=None if name is None else tuple(resolve_names(name)),
        cursor=cursor,
        queue=None if queue is None else valid_queue(queue),
        kwargs=None if kwargs_contain is None else contained(kwargs_contain),
    )
    rows = database().rows(query, {**params, "limit": limit})
    return [row_to_task(r) for r in rows]


def _task_id(value: uuid.UUID | str, what: str) -> uuid.UUID:
    try:
        return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))
    except ValueError:
        raise ValidationError(f"{what}: {str(value)[:40]!r} is not a task id") from None


def cancel_task(task_id: uuid.UUID | str) -> Task:
    """pending/running -> cancelled. A running task's worker kills its code. Returns the updated task."""
    return actions.cancel(database(), task_id)


def retry_task(task_id: uuid.UUID | str) -> Task:
    """failed/cancelled -> pending, due now. Returns the updated task."""
    return actions.retry(database(), task_id)


def prune(
    completed_older_than: timedelta | float | str | None = None,
    failed_older_than: timedelta | float | str | None = None,
    cancelled_older_than: timedelta | float | str | None = None,
) -> int:
    """Delete finished tasks whose completion is older than the period given for their state;
    returns how many rows were removed. Pending and running tasks are never touched; a state
    without a period is kept. Periods are ``timedelta``, seconds, or text (``7d``, ``12h``, ``30m``).

    Deletes in batches of at most ``retention.BATCH_ROWS`` rows, each its own transaction.
    """
    try:
        policy = Retention(completed=completed_older_than, failed=failed_older_than, cancelled=cancelled_older_than)
    except pydantic.ValidationError as exc:
        problems = problems_of(exc)
        raise ValidationError(f"invalid prune periods: {summary_of(problems)}", problems) from None
    with translated_errors(), database().pool().connection() as conn:
        removed = retention.prune_with(retention.connection_runner(conn), policy.periods())
    return sum(removed.values())


def count_by_state() -> dict[str, int]:
    """Exact number of tasks per state (every state present, zero included)."""
    counts = {s.value: 0 for s in TaskState}
    for state, count in database().rows(sql.COUNT_BY_STATE, as_dict=False):
        counts[state] = count
    return counts

"""Queue controls: pause, resume, a concurrency limit, and the overview of queues and limits.

A queue's settings are one row of the tasks table (``tasklib.sql.queues``); every change notifies the
workers, which apply it to their next claim (a pause holds from its commit: each claim statement
reads it). Limits declared on ``@task`` live in code; each worker saves them in a row of their own
so the dashboard can show them. The ``*_on`` functions take a database (the dashboard has its own);
the others use the one ``tasklib.init`` configured.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from tasklib import sql
from tasklib.db import Database
from tasklib.errors import ValidationError
from tasklib.limits import check_limit, check_queue
from tasklib.registry import registered_queues


@dataclass(frozen=True)
class TaskLimits:
    """A task's limits as its workers declared them, with what runs of it now."""

    task: str
    queue: str
    concurrency_limit: int | None
    rate_limit: str | None
    running: int
    #: Its rate's next allowed start (None without a rate).
    next_start: datetime | None


@dataclass(frozen=True)
class QueueInfo:
    """One queue as the overview shows it."""

    name: str
    pending: int = 0
    waiting: int = 0
    running: int = 0
    failed: int = 0
    paused: bool = False
    #: At most this many of its tasks run at once across every worker (None: no limit).
    concurrency_limit: int | None = None
    #: When its settings last changed (None: never set).
    changed_at: datetime | None = None
    #: Its tasks with a concurrency or rate limit of their own.
    limited_tasks: tuple[TaskLimits, ...] = ()


def valid_queue(queue: object) -> str:
    """``queue`` if it can name a queue, else a ValidationError."""
    try:
        return check_queue(queue)
    except ValueError as exc:
        raise ValidationError(str(exc), [{"field": "queue", "message": str(exc)}]) from None


def save_on(db: Database, queue: str, settings: dict[str, Any]) -> None:
    """Merge ``settings`` into ``queue``'s settings row and notify the workers."""
    queue = valid_queue(queue)
    db.rows(sql.SET_QUEUE, {"queue": queue, "settings": json.dumps(settings)}, as_dict=False)


def task_limits_on(db: Database, task: str | None = None) -> list[TaskLimits]:
    """Every limited task's limits (or ``task``'s alone), by name."""
    return [TaskLimits(**row) for row in db.rows(sql.TASK_LIMITS, {"task": task})]


def queue_settings_on(db: Database) -> dict[str, dict[str, Any]]:
    """Every queue's saved settings (``paused``, ``concurrency_limit``), by queue."""
    return {row["queue"]: row["settings"] for row in db.rows(sql.QUEUE_SETTINGS)}


def queue_state_on(db: Database, queue: str) -> dict[str, Any]:
    """``queue``'s ``paused`` and ``concurrency_limit``, and how many of its tasks run now."""
    return db.rows(sql.QUEUE_STATE, {"queue": queue})[0]


def queues_on(db: Database, also: tuple[str, ...] = ()) -> list[QueueInfo]:
    """Every queue with pending, waiting, running or failed tasks, settings, a limited task, or
    named in ``also``, by name."""
    limits: dict[str, list[TaskLimits]] = {}
    for limit in task_limits_on(db):
        limits.setdefault(limit.queue, []).append(limit)
    found = {row["queue"]: QueueInfo(name=row.pop("queue"), **row) for row in db.rows(sql.QUEUE_OVERVIEW)}
    for name in (*also, *limits):
        found.setdefault(name, QueueInfo(name))
    return [replace(found[name], limited_tasks=tuple(limits.get(name, ()))) for name in sorted(found)]


def _database() -> Database:
    from tasklib.api import database

    return database()


def pause_queue(queue: str) -> None:
    """Stop workers from claiming ``queue``'s tasks (they stay pending; running ones finish)."""
    save_on(_database(), queue, {"paused": True})


def resume_queue(queue: str) -> None:
    """Let workers claim ``queue``'s tasks again."""
    save_on(_database(), queue, {"paused": False})


def set_queue_limit(queue: str, limit: int | None) -> None:
    """At most ``limit`` of ``queue``'s tasks run at once across every worker (None: no limit)."""
    try:
        value = check_limit(limit, "limit")
    except ValueError as exc:
        raise ValidationError(str(exc), [{"field": "limit", "message": str(exc)}]) from None
    save_on(_database(), queue, {"concurrency_limit": value})


def list_queues() -> list[QueueInfo]:
    """Every queue with tasks, settings or limited tasks, and those the tasks registered in this
    process name, by name."""
    return queues_on(_database(), tuple(registered_queues()))

"""Queue controls on the default database: pause, resume, a concurrency limit, and the overview.

A queue's settings are one row of the tasks table (``tasklib.sql.queues``); every change notifies the
workers, which apply it to their next claim (a pause holds from its commit: each claim statement
reads it). Limits set on ``@task`` live in code; limits set here apply to a whole queue.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tasklib import sql
from tasklib.api import database
from tasklib.errors import ValidationError
from tasklib.limits import check_limit, check_queue, queue_row_id
from tasklib.registry import registered_definitions


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


def _valid(queue: str) -> str:
    try:
        return check_queue(queue)
    except ValueError as exc:
        raise ValidationError(str(exc), [{"field": "queue", "message": str(exc)}]) from None


def _save(queue: str, settings: dict[str, Any]) -> dict[str, Any]:
    queue = _valid(queue)
    params = {"id": queue_row_id(queue), "queue": queue, "settings": json.dumps(settings)}
    rows = database().rows(sql.SET_QUEUE, params, as_dict=False)
    return json.loads(rows[0][0]) if rows else {}


def pause_queue(queue: str) -> None:
    """Stop workers from claiming ``queue``'s tasks (they stay pending; running ones finish)."""
    _save(queue, {"paused": True})


def resume_queue(queue: str) -> None:
    """Let workers claim ``queue``'s tasks again."""
    _save(queue, {"paused": False})


def set_queue_limit(queue: str, limit: int | None) -> None:
    """At most ``limit`` of ``queue``'s tasks run at once across every worker (None: no limit)."""
    try:
        value = check_limit(limit, "limit")
    except ValueError as exc:
        raise ValidationError(str(exc), [{"field": "limit", "message": str(exc)}]) from None
    _save(queue, {"concurrency_limit": value})


def list_queues() -> list[QueueInfo]:
    """Every queue with pending, waiting, running or failed tasks, settings, or tasks registered in
    this process, by name."""
    found = {row["queue"]: QueueInfo(name=row.pop("queue"), **row) for row in database().rows(sql.QUEUE_OVERVIEW)}
    for definition in registered_definitions().values():
        found.setdefault(definition.queue, QueueInfo(definition.queue))
    return [found[name] for name in sorted(found)]

"""``make_task``: a row in any state, written straight to the table (River's testfactory is the model).

For tests that need a task *as the worker or an action would have left it* without running the code
that gets it there. Each state gets the columns the real transitions set (a running task has a
worker and a lock, a finished one a completion time), so the row passes the table's CHECKs and looks
real to every reader; any column can be overridden.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

_DEFAULTS: dict[str, dict[str, Any]] = {
    "pending": {},
    "waiting": {"waiting_for": 1},
    "running": {"worker_id": "factory-worker", "started_at": "now", "locked_until": "+600s"},
    "completed": {"started_at": "now", "completed_at": "now", "result": None},
    "failed": {"started_at": "now", "completed_at": "now", "error": "RuntimeError: made by make_task", "retry_count": 3},
    "cancelled": {"completed_at": "now", "error": "Cancelled."},
}


def make_task(url: str, state: str = "pending", name: str = "tests.integration.jobs.mark", **columns: Any) -> uuid.UUID:
    """Insert one task in ``state`` and return its id. ``columns`` override any column."""
    now = datetime.now(UTC)
    values: dict[str, Any] = {"id": uuid.uuid4(), "name": name, "state": state, "kwargs": {"key": "factory"}}
    for column, default in _DEFAULTS[state].items():
        if default == "now":
            default = now
        elif isinstance(default, str) and default.startswith("+"):
            default = now + timedelta(seconds=float(default[1:-1]))
        values[column] = default
    values.update(columns)
    for column in ("kwargs", "result", "tags", "args"):
        if column in values and values[column] is not None:
            values[column] = json.dumps(values[column])
    names = ", ".join(values)
    placeholders = ", ".join(f"%({k})s" for k in values)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO tasks ({names}) VALUES ({placeholders})", values)
    return values["id"]

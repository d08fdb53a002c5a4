"""One context builder per page; the full page and its htmx partial render from the same one.

Change detection is exact: a context's ``version`` is a fingerprint of the data the partial renders
(plus a coarse clock, so relative times like "3m ago" refresh). A poll that carries the current
fingerprint gets 204 and htmx keeps what it shows; any change, made by any connection or process,
changes the fingerprint on the next poll.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from dashboard.explain import explain
from dashboard.filters import ListParams
from tasklib import graph, queues
from tasklib.actions import parse_task_id
from tasklib.errors import TaskNotFound
from tasklib.monitor import Monitor
from tasklib.states import TaskState

#: Partials re-render at least this often even when nothing changed (relative times, due dates).
MAX_STALE_SECONDS = 30


def fingerprint(context: dict[str, Any]) -> str:
    """A short digest of everything the partial shows. ``repr`` of the read models (frozen
    dataclasses, Task models, datetimes) is deterministic and includes every field rendered."""
    data = repr(sorted((k, v) for k, v in context.items() if k not in ("version", "page")))
    digest = hashlib.blake2b(data.encode(), digest_size=10).hexdigest()
    return f"{digest}.{int(time.time() // MAX_STALE_SECONDS)}"


def _versioned(context: dict[str, Any]) -> dict[str, Any]:
    context["version"] = fingerprint(context)
    return context


def overview_context(monitor: Monitor) -> dict[str, Any]:
    overview = monitor.overview()
    peak = max((c + f for _, c, f in overview.chart), default=0)
    return _versioned({"overview": overview, "chart_peak": max(peak, 1), "page": "overview"})


def list_context(monitor: Monitor, params: ListParams, after: str | None, before: str | None) -> dict[str, Any]:
    page = monitor.page(params.flt, limit=params.limit, after=after, before=before, oldest_first=params.oldest_first)
    return _versioned({"page_data": page, "params": params, "after": after, "before": before, "page": "tasks"})


def detail_context(monitor: Monitor, task_id: str) -> dict[str, Any]:
    tid = parse_task_id(task_id)
    task = monitor.task(tid)
    if task is None:
        raise TaskNotFound(f"no task with id {tid}")
    parents, children = graph.relatives(monitor.db, task.id, task.parent_ids)
    waits = (TaskState.PENDING, TaskState.RUNNING, TaskState.WAITING)
    reasons = explain(monitor, task, parents) if task.state in waits else []
    return _versioned({"task": task, "explain": reasons, "parents": parents, "children": children, "page": "tasks"})


def workflow_context(monitor: Monitor, task_id: str) -> dict[str, Any]:
    tid = parse_task_id(task_id)
    if monitor.task(tid) is None:
        raise TaskNotFound(f"no task with id {tid}")
    return _versioned({"graph": graph.workflow(monitor.db, tid), "root_id": tid, "page": "tasks"})


def workers_context(monitor: Monitor) -> dict[str, Any]:
    return _versioned({"workers": monitor.workers(), "page": "workers"})


def queues_context(monitor: Monitor) -> dict[str, Any]:
    return _versioned({"queues": queues.queues_on(monitor.db), "page": "queues"})


def schedules_context(monitor: Monitor) -> dict[str, Any]:
    return _versioned({"schedules": monitor.schedules(), "page": "schedules"})

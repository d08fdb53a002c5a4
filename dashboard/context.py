"""One context builder per page; the full page and its htmx partial render from the same one."""

from __future__ import annotations

import time
from typing import Any

from dashboard.filters import ListParams
from tasklib.api import get_task, parse_task_id
from tasklib.errors import TaskNotFound
from tasklib.monitor import Monitor
from tasklib.states import TaskState

#: Partials re-render at least this often even when nothing changed (relative times, due dates).
MAX_STALE_SECONDS = 30


def version(monitor: Monitor) -> str:
    """What the polled partials compare: the table's write counters plus a coarse clock."""
    return f"{monitor.change_token()}.{int(time.time() // MAX_STALE_SECONDS)}"


def overview_context(monitor: Monitor, current: str | None = None) -> dict[str, Any]:
    overview = monitor.overview()
    peak = max((c + f for _, c, f in overview.chart), default=0)
    return {"overview": overview, "chart_peak": max(peak, 1), "version": current or version(monitor), "page": "overview"}


def list_context(
    monitor: Monitor, params: ListParams, after: str | None, before: str | None, current: str | None = None
) -> dict[str, Any]:
    page = monitor.page(params.flt, limit=params.limit, after=after, before=before, oldest_first=params.oldest_first)
    return {
        "page_data": page,
        "params": params,
        "after": after,
        "before": before,
        "version": current or version(monitor),
        "page": "tasks",
    }


def detail_context(monitor: Monitor, task_id: str, current: str | None = None) -> dict[str, Any]:
    tid = parse_task_id(task_id)
    task = get_task(tid)
    if task is None:
        raise TaskNotFound(f"no task with id {tid}")
    explain = monitor.explain(task) if task.state in (TaskState.PENDING, TaskState.RUNNING) else []
    return {"task": task, "explain": explain, "version": current or version(monitor), "page": "tasks"}


def workers_context(monitor: Monitor, current: str | None = None) -> dict[str, Any]:
    return {"workers": monitor.workers(), "version": current or version(monitor), "page": "workers"}

""" "Why isn't it running?": plain-language reasons for a pending or stuck running task."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasklib import queues
from tasklib.graph import Node
from tasklib.models import Task
from tasklib.monitor import COUNT_CAP, RECENT_START_WINDOW_SECONDS, Monitor
from tasklib.states import TaskState


def explain(monitor: Monitor, task: Task, parents: list[Node] | None = None) -> list[str]:
    now = datetime.now(UTC)
    if task.state == TaskState.WAITING:
        open_ = [p for p in parents or [] if p.state != TaskState.COMPLETED]
        listed = ", ".join(f"{p.name} ({p.state})" for p in open_[:5]) + (", …" if len(open_) > 5 else "")
        total = len(task.parent_ids or [])
        return [f"It is waiting for {task.waiting_for} of {total} parent(s) to end: {listed}."]
    if task.state == TaskState.RUNNING:
        if task.locked_until and task.locked_until < now:
            return [
                f"Its worker ({task.worker_id}) stopped renewing its lock, which expired at "
                f"{task.locked_until:%Y-%m-%d %H:%M:%S} UTC. Any live worker will rescue it within about a second."
            ]
        return []
    if task.state != TaskState.PENDING:
        return []
    reasons: list[str] = []
    due = not (task.scheduled_at and task.scheduled_at > now)
    if not due:
        assert task.scheduled_at is not None
        why = "a retry after a failure" if task.next_retry_at else "a delayed submit"
        reasons.append(f"It is scheduled in the future ({why}): due in {_human(task.scheduled_at - now)}.")
    else:
        reasons += _held_back(monitor, task, now)
    if due and not reasons and (ahead := monitor.ahead_of(task)):
        more = "+" if ahead >= COUNT_CAP else ""
        reasons.append(
            f"It is waiting behind {ahead:,}{more} due task(s) of its queue `{task.queue}` "
            "of higher priority or earlier schedule."
        )
    live = monitor.live_workers()
    if not live:
        reasons.append("No worker is connected to this database. Start one: tasklib worker --app your.tasks")
    elif due and not monitor.name_recently_started(task.name):
        # Only for a task that is due: a delayed one is explained by its schedule alone.
        workers = "1 worker is" if len(live) == 1 else f"{len(live)} workers are"
        reasons.append(
            f"{workers} connected, but none has started a {task.name} task in the last "
            f"{RECENT_START_WINDOW_SECONDS // 60} minutes: check that a worker imports the module defining it "
            f"(--app) and serves its queue `{task.queue}` (--queue). Workers only claim the task names they have registered."
        )
    if task.error and task.error.startswith("WorkerLost"):
        reasons.append("Its previous attempt's worker died (lock expired); it was rescued and will run again.")
    if not reasons:
        reasons.append("It is due and first in line: a worker should claim it within one poll interval.")
    return reasons


def _held_back(monitor: Monitor, task: Task, now: datetime) -> list[str]:
    """What holds a due task back in its queue: a pause, the queue's limit, its task's limits."""
    held: list[str] = []
    queue = queues.queue_state_on(monitor.db, task.queue)
    if queue["paused"]:
        held.append(f"Its queue `{task.queue}` is paused: no worker claims its tasks until it is resumed (Queues page).")
    limit = queue["concurrency_limit"]
    if limit is not None and queue["running"] >= limit:
        held.append(f"Its queue `{task.queue}` is at its concurrency limit ({queue['running']} running, at most {limit}).")
    for own in queues.task_limits_on(monitor.db, task.name):
        if own.concurrency_limit is not None and own.running >= own.concurrency_limit:
            held.append(f"{task.name} is at its concurrency limit ({own.running} running, at most {own.concurrency_limit}).")
        if own.rate_limit and own.next_start and own.next_start > now:
            wait = (own.next_start - now).total_seconds()
            held.append(f"{task.name} is rate-limited ({own.rate_limit}): next start in {wait:.1f} s.")
    return held


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"

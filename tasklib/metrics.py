"""``/metrics`` in Prometheus' text exposition format, from the monitor's read models."""

from __future__ import annotations

from collections import Counter

from tasklib.monitor import Monitor
from tasklib.queues import queue_settings_on


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(monitor: Monitor) -> str:
    monitor.recent.refresh(monitor.db)
    lines = [
        "# HELP tasklib_tasks Tasks by state and name: pending, waiting and running now; completed, failed and"
        " cancelled finished within the last 24 h (tasklib_finished_window_seconds: how much of it is loaded).",
        "# TYPE tasklib_tasks gauge",
    ]
    active = monitor.active()
    by_name: Counter[tuple[str, str]] = Counter()
    by_queue: Counter[tuple[str, str]] = Counter()
    for name, queue, state, count in active:
        by_name[name, state] += count
        by_queue[queue, state] += count
    for (name, state), count in sorted(by_name.items()):
        lines.append(f'tasklib_tasks{{state="{state}",name="{_label(name)}"}} {count}')
    for totals in monitor.recent.by_name():
        for outcome in ("completed", "failed", "cancelled"):
            lines.append(f'tasklib_tasks{{state="{outcome}",name="{_label(totals.name)}"}} {getattr(totals, outcome)}')
    now = monitor.recent.read_at or monitor.now()  # the refresh above just read the database's clock
    oldest = monitor.oldest_due_pending()
    age = (now - oldest).total_seconds() if oldest else 0.0
    workers = monitor.workers()
    lines += [
        "# HELP tasklib_finished_window_seconds How much of the last 24 h the finished counts of tasklib_tasks cover.",
        "# TYPE tasklib_finished_window_seconds gauge",
        f"tasklib_finished_window_seconds {monitor.recent.covers.total_seconds():.0f}",
        "# HELP tasklib_oldest_pending_age_seconds Age of the longest-waiting due pending task.",
        "# TYPE tasklib_oldest_pending_age_seconds gauge",
        f"tasklib_oldest_pending_age_seconds {max(age, 0.0):.3f}",
        "# HELP tasklib_running_tasks Tasks currently running.",
        "# TYPE tasklib_running_tasks gauge",
        f"tasklib_running_tasks {sum(w.running for w in workers)}",
        "# HELP tasklib_expired_locks Running tasks whose lock expired (dead workers awaiting rescue).",
        "# TYPE tasklib_expired_locks gauge",
        f"tasklib_expired_locks {monitor.expired_locks()}",
        "# HELP tasklib_workers_connected Worker processes connected to the database.",
        "# TYPE tasklib_workers_connected gauge",
        f"tasklib_workers_connected {sum(1 for w in workers if w.live)}",
    ]
    queues = queue_settings_on(monitor.db)  # (settings rows only: the counts come from the rows above)
    lines += [
        "# HELP tasklib_queue_tasks Tasks pending, waiting and running now, by queue.",
        "# TYPE tasklib_queue_tasks gauge",
    ]
    for (queue, state), count in sorted(by_queue.items()):
        lines.append(f'tasklib_queue_tasks{{queue="{_label(queue)}",state="{state}"}} {count}')
    lines += ["# HELP tasklib_queue_paused 1 while a queue is paused.", "# TYPE tasklib_queue_paused gauge"]
    lines += [f'tasklib_queue_paused{{queue="{_label(q)}"}} {int(s.get("paused") or 0)}' for q, s in queues.items()]
    lines += [
        "# HELP tasklib_queue_concurrency_limit The most tasks of a queue that may run at once (queues with a limit).",
        "# TYPE tasklib_queue_concurrency_limit gauge",
    ]
    lines += [
        f'tasklib_queue_concurrency_limit{{queue="{_label(q)}"}} {s["concurrency_limit"]}'
        for q, s in queues.items()
        if s.get("concurrency_limit") is not None
    ]
    schedules = monitor.schedules()
    lines += [
        "# HELP tasklib_schedule_delay_seconds How long after its slot the last run of each recurring task started.",
        "# TYPE tasklib_schedule_delay_seconds gauge",
    ]
    for schedule in schedules:
        if schedule.last_delay_seconds is not None:
            lines.append(
                f'tasklib_schedule_delay_seconds{{name="{_label(schedule.name)}"}} {schedule.last_delay_seconds:.3f}'
            )
    lines += [
        "# HELP tasklib_schedule_next_run_timestamp_seconds When the next slot of each recurring task is due (Unix time).",
        "# TYPE tasklib_schedule_next_run_timestamp_seconds gauge",
    ]
    for schedule in schedules:
        if schedule.next_at is not None:
            due = schedule.next_at.timestamp()
            lines.append(f'tasklib_schedule_next_run_timestamp_seconds{{name="{_label(schedule.name)}"}} {due:.0f}')
    return "\n".join(lines) + "\n"

"""Read models for the dashboard and /metrics, over the library's SQL. Built for million-row tables."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklib import sql
from tasklib.api import database, row_to_task
from tasklib.db import Database
from tasklib.errors import DatabaseError, ValidationError
from tasklib.models import Task
from tasklib.states import TaskState

COUNT_CAP = 10_000
BULK_CAP = 50_000
STATS_WINDOW_SECONDS = 24 * 3600
RECENT_START_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True)
class TaskFilter:
    """The dashboard's list filters (all optional; combined with AND)."""

    state: TaskState | None = None
    name: str | None = None
    tag: tuple[str, str] | None = None
    text: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    finished_from: datetime | None = None
    finished_to: datetime | None = None

    def clause(self, **extra: Any) -> tuple[str, dict[str, object]]:
        return sql.filter_clause(
            state=self.state.value if self.state else None,
            name=self.name,
            tag=self.tag,
            text=self.text,
            created_from=self.created_from,
            created_to=self.created_to,
            finished_from=self.finished_from,
            finished_to=self.finished_to,
            **extra,
        )


@dataclass(frozen=True)
class StateCount:
    state: TaskState
    count: int
    exact: bool  # False: capped ("10,000+") or estimated ("≈")


@dataclass(frozen=True)
class NameStats:
    name: str
    completed: int = 0
    failed: int = 0
    avg_seconds: float | None = None
    pending: int = 0
    running: int = 0

    @property
    def failure_rate(self) -> float | None:
        total = self.completed + self.failed
        return self.failed / total if total else None


@dataclass(frozen=True)
class Overview:
    counts: list[StateCount]
    by_name: list[NameStats]
    recent_failures: list[Task]
    oldest_due_pending: datetime | None
    chart: list[tuple[datetime, int, int]]  # (minute, completed, failed) for the last 60 minutes
    now: datetime


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    previous: str | None  # cursor for the page before this one (in display order), if any
    next: str | None


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    connected_since: datetime | None
    running: int = 0
    lock_min: datetime | None = None
    lock_max: datetime | None = None
    oldest_start: datetime | None = None

    @property
    def live(self) -> bool:
        return self.connected_since is not None


def encode_cursor(task: Task) -> str:
    raw = f"{task.created_at.isoformat() if task.created_at else ''}|{task.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, ident = raw.split("|", 1)
        return datetime.fromisoformat(at), uuid.UUID(ident)
    except (ValueError, UnicodeDecodeError):
        raise ValidationError("invalid page cursor") from None


class Monitor:
    """Dashboard queries against one database (with its own pool, so it can set statement_timeout)."""

    def __init__(self, db: Database | None = None) -> None:
        self._db = db

    @property
    def db(self) -> Database:
        return self._db or database()

    def _rows(self, query: str, params: dict[str, Any] | None = None, *, as_dict: bool = False) -> list[Any]:
        try:
            with self.db.pool().connection() as conn:
                cur = conn.cursor(row_factory=dict_row) if as_dict else conn.cursor()
                with cur:
                    cur.execute(query, params or {})  # type: ignore[arg-type]
                    return cur.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise DatabaseError("the query took too long and was cancelled (statement_timeout)") from exc
        except psycopg.Error as exc:
            raise DatabaseError(f"PostgreSQL refused the query: {exc}") from exc

    def change_token(self) -> str:
        return str(self._rows(sql.CHANGE_TOKEN)[0][0])

    def healthy(self) -> bool:
        try:
            return self._rows(sql.HEALTH)[0][0] == 1
        except DatabaseError:
            return False

    def state_counts(self) -> list[StateCount]:
        counts: dict[TaskState, StateCount] = {}
        for state in TaskState:
            n = self._rows(sql.COUNT_STATE_CAPPED, {"state": state.value, "cap": COUNT_CAP + 1})[0][0]
            counts[state] = StateCount(state, min(n, COUNT_CAP), n <= COUNT_CAP)
        capped = [s for s, c in counts.items() if not c.exact]
        if len(capped) == 1:  # typically "completed": total estimate minus the exactly-counted rest
            total = self._rows(sql.ESTIMATE_ROWS)[0][0]
            rest = sum(c.count for s, c in counts.items() if s != capped[0])
            counts[capped[0]] = StateCount(capped[0], max(total - rest, COUNT_CAP), False)
        return [counts[s] for s in TaskState]

    def overview(self) -> Overview:
        by_name: dict[str, dict[str, Any]] = {}
        for row in self._rows(sql.STATS_BY_NAME, {"window": STATS_WINDOW_SECONDS}, as_dict=True):
            by_name[row["name"]] = dict(row)
        for name, state, count in self._rows(sql.ACTIVE_BY_NAME, {"cap": COUNT_CAP}):
            by_name.setdefault(name, {"name": name})[state] = count
        stats = sorted(
            (NameStats(**{k: v for k, v in row.items() if v is not None}) for row in by_name.values()),
            key=lambda s: -(s.completed + s.failed + s.pending + s.running),
        )
        now = datetime.now(UTC)
        per_minute = {m: (c, f) for m, c, f in self._rows(sql.THROUGHPUT_PER_MINUTE)}
        start = now.replace(second=0, microsecond=0) - timedelta(minutes=59)
        chart = []
        for i in range(60):
            minute = start + timedelta(minutes=i)
            completed, failed = per_minute.get(minute, (0, 0))
            chart.append((minute, completed, failed))
        return Overview(
            counts=self.state_counts(),
            by_name=stats,
            recent_failures=[row_to_task(r) for r in self._rows(sql.RECENT_FAILURES, {"limit": 8}, as_dict=True)],
            oldest_due_pending=self._rows(sql.OLDEST_DUE_PENDING)[0][0],
            chart=chart,
            now=now,
        )

    def page(
        self,
        flt: TaskFilter,
        *,
        limit: int = 50,
        after: str | None = None,
        before: str | None = None,
        oldest_first: bool = False,
    ) -> Page:
        """One keyset page in created order (newest first unless ``oldest_first``).

        ``after``/``before`` are cursors from a previous page's ``next``/``previous``: no OFFSET, so
        every page costs the same however deep it is.
        """
        if after and before:
            raise ValidationError("use either after= or before=, not both")
        cursor = decode_cursor(after or before) if (after or before) else None  # type: ignore[arg-type]
        forward = before is None
        descending = (not oldest_first) if forward else oldest_first
        where, params = flt.clause(cursor=cursor, cursor_op="<" if descending else ">")
        params["limit"] = limit + 1
        query = (sql.PAGE_NEWEST if descending else sql.PAGE_OLDEST).format(where=where)
        rows = [row_to_task(r) for r in self._rows(query, params, as_dict=True)]
        more = len(rows) > limit
        rows = rows[:limit]
        if not forward:
            rows.reverse()
        has_next = more if forward else True
        has_previous = (cursor is not None) if forward else more
        return Page(
            tasks=rows,
            previous=encode_cursor(rows[0]) if rows and has_previous else None,
            next=encode_cursor(rows[-1]) if rows and has_next else None,
        )

    def count_matching(self, flt: TaskFilter, states: tuple[str, ...]) -> int:
        where, params = flt.clause(states=states)
        params["cap"] = BULK_CAP
        return int(self._rows(sql.COUNT_MATCHING.format(where=where), params)[0][0])

    def retry_matching(self, flt: TaskFilter) -> int:
        """failed/cancelled -> pending for up to BULK_CAP tasks matching the filter."""
        where, params = flt.clause(states=("failed", "cancelled"))
        params["cap"] = BULK_CAP
        return int(self._rows(sql.RETRY_MATCHING.format(where=where), params)[0][0])

    def cancel_matching(self, flt: TaskFilter) -> int:
        """pending -> cancelled for up to BULK_CAP tasks matching the filter."""
        where, params = flt.clause(states=("pending",))
        params["cap"] = BULK_CAP
        try:
            with self.db.pool().connection() as conn:
                return conn.execute(sql.CANCEL_MATCHING.format(where=where), params).rowcount  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise DatabaseError(f"PostgreSQL refused the query: {exc}") from exc

    def workers(self) -> list[WorkerInfo]:
        live = {w: since for w, since, _ in self._rows(sql.LIVE_WORKERS)}
        running = {r[0]: r for r in self._rows(sql.RUNNING_BY_WORKER)}
        result = []
        for worker_id in sorted(set(live) | set(running)):
            r = running.get(worker_id)
            result.append(
                WorkerInfo(
                    worker_id,
                    live.get(worker_id),
                    r[1] if r else 0,
                    r[2] if r else None,
                    r[3] if r else None,
                    r[4] if r else None,
                )
            )
        return result

    def explain(self, task: Task) -> list[str]:
        """Plain-language reasons a pending (or stuck running) task is not running now."""
        now = datetime.now(UTC)
        reasons: list[str] = []
        if task.state == TaskState.RUNNING:
            if task.locked_until and task.locked_until < now:
                reasons.append(
                    f"Its worker ({task.worker_id}) stopped renewing its lock, which expired at "
                    f"{task.locked_until:%Y-%m-%d %H:%M:%S} UTC. Any live worker will rescue it within about a second."
                )
            return reasons
        if task.state != TaskState.PENDING:
            return reasons
        if task.scheduled_at and task.scheduled_at > now:
            wait = task.scheduled_at - now
            why = "a retry after a failure" if task.next_retry_at else "a delayed submit"
            reasons.append(f"It is scheduled in the future ({why}): due in {_human(wait)}.")
        else:
            ahead = self._rows(
                sql.AHEAD_OF,
                {"id": task.id, "priority": task.priority, "scheduled_at": task.scheduled_at, "cap": COUNT_CAP},
            )[0][0]
            if ahead:
                more = "+" if ahead >= COUNT_CAP else ""
                reasons.append(f"It is waiting behind {ahead:,}{more} due task(s) of higher priority or earlier schedule.")
        live = self._rows(sql.LIVE_WORKERS)
        due = not (task.scheduled_at and task.scheduled_at > now)
        if not live:
            reasons.append("No worker is connected to this database. Start one: tasklib worker --app your.tasks")
        elif (
            due
            and not self._rows(sql.NAME_RECENTLY_STARTED, {"name": task.name, "window": RECENT_START_WINDOW_SECONDS})[0][0]
        ):
            # Only for a task that is due: a delayed one is explained by its schedule alone.
            workers = "1 worker is" if len(live) == 1 else f"{len(live)} workers are"
            reasons.append(
                f"{workers} connected, but none has started a {task.name} task in the last "
                f"{RECENT_START_WINDOW_SECONDS // 60} minutes: check that a worker imports the module defining it "
                "(--app). Workers only claim the task names they have registered."
            )
        if task.error and task.error.startswith("WorkerLost"):
            reasons.append("Its previous attempt's worker died (lock expired); it was rescued and will run again.")
        if not reasons:
            reasons.append("It is due and first in line: a worker should claim it within one poll interval.")
        return reasons

    def metrics(self) -> str:
        """Prometheus text exposition format."""
        lines = [
            "# HELP tasklib_tasks Tasks by state and name (completed: finished within the last 24 h).",
            "# TYPE tasklib_tasks gauge",
        ]
        for name, state, count in self._rows(sql.METRICS_ACTIVE):
            lines.append(f'tasklib_tasks{{state="{state}",name="{_label(name)}"}} {count}')
        for name, count in self._rows(sql.METRICS_COMPLETED_WINDOW, {"window": STATS_WINDOW_SECONDS}):
            lines.append(f'tasklib_tasks{{state="completed",name="{_label(name)}"}} {count}')
        oldest = self._rows(sql.OLDEST_DUE_PENDING)[0][0]
        age = (datetime.now(UTC) - oldest).total_seconds() if oldest else 0.0
        workers = self.workers()
        running = sum(w.running for w in workers)
        lines += [
            "# HELP tasklib_oldest_pending_age_seconds Age of the longest-waiting due pending task.",
            "# TYPE tasklib_oldest_pending_age_seconds gauge",
            f"tasklib_oldest_pending_age_seconds {max(age, 0.0):.3f}",
            "# HELP tasklib_running_tasks Tasks currently running.",
            "# TYPE tasklib_running_tasks gauge",
            f"tasklib_running_tasks {running}",
            "# HELP tasklib_expired_locks Running tasks whose lock expired (dead workers awaiting rescue).",
            "# TYPE tasklib_expired_locks gauge",
            f"tasklib_expired_locks {self._rows(sql.EXPIRED_LOCKS)[0][0]}",
            "# HELP tasklib_workers_connected Worker processes connected to the database.",
            "# TYPE tasklib_workers_connected gauge",
            f"tasklib_workers_connected {sum(1 for w in workers if w.live)}",
        ]
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    if seconds < 86400:
        return f"{seconds // 3600}h {seconds % 3600 // 60}m"
    return f"{seconds // 86400}d {seconds % 86400 // 3600}h"

"""Read models for the dashboard and /metrics, over the library's SQL. Built for million-row tables:
counts are capped or estimated, lists are keyset pages, the last day's outcomes are incremental."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tasklib import actions, listing, sql
from tasklib.actions import row_to_task
from tasklib.config import FINISHED
from tasklib.db import TAG_INDEX_PLANNER_SETTINGS, TAG_WALK_PLANNER_SETTINGS, Database
from tasklib.errors import DatabaseError, ValidationError
from tasklib.filters import TaskFilter
from tasklib.models import Task
from tasklib.recent import RecentOutcomes
from tasklib.schedules import describe, slot_time
from tasklib.states import TaskState

COUNT_CAP = 10_000
RECENT_START_WINDOW_SECONDS = 15 * 60


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
    #: None when the per-name figures cover the whole last 24 h; while they load after a start, how
    #: many hours they cover so far.
    stats_cover_hours: float | None
    retention: RetentionInfo | None
    now: datetime = field(compare=False, repr=False)


@dataclass(frozen=True)
class Page:
    tasks: list[Task]
    previous: str | None  # cursor for the page before this one (in display order), if any
    next: str | None


@dataclass(frozen=True)
class WorkerInfo:
    """A worker as its presence row and its running claims show it (either may be missing: a
    worker of a version without presence still has claims; a registered one may run nothing)."""

    worker_id: str
    live: bool = False  # it refreshed its presence within liveness.VANISHED_AFTER_SECONDS
    started_at: datetime | None = None
    seen_at: datetime | None = None
    host: str | None = None
    pid: int | None = None
    version: str | None = None
    concurrency: int | None = None
    async_concurrency: int | None = None
    queues: tuple[str, ...] = ()
    pool_mode: str | None = None
    running: int = 0
    next_lock_expiry: datetime | None = None
    oldest_start: datetime | None = None


@dataclass(frozen=True)
class ScheduleInfo:
    """A recurring task as its slot rows show it (the dashboard need not import the application)."""

    name: str
    written: str
    timezone: str | None
    words: str
    next_id: uuid.UUID | None
    next_at: datetime | None  # None: no worker that has this task registered is scheduling it
    last_id: uuid.UUID | None
    last_slot: datetime | None
    last_state: str | None
    last_started_at: datetime | None
    last_completed_at: datetime | None

    @property
    def active(self) -> bool:
        return self.next_at is not None

    @property
    def last_delay_seconds(self) -> float | None:
        """How long after its slot the last run started (what /metrics reports)."""
        if self.last_slot is None or self.last_started_at is None:
            return None
        return (self.last_started_at - self.last_slot).total_seconds()


@dataclass(frozen=True)
class RetentionInfo:
    """The newest automatic retention round: the policy in force and what it removed."""

    policy: dict[str, float]  # state -> seconds kept
    removed: int
    at: datetime
    worker_id: str | None


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


def merge_tag_walks(rows: list[dict[str, Any]], limit: int, descending: bool) -> list[dict[str, Any]] | None:
    """The page of ``limit`` tagged rows from ``listing.tag_walk_query``'s bounded walks, or None when
    the walks cannot tell it (the tag index's query must then answer).

    A walk that reached its last row unfinished has read every row up to that one and none beyond.
    The merged page is complete when it is full and ends at or before every such last row: a tagged
    row the walk did not reach comes after it, so after the page. A walk that returned ``limit``
    tagged rows needs no such check: the page, the first ``limit`` of all, ends at or before its last.
    """

    def key(row: dict[str, Any]) -> tuple[Any, Any]:
        return row["created_at"], row["id"]

    page = sorted((r for r in rows if r["walk_matched"]), key=key, reverse=descending)[:limit]
    ends = [key(r) for r in rows if r["walk_row"] == listing.TAG_WALK_ROWS]
    if ends and (len(page) < limit or any((key(page[-1]) < end) if descending else (key(page[-1]) > end) for end in ends)):
        return None
    for row in page:
        del row["walk_row"], row["walk_matched"]
    return page


class Monitor:
    """Read models over one database (the dashboard passes its own, with a statement timeout)."""

    #: Tabs polling the overview within this many seconds of each other share one computation.
    OVERVIEW_SHARE_SECONDS = 0.5

    def __init__(self, db: Database) -> None:
        self.db = db
        self.recent = RecentOutcomes()
        self._overview_lock = threading.Lock()
        self._overview: tuple[float, Overview] | None = None

    def _value(self, query: str, params: dict[str, Any] | None = None) -> Any:
        return self.db.value(query, params)

    def now(self) -> datetime:
        return self._value(sql.NOW)  # type: ignore[no-any-return]

    def healthy(self) -> bool:
        try:
            return self._value(sql.HEALTH) == 1
        except DatabaseError:
            return False

    def state_counts(self) -> list[StateCount]:
        counts: dict[TaskState, StateCount] = {}
        for state in TaskState:
            n = self._value(sql.COUNT_STATE_CAPPED, {"state": state.value, "cap": COUNT_CAP + 1})
            counts[state] = StateCount(state, min(n, COUNT_CAP), n <= COUNT_CAP)
        capped = [s for s, c in counts.items() if not c.exact]
        if len(capped) == 1:  # typically "completed": total estimate minus the exactly-counted rest
            total = self._value(sql.ESTIMATE_ROWS)
            rest = sum(c.count for s, c in counts.items() if s != capped[0])
            counts[capped[0]] = StateCount(capped[0], max(total - rest, COUNT_CAP), False)
        return [counts[s] for s in TaskState]

    def overview(self) -> Overview:
        """The overview, computed at most once per OVERVIEW_SHARE_SECONDS however many tabs poll it
        (requests that arrive while it is being computed wait for that result)."""
        with self._overview_lock:
            if self._overview is not None and time.monotonic() - self._overview[0] < self.OVERVIEW_SHARE_SECONDS:
                return self._overview[1]
            started = time.monotonic()
            overview = self._compute_overview()
            self._overview = (started, overview)
            return overview

    def _compute_overview(self) -> Overview:
        self.recent.refresh(self.db)
        by_name: dict[str, dict[str, Any]] = {
            t.name: {"name": t.name, "completed": t.completed, "failed": t.failed, "avg_seconds": t.avg_seconds}
            for t in self.recent.by_name()
        }
        for name, state, count in self.db.rows(sql.ACTIVE_BY_NAME, {"cap": COUNT_CAP}, as_dict=False):
            by_name.setdefault(name, {"name": name})[state] = count
        stats = sorted(
            (NameStats(**{k: v for k, v in row.items() if v is not None}) for row in by_name.values()),
            key=lambda s: (-(s.completed + s.failed + s.pending + s.running), s.name),
        )[:50]
        return Overview(
            counts=self.state_counts(),
            by_name=stats,
            recent_failures=[row_to_task(r) for r in self.db.rows(sql.RECENT_FAILURES, {"limit": 8})],
            oldest_due_pending=self.oldest_due_pending(),
            chart=self.recent.per_minute(60),
            stats_cover_hours=None if self.recent.complete else round(self.recent.covers.total_seconds() / 3600, 1),
            retention=self.retention(),
            now=self.recent.read_at or self.now(),
        )

    def retention(self) -> RetentionInfo | None:
        rows = self.db.rows(sql.LAST_RETENTION_RECORD)
        if not rows:
            return None
        record = rows[0]["value"]
        written = record.get("policy") or {}
        policy = {state: written[state] for state in FINISHED if state in written}  # jsonb reorders keys
        return RetentionInfo(policy, int(record.get("total") or 0), rows[0]["completed_at"], record.get("worker_id"))

    def schedules(self) -> list[ScheduleInfo]:
        result = []
        for row in self.db.rows(sql.SCHEDULES, {}):
            tags = row["tags"] if isinstance(row["tags"], dict) else {}
            written = str(tags.get("schedule", "?"))
            timezone = tags.get("timezone")
            result.append(
                ScheduleInfo(
                    name=row["name"],
                    written=written,
                    timezone=timezone,
                    words=describe(written, timezone),
                    next_id=row["next_id"],
                    next_at=row["next_at"],
                    last_id=row["last_id"],
                    last_slot=slot_time(row["last_key"]) if row["last_key"] else None,
                    last_state=row["last_state"],
                    last_started_at=row["last_started_at"],
                    last_completed_at=row["last_completed_at"],
                )
            )
        return result

    def task(self, task_id: uuid.UUID | str) -> Task | None:
        return actions.get(self.db, task_id)

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
        rows = [row_to_task(r) for r in self._page_rows(flt.filters(), descending, cursor, limit + 1)]
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

    def _page_rows(
        self, filters: dict[str, Any], descending: bool, cursor: tuple[object, object] | None, limit: int
    ) -> list[dict[str, Any]]:
        settings = None
        if filters.get("tag") is not None:
            query, params = listing.tag_walk_query(descending=descending, cursor=cursor, **filters)
            walks = self.db.rows(query, {**params, "limit": limit}, settings=TAG_WALK_PLANNER_SETTINGS)
            merged = merge_tag_walks(walks, limit, descending)
            if merged is not None:
                return merged
            settings = TAG_INDEX_PLANNER_SETTINGS  # the walks could not tell: the tag index answers
        query, params = listing.page_query(descending=descending, cursor=cursor, **filters)
        return self.db.rows(query, {**params, "limit": limit}, settings=settings)

    def _presence(self) -> list[dict[str, Any]]:
        return self.db.rows(sql.WORKERS, {"after": sql.VANISHED_AFTER_SECONDS})

    def live_workers(self) -> dict[str, datetime]:
        """Worker id -> when it started, for the workers whose presence is fresh."""
        return {r["worker_id"]: r["started_at"] for r in self._presence() if r["alive"]}

    def workers(self) -> list[WorkerInfo]:
        """Every registered worker and every worker holding claims, by id."""
        present = {r["worker_id"]: r for r in self._presence()}
        running = {r["worker_id"]: r for r in self.db.rows(sql.RUNNING_BY_WORKER)}
        result = []
        for worker_id in sorted(set(present) | set(running)):
            p, r = present.get(worker_id, {}), running.get(worker_id, {})
            result.append(
                WorkerInfo(
                    worker_id,
                    live=bool(p.get("alive")),
                    started_at=p.get("started_at"),
                    seen_at=p.get("seen_at"),
                    host=p.get("host"),
                    pid=p.get("pid"),
                    version=p.get("version"),
                    concurrency=p.get("concurrency"),
                    async_concurrency=p.get("async_concurrency"),
                    queues=tuple(p.get("queues") or ()),
                    pool_mode=p.get("pool_mode"),
                    running=r.get("running", 0),
                    next_lock_expiry=r.get("next_lock_expiry"),
                    oldest_start=r.get("oldest_start"),
                )
            )
        return result

    def ahead_of(self, task: Task) -> int:
        """Due pending tasks a worker would claim before this one (capped at COUNT_CAP)."""
        params = {"id": task.id, "priority": task.priority, "scheduled_at": task.scheduled_at, "cap": COUNT_CAP}
        params["queue"] = task.queue
        return int(self._value(sql.AHEAD_OF, params))

    def name_recently_started(self, name: str) -> bool:
        return bool(self._value(sql.NAME_RECENTLY_STARTED, {"name": name, "window": RECENT_START_WINDOW_SECONDS}))

    def active(self) -> list[tuple[str, str, str, int]]:
        """(name, queue, state, count) of the pending, waiting and running tasks."""
        return [tuple(r) for r in self.db.rows(sql.METRICS_ACTIVE, as_dict=False)]

    def oldest_due_pending(self) -> datetime | None:
        return self._value(sql.OLDEST_DUE_PENDING)  # type: ignore[no-any-return]

    def expired_locks(self) -> int:
        return int(self._value(sql.EXPIRED_LOCKS))

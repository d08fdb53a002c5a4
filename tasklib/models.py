"""The one table. This SQLModel class is the single source of the schema (DDL is generated from it)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, CheckConstraint, Column, DateTime, Index, Integer, String, Text, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlmodel import Field, SQLModel

from tasklib.ids import new_id
from tasklib.sql import UNIQUE_KEY_HELD
from tasklib.states import PRIORITY_MAX, PRIORITY_MIN, SLOT_KEY_PREFIX, STORED_STATES, TaskState

_STATES_SQL = ", ".join(f"'{s}'" for s in STORED_STATES)


def _ts(nullable: bool = True, default_now: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(
            DateTime(timezone=True),
            nullable=nullable,
            server_default=text("now()") if default_now else None,
        ),
    )


class Task(SQLModel, table=True):
    """One task: its call, its state, its outcome and its lock. Instances are what ``get_task`` returns."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(f"state IN ({_STATES_SQL})", name="tasks_state_valid"),
        CheckConstraint(f"priority BETWEEN {PRIORITY_MIN} AND {PRIORITY_MAX}", name="tasks_priority_range"),
        CheckConstraint("retry_count >= 0 AND max_retries >= 0", name="tasks_retries_nonnegative"),
        CheckConstraint("timeout_seconds IS NULL OR timeout_seconds > 0", name="tasks_timeout_positive"),
        CheckConstraint(
            "state <> 'running' OR (worker_id IS NOT NULL AND locked_until IS NOT NULL)",
            name="tasks_running_is_locked",
        ),
        # The claim: a queue's next due pending task by priority, then due time, then id (FIFO within
        # a priority, with a total order so the claim never needs a sort). Led by the queue, so a
        # worker never walks another queue's backlog (schema 10). Partial, so it stays small.
        Index(
            "tasks_queue_pending_idx",
            "queue",
            text("priority DESC"),
            "scheduled_at",
            "id",
            postgresql_where=text("state = 'pending'"),
        ),
        # Rescue: running tasks by lock expiry. Only running tasks hold a lock (see the CHECK above and
        # every transition in sql.py), so the predicate is on locked_until, not on state: statements
        # that filter on state = 'running' (finishing a batch by id) then cannot pick this index
        # over the primary key when statistics are stale.
        Index("tasks_locked_idx", "locked_until", postgresql_where=text("locked_until IS NOT NULL")),
        # Listing: newest first within one state (dashboard and list_tasks). A list across states
        # merges one short walk per state (listing.page_query). No index on created order alone: it
        # would cost three entries per task (docs/design/plans.md).
        Index("tasks_state_created_idx", "state", text("created_at DESC"), text("id DESC")),
        # By name, then state: "failed tasks of send_email" is one range even when there are none
        # (with separate name and state indexes the planner walked every failed row hoping to meet
        # one); a name alone reads each state's range newest first and merges them (listing.page_query).
        Index("tasks_name_state_created_idx", "name", "state", text("created_at DESC"), text("id DESC")),
        # Throughput charts and "recently finished": by completion time.
        Index("tasks_completed_idx", "completed_at", postgresql_where=text("completed_at IS NOT NULL")),
        # Unique tasks (schema 5): at most one row holds a key (see UNIQUE_KEY_HELD). Submits insert
        # with ON CONFLICT DO NOTHING, so the database, not a read-then-write, decides the race.
        Index("tasks_unique_key_idx", "unique_key", unique=True, postgresql_where=text(UNIQUE_KEY_HELD)),
        # Recurring-task slots by task and due time: the Schedules page reads the newest few per task.
        Index(
            "tasks_slot_idx",
            "name",
            text("scheduled_at DESC"),
            postgresql_where=text(f"unique_key LIKE '{SLOT_KEY_PREFIX}%'"),
        ),
        # Workflows (schema 8): a task's children, by the parents they name. Partial: a task without
        # parents (most) never touches it. No pending list (schema 9): every parent's end looks its
        # children up here, and each lookup would read the whole list (docs/workflows.md).
        Index(
            "tasks_parents_idx",
            "parent_ids",
            postgresql_using="gin",
            postgresql_with={"fastupdate": "off"},
            postgresql_where=text("parent_ids IS NOT NULL"),
        ),
        # Tag filters (tags @> '{"batch": "x"}'). Partial: untagged rows (most) never touch it, so the
        # two updates every task goes through do not feed a GIN pending list that some unlucky
        # statement must then flush.
        Index(
            "tasks_tagged_idx",
            "tags",
            postgresql_using="gin",
            postgresql_ops={"tags": "jsonb_path_ops"},
            postgresql_where=text("tags IS NOT NULL"),
        ),
    )

    id: uuid.UUID = Field(default_factory=new_id, sa_column=Column(UUID(as_uuid=True), primary_key=True))
    name: str = Field(sa_column=Column(String, nullable=False))
    args: list[Any] = Field(default_factory=list, sa_column=Column(JSONB, nullable=False, server_default="[]"))
    kwargs: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSONB, nullable=False, server_default="{}"))
    state: TaskState = Field(default=TaskState.PENDING, sa_column=Column(String, nullable=False, server_default="pending"))
    result: Any = Field(default=None, sa_column=Column(JSONB, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    retry_count: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    max_retries: int = Field(default=3, sa_column=Column(Integer, nullable=False, server_default="3"))
    scheduled_at: datetime | None = _ts(nullable=False, default_now=True)
    started_at: datetime | None = _ts()
    completed_at: datetime | None = _ts()
    created_at: datetime | None = _ts(nullable=False, default_now=True)
    next_retry_at: datetime | None = _ts()
    worker_id: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    locked_until: datetime | None = _ts()
    timeout_seconds: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    priority: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    tags: dict[str, Any] | None = Field(default=None, sa_column=Column(JSONB, nullable=True))
    #: Set by ``submit_task(..., unique_key=...)`` and by recurring-task slots; NULL for most tasks.
    unique_key: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    #: Workflows: the tasks this one waits for (``depends_on``), how many of them have still to end
    #: while it is ``waiting``, and ``'run'`` when a parent's failure should not cancel it. NULL for
    #: tasks without parents (docs/workflows.md).
    parent_ids: list[uuid.UUID] | None = Field(default=None, sa_column=Column(ARRAY(UUID(as_uuid=True)), nullable=True))
    waiting_for: int | None = Field(default=None, sa_column=Column(Integer, nullable=True))
    on_parent_failure: str | None = Field(default=None, sa_column=Column(String, nullable=True))
    #: Set on a task when another is submitted with it in ``depends_on``: its end then settles them.
    has_children: bool | None = Field(default=None, sa_column=Column(Boolean, nullable=True))
    #: The queue it runs in (``@task(queue=...)`` or ``submit_task(..., queue=...)``): workers serve
    #: named queues. A queue's settings (paused, its limit) are a row of its own (docs/queues.md).
    queue: str = Field(default="default", sa_column=Column(String, nullable=False, server_default="default"))

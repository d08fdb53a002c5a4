"""What the worker's parts talk to, in memory: a tasks table that answers claim statements, a pool
that records what it was sent, a clock the test moves. The parts under test are always the real ones."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import tasklib
from tasklib import sql
from tasklib.outcome import Action
from tasklib.worker.children import Child, ChildPool
from tasklib.worker.claim import ClaimPlanner, ClaimQuery, ClaimReply
from tasklib.worker.jobs import Job
from tasklib.worker.messages import ToChild
from tasklib.worker.writer import OutcomeWriter

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CONFIG = tasklib.Config(database_url="postgresql://u@h/db")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(priority: int = 0, at: float = 0, timeout: int | None = None) -> Job:
    return Job(uuid.uuid4(), "n", "{}", 0, 3, timeout, priority, T0 + timedelta(seconds=at), T0)


def recording_kills(child: Child) -> Child:
    """The child's kill records its reason instead of signalling a process."""
    child.kill = lambda reason: setattr(child, "kill_reason", reason)  # type: ignore[method-assign]
    return child


class FakePool(ChildPool):
    """A pool of ready children with no processes behind them: ``sent`` lists (child pid, message),
    and a kill only records its reason."""

    def __init__(self, size: int) -> None:
        super().__init__(size, None, None)  # type: ignore[arg-type]
        self.children = [recording_kills(Child(100 + i, -1, -1, ready=True)) for i in range(size)]
        self.sent: list[tuple[int, ToChild]] = []

    def send(self, child: Child, message: ToChild) -> None:
        self.sent.append((child.pid, message))


async def answer_all(statement: str, params: dict[str, Any]) -> list[Any]:
    """A database that changes every row it is asked to."""
    return [(task_id,) for task_id in params.get("ids", [])]


def writer() -> OutcomeWriter:
    return OutcomeWriter(answer_all, "w", CONFIG)


def finished(writer: OutcomeWriter) -> list[tuple[Job, Action]]:
    return list(writer._finishes)


def released(writer: OutcomeWriter) -> list[Job]:
    return list(writer._releases)


class Tasks:
    """Pending rows in memory, claimed as the CLAIM_* statements claim them from the real table."""

    def __init__(self) -> None:
        self.pending: list[tuple[int, datetime, str]] = []
        self.statements: list[ClaimQuery] = []

    def add(self, key: str, at: datetime, priority: int = 0) -> None:
        self.pending.append((priority, at, key))

    def answer(self, query: ClaimQuery, now: datetime) -> list[dict[str, Any]]:
        self.statements.append(query)
        p = query.params
        due = [r for r in self.pending if p["floor"] <= r[1] <= now]
        if query.statement is sql.CLAIM_IN_WINDOW:
            due = [r for r in due if r[1] < p["below"]]
        elif query.statement is sql.CLAIM_AT_PRIORITY:
            due = [r for r in due if r[0] == p["priority"]]
        elif query.statement is sql.CLAIM_OTHER_PRIORITIES:
            due = [r for r in due if any(a < r[0] < b for a, b in zip(p["above"], p["below"], strict=True))]
        else:
            assert query.statement is sql.CLAIM_NEXT
        taken = sorted(due, key=lambda r: (-r[0], r[1], r[2]))[: p["limit"]]
        for row in taken:
            self.pending.remove(row)
        return [row_of(key, priority, at, now) for priority, at, key in taken] or [{"claimed_at": now, "id": None}]


def row_of(name: str, priority: int, at: datetime, now: datetime) -> dict[str, Any]:
    """A claim statement's row for one task."""
    return {
        "claimed_at": now,
        "id": uuid.uuid4(),
        "name": name,
        "kwargs_json": "{}",
        "retry_count": 0,
        "max_retries": 3,
        "timeout_seconds": None,
        "priority": priority,
        "scheduled_at": at,
        "started_at": now,
    }


class Claims:
    """A real ``ClaimPlanner`` whose statements a ``Tasks`` table answers."""

    def __init__(self, sweep_every_seconds: float, margin_seconds: float = 0.1) -> None:
        self.clock = Clock(0.0)
        self.planner = ClaimPlanner(["n"], "w", 60, sweep_every_seconds, self.clock, margin_seconds)
        self.tasks = Tasks()

    @property
    def floor(self):  # type: ignore[no-untyped-def]
        return self.planner.floor

    def add(self, key: str, at: datetime, priority: int = 0) -> None:
        self.tasks.add(key, at, priority)

    def claim(self, now: datetime, clock: float, limit: int, seconds: float = 0.001) -> list[str]:
        """One claim at database time ``now`` and worker clock ``clock``; the names it took."""
        self.clock.now = clock
        plan = self.planner.claim(limit)
        try:
            query = next(plan)
            while True:
                query = plan.send(ClaimReply.from_rows(self.tasks.answer(query, now), seconds))
        except StopIteration as done:
            return [job.name for job in done.value]

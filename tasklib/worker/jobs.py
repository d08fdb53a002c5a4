"""The jobs a worker has claimed and not yet finished: one ``Jobs`` per executor owns them.

A job is held from the claim that returned it until its outcome goes to the writer (or it is
released, or found lost). While held, its lock is renewed (``liveness``); ``queued`` jobs wait here
for a child, the rest are in a child's ``outstanding``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from tasklib.worker.messages import TaskOrder


@dataclass(slots=True, eq=False)
class Job:
    """A claimed task as the worker holds it (the columns it needs, nothing more)."""

    id: UUID
    name: str
    kwargs_json: str
    retry_count: int
    max_retries: int
    timeout_seconds: int | None
    priority: int
    scheduled_at: datetime
    started_at: datetime  # identifies the claim: finishing requires the row to still carry it
    parent_results_json: str | None = None  # a workflow child's parents' results, {id: result}
    queue: str = "default"
    seq: int = 0  # the worker's own number for this job, used on the pipes to its children
    cancelled: bool = False  # cancelled or rescued elsewhere: its outcome is not ours to record
    recalling: bool = False  # its child was asked to give it back (not started yet)
    sent_at: float = 0.0  # monotonic time it was sent to a child
    cancel_sent_at: float | None = None  # when its async child was asked to cancel it
    overdue: bool = False  # past its timeout and the grace after it: its child is being killed

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        """From a claim statement's row (named columns)."""
        return cls(
            id=row["id"],
            name=row["name"],
            kwargs_json=row["kwargs_json"],
            retry_count=row["retry_count"],
            max_retries=row["max_retries"],
            timeout_seconds=row["timeout_seconds"],
            priority=row["priority"],
            scheduled_at=row["scheduled_at"],
            started_at=row["started_at"],
            parent_results_json=row.get("parent_results_json"),
            queue=row.get("queue", "default"),
        )

    def order(self, timeout_seconds: int | None = None) -> TaskOrder:
        """What a child is sent to run this job."""
        return TaskOrder(self.seq, self.name, self.kwargs_json, timeout_seconds, self.parent_results_json)

    @property
    def queue_order(self) -> tuple[int, datetime, UUID]:
        """Priority first, then due time, then id (FIFO within a priority; Python orders UUIDs as
        PostgreSQL does)."""
        return (-self.priority, self.scheduled_at, self.id)


class Jobs:
    """Held jobs by ``seq``, and the queue of those no child has been sent yet."""

    def __init__(self) -> None:
        self._held: dict[int, Job] = {}
        self._queue: deque[Job] = deque()
        self._next_seq = 0

    def __len__(self) -> int:
        return len(self._held)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def hold(self, jobs: Iterable[Job]) -> None:
        """Take freshly claimed jobs; they are queued in queue order."""
        for job in sorted(jobs, key=lambda j: j.queue_order):
            self._next_seq += 1
            job.seq = self._next_seq
            self._held[job.seq] = job
            self._queue.append(job)

    def take(self, count: int) -> list[Job]:
        """Up to ``count`` queued jobs to send to a child; cancelled ones are dropped on the way."""
        taken: list[Job] = []
        while self._queue and len(taken) < count:
            job = self._queue.popleft()
            if job.cancelled:
                self._held.pop(job.seq, None)
            else:
                taken.append(job)
        return taken

    def put_back(self, jobs: list[Job]) -> None:
        """Jobs a child gave back unstarted: first in line again, in their order (cancelled ones dropped)."""
        for job in reversed(jobs):
            job.recalling = False
            if job.cancelled:
                self._held.pop(job.seq, None)
            else:
                self._queue.appendleft(job)

    def done(self, job: Job) -> None:
        """The job's outcome went to the writer, or it was released or dropped."""
        self._held.pop(job.seq, None)

    def drain_queue(self) -> list[Job]:
        """At shutdown: every queued job that is still ours, no longer held (the caller releases them)."""
        queued = [job for job in self._queue if not job.cancelled]
        for job in self._queue:
            self._held.pop(job.seq, None)
        self._queue.clear()
        return queued

    def held_ids(self) -> set[UUID]:
        """Rows whose lock this worker must keep renewing."""
        return {job.id for job in self._held.values() if not job.cancelled}

    def mark_lost(self, ids: set[UUID]) -> list[Job]:
        """Jobs whose row is no longer ours (cancelled, rescued): mark them; returns the newly marked."""
        lost = [job for job in self._held.values() if job.id in ids and not job.cancelled]
        for job in lost:
            job.cancelled = True
        return lost

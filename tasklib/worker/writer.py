"""Outcome → write: decide what each attempt's outcome means, then record outcomes in batches.

Outcomes that arrive within a couple of milliseconds share one ``FINISH_MANY`` statement, each
conditioned on this worker's claim. A failed write keeps its batch for the next try: an outage
delays results but never drops them. The writer is also the worker's brake: at ``MAX_UNWRITTEN``
outcomes it has no room, and the claim loop waits for room before claiming more
(docs/design/outcomes.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from tasklib import sql
from tasklib.config import Config
from tasklib.outcome import Action, Outcome, decide, decide_unstorable
from tasklib.states import TaskState
from tasklib.worker.connections import MAX_BACKOFF_SECONDS, Outage, brief
from tasklib.worker.jobs import Job

log = logging.getLogger("tasklib.worker")

FLUSH_DELAY_SECONDS = 0.002
#: Most outcomes one statement records: a long statement holds its row locks and the connection.
BATCH_LIMIT = 64
#: Outcomes the writer may hold before the worker stops claiming: four statements' worth.
MAX_UNWRITTEN = 4 * BATCH_LIMIT
#: How a decided outcome is named in structured logs (``--log-format json``).
_OUTCOME_NAMES = {TaskState.COMPLETED: "completed", TaskState.FAILED: "failed", TaskState.PENDING: "retry"}

Execute = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]


class OutcomeWriter:
    def __init__(self, execute: Execute, worker_id: str, config: Config) -> None:
        self._execute = execute
        self._worker_id = worker_id
        self._config = config
        self.processed = 0  # attempts run to an outcome
        self._finishes: list[tuple[Job, Action]] = []
        self._releases: list[Job] = []
        self._writing: list[Job] = []  # the batch whose statement is in flight
        self._wanted = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stopping = False
        #: Tasks with a concurrency limit: once their outcomes are written, the workers waiting for
        #: a free slot are woken (``sql.SLOT_FREED``) rather than left to their poll. (A rate's next
        #: start is a time, which the workers wait for themselves.)
        self.limited_names: frozenset[str] = frozenset()

    # -- in ---------------------------------------------------------------------------------------

    def complete(self, job: Job, outcome: Outcome, duration: float) -> None:
        """An attempt ended: decide its task's next state (``outcome.decide``) and buffer it."""
        action = decide(outcome, job.retry_count, job.max_retries, self._config)
        self._finishes.append((job, action))
        self.processed += 1
        self._changed()
        if log.isEnabledFor(logging.INFO):
            _log_outcome(job, action, duration)

    def release(self, job: Job) -> None:
        """Hand a claimed task back without counting an attempt (it never ran, or was stopped at shutdown)."""
        self._releases.append(job)
        self._changed()

    def _changed(self) -> None:
        if self._unwritten() >= MAX_UNWRITTEN:
            self._room.clear()
        self._wanted.set()

    # -- backpressure -----------------------------------------------------------------------------

    def _unwritten(self) -> int:
        return len(self._finishes) + len(self._writing) + len(self._releases)

    def has_room(self) -> bool:
        """Below ``MAX_UNWRITTEN`` outcomes: the worker may claim more."""
        return self._unwritten() < MAX_UNWRITTEN

    async def wait_for_room(self) -> None:
        """Until the writer has written its way back below ``MAX_UNWRITTEN``."""
        await self._room.wait()

    def unwritten_ids(self) -> set[Any]:
        """Tasks whose outcome or release this writer holds (buffered or being written)."""
        return {job.id for job, _ in self._finishes} | {job.id for job in self._releases} | {j.id for j in self._writing}

    @property
    def pending(self) -> bool:
        return bool(self._finishes or self._releases)

    # -- out --------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Make ``run()`` return once the statement in flight (if any) is done; ``close()`` then
        writes what is left. Cancelling ``run()`` instead could cut a statement off mid-write."""
        self._stopping = True
        self._wanted.set()

    async def run(self) -> None:
        backoff = 0.1
        outage = Outage("recording results")
        while True:
            await self._wanted.wait()
            if self._stopping:
                return
            await asyncio.sleep(FLUSH_DELAY_SECONDS)  # let results that arrive together share a statement
            self._wanted.clear()
            try:
                await self.write_pending()
                backoff = 0.1
                outage.ok()
            except psycopg.Error as exc:
                outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                self._wanted.set()

    async def write_pending(self) -> None:
        while self._finishes:
            batch, self._finishes = self._finishes[:BATCH_LIMIT], self._finishes[BATCH_LIMIT:]
            self._writing = [job for job, _ in batch]
            try:
                await self._write(batch)
            except BaseException:  # an error, or cancelled: keep them for the next try (never dropped)
                self._finishes[:0] = batch
                raise
            finally:
                self._writing = []
                self._written()
        if self._releases:
            released, self._releases = self._releases, []
            self._writing = released
            try:
                await self._execute(sql.RELEASE_MANY, {"ids": [j.id for j in released], "worker_id": self._worker_id})
            except BaseException:
                self._releases[:0] = released
                raise
            finally:
                self._writing = []
                self._written()

    def _written(self) -> None:
        if self.has_room():
            self._room.set()

    async def close(self, timeout: float = 30) -> None:
        """At exit: write what is buffered, retrying through a short outage."""
        deadline = time.monotonic() + timeout
        while self.pending and time.monotonic() < deadline:
            try:
                await self.write_pending()
            except psycopg.Error as exc:
                log.warning("final write failed (%s); retrying", brief(exc))
                await asyncio.sleep(0.5)
        if self.pending:
            log.error(
                "gave up writing %d outcome(s): those tasks will be rescued when their locks expire",
                len(self._finishes) + len(self._releases),
            )

    async def _write(self, batch: list[tuple[Job, Action]], fallback: bool = False) -> None:
        params = sql.outcome_params(((job.id, job.started_at, action) for job, action in batch), self._worker_id)
        try:
            rows = await self._execute(sql.FINISH_MANY, params)
        except (psycopg.DataError, psycopg.errors.ProgrammingError) as exc:
            if len(batch) > 1:
                for item in batch:  # isolate the row PostgreSQL refused
                    await self._write([item])
                return
            job, action = batch[0]
            log.error("task %s %s: its outcome could not be stored (%s)", job.name, job.id, brief(exc))
            if not fallback:
                await self._write([(job, decide_unstorable(action, brief(exc)))], fallback=True)
            return
        freed = sorted({(j.name, j.queue) for j, _ in batch if j.name in self.limited_names}) if self.limited_names else []
        if freed:
            await self._execute(sql.SLOT_FREED, {"names": [n for n, _ in freed], "queues": [q for _, q in freed]})
        if len(rows) != len(batch):
            written = {r[0] for r in rows}
            for job, _ in batch:
                if job.id not in written:
                    log.warning(
                        "task %s %s was cancelled or rescued while it ran: its outcome is not recorded", job.name, job.id
                    )


def _log_outcome(job: Job, action: Action, duration: float) -> None:
    what = {
        TaskState.COMPLETED: "completed",
        TaskState.FAILED: "failed",
        TaskState.PENDING: f"failed, retry in {action.delay_seconds:.1f}s",
    }[action.state]
    outcome = _OUTCOME_NAMES[action.state]
    log.info(
        "task %s %s %s in %.1f ms",
        what,
        job.name,
        job.id,
        duration * 1000,
        extra={
            "event": f"task.{outcome}",
            "task_id": str(job.id),
            "task_name": job.name,
            "queue": job.queue,
            "attempt": job.retry_count + 1,
            "duration_ms": round(duration * 1000, 3),
            "outcome": outcome,
            "retry_in_seconds": action.delay_seconds if action.state is TaskState.PENDING else None,
        },
    )

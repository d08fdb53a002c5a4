"""The worker's outcome writer: buffers finished and released tasks and writes them in batches.

Results that arrive within a couple of milliseconds share one ``FINISH_MANY`` statement (rows by
primary key, outcomes in one jsonb object). A failed write keeps its batch for the next try, so an
outage delays results but never drops them.

The writer is also the worker's brake: while it holds ``MAX_UNWRITTEN`` outcomes the dispatchers
claim nothing (``full``), and it wakes the claim loop once it has written its way back under.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from tasklib import sql
from tasklib._connections import MAX_BACKOFF_SECONDS, Outage, brief
from tasklib._pool import Job
from tasklib.outcome import Action, decide_unstorable

log = logging.getLogger("tasklib.worker")

FLUSH_DELAY_SECONDS = 0.002
#: Most outcomes one FINISH_MANY records: a few milliseconds of work, but a statement waits for CPU
#: and WAL with the rest of the machine, and 256-row finishes were the longest worker statements
#: of the 4 x 4 bursts (see ``CLAIM_BATCH_LIMIT`` in tasklib.worker for the measure).
BATCH_LIMIT = 64
#: Outcomes the writer may hold before the worker stops claiming. Without a bound, claims and task
#: code outran the one write connection whenever writes slowed (a 40 s snapshot held elsewhere:
#: 3,600-12,600 outcomes waiting, recorded up to 3.3 s after their task ended, locks not renewed,
#: all of them to run again if the worker died). Four statements' worth keeps batches full.
MAX_UNWRITTEN = 4 * BATCH_LIMIT

Execute = Callable[[str, dict[str, Any]], Awaitable[list[tuple[Any, ...]]]]


class OutcomeWriter:
    def __init__(self, execute: Execute, worker_id: str, on_room: Callable[[], None] = lambda: None) -> None:
        self._execute = execute
        self._worker_id = worker_id
        self._on_room = on_room  # called when a full writer has written its way back under the bound
        self._braking = False
        self._finishes: list[tuple[Job, Action]] = []
        self._releases: list[Job] = []
        self._writing: list[Job] = []  # the batch whose statement is in flight
        self._wanted = asyncio.Event()
        self._stopping = False

    def finish(self, job: Job, action: Action) -> None:
        """Record an outcome (completed, failed, or pending again for a retry)."""
        self._finishes.append((job, action))
        if len(self._finishes) >= BATCH_LIMIT or not self._wanted.is_set():
            self._wanted.set()

    def release(self, job: Job) -> None:
        """Hand a claimed task back without counting an attempt (it never ran, or was stopped at shutdown)."""
        self._releases.append(job)
        self._wanted.set()

    def unwritten_ids(self) -> set[Any]:
        """Tasks whose outcome or release this writer holds (buffered or being written)."""
        return {job.id for job, _ in self._finishes} | {job.id for job in self._releases} | {j.id for j in self._writing}

    @property
    def full(self) -> bool:
        """Holding ``MAX_UNWRITTEN`` outcomes or more: claim nothing until ``on_room`` is called.
        (Asking is what arms ``on_room``: a claim that was held back is woken, no one else.)"""
        if len(self._finishes) + len(self._writing) + len(self._releases) >= MAX_UNWRITTEN:
            self._braking = True
            return True
        return False

    def _written(self) -> None:
        if self._braking and not self.full:
            self._braking = False
            self._on_room()

    @property
    def pending(self) -> bool:
        return bool(self._finishes or self._releases)

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
            # At most BATCH_LIMIT rows a statement, even when results piled up behind a slow write:
            # one huge UPDATE would hold its row locks (and the connection) for that much longer.
            batch, self._finishes = self._finishes[:BATCH_LIMIT], self._finishes[BATCH_LIMIT:]
            self._writing = [job for job, _ in batch]
            try:
                await self._write(batch)
            except BaseException:  # an error, or cancelled: keep them for the next try
                self._finishes[:0] = batch  # (a result is never dropped)
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
        if len(rows) != len(batch):
            written = {r[0] for r in rows}
            for job, _ in batch:
                if job.id not in written:
                    log.warning(
                        "task %s %s was cancelled or rescued while it ran: its outcome is not recorded", job.name, job.id
                    )

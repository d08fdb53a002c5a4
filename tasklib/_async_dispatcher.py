"""The dispatcher of ``async def`` tasks: many at once in a few async children (``_async_child``).

It shares the sync dispatcher's bookkeeping (held jobs, queue order, outcomes through the one retry
decision) but not its model of a child: an async child runs everything it is sent at once, so
every job it holds is running, answers come in the order tasks finish, and stopping one task is a
message, not a kill.

Timeouts and cancels, in two steps. The child cancels a task at its timeout (or when told to) and
reports it. A task that ignores the cancellation, or blocks its loop with sync code, cannot be
stopped from inside, so once ``CANCEL_GRACE_SECONDS`` pass without an answer the worker kills the
child. Its death then means, per job it held: past its timeout → a timeout failure (the attempt
counts, retried by policy); cancelled → nothing; anything else → released to pending with no attempt
counted, because it was only a bystander of another task's kill (or of a shutdown). Only a death
the worker did not cause (a crash in native code, the out-of-memory killer) counts an attempt for
every task the child held: which one caused it cannot be known, and not counting would let a task
that crashes its process run forever.
"""

from __future__ import annotations

import logging
import math
import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from tasklib._dispatcher import Dispatcher
from tasklib._pool import Child, Job, KillReason
from tasklib._writer import OutcomeWriter
from tasklib.config import Config
from tasklib.outcome import Outcome, OutcomeKind, timeout_error

log = logging.getLogger("tasklib.worker")

#: One event loop comfortably keeps this many I/O-bound tasks in flight; more children spread the
#: CPU of many tasks over cores and limit what one loop-blocking task holds up.
TASKS_PER_CHILD = 100
#: A free slot waits at most this long for others before a claim fills it (see ``wanted``).
COALESCE_SECONDS = 0.05
#: How long a task may take to end after it was cancelled (at its timeout, or by a cancel) before
#: its child, and so every task on it, is killed.
CANCEL_GRACE_SECONDS = 2.0


def async_children(async_concurrency: int, cpus: int | None = None) -> int:
    """How many async children a worker runs: one per ``TASKS_PER_CHILD`` tasks, at most one per
    core (two on a single-core machine, so one blocked loop never stops every async task)."""
    if async_concurrency <= 0:
        return 0
    cpus = cpus or os.cpu_count() or 1
    return min(math.ceil(async_concurrency / TASKS_PER_CHILD), max(2, cpus))


class AsyncDispatcher(Dispatcher):
    def __init__(
        self,
        config: Config,
        async_concurrency: int,
        writer: OutcomeWriter,
        wake: Callable[[], None],
        children: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(config, async_concurrency, writer, wake, clock=clock)
        self.per_child = math.ceil(async_concurrency / max(children, 1))
        self._free_since: float | None = None  # when a claim was first put off for too few free slots

    # -- how much to hold -------------------------------------------------------------------

    def capacity(self) -> int:
        return self.concurrency

    def wanted(self) -> int:
        """Claim at once when a tenth of the slots are free, otherwise once a free slot has waited
        ``COALESCE_SECONDS``: 200 one-second tasks finishing one by one then cost ~20 claims a second,
        not 200 (empty ones too, once the queue is drained), and the last few slots of a wave wait
        50 ms, not until the next wave frees enough of them (that alone cost ~10 % of the rate)."""
        free = self.capacity() - len(self.jobs)
        if free <= 0 or self.pool is None or not any(c.ready for c in self.pool.children):
            self._free_since = None
            return 0
        if self._writer.full:  # outcomes are waiting to be recorded (see Dispatcher.wanted)
            return 0
        now = self._clock()
        if self._free_since is None:
            self._free_since = now
        if free >= max(1, self.capacity() // 10) or now - self._free_since >= COALESCE_SECONDS:
            return free
        return 0

    def recheck_in(self) -> float | None:
        """Seconds until a put-off claim is due (None: nothing put off)."""
        if self._free_since is None:
            return None
        return max(0.0, self._free_since + COALESCE_SECONDS - self._clock())

    def hold(self, jobs: Iterable[Job]) -> None:
        self._free_since = None
        super().hold(jobs)

    # -- jobs out ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        if self.pool is None or self.stopping:
            return
        now = self._clock()
        for child in sorted(self.pool.children, key=lambda c: len(c.outstanding)):
            if not self._queue:
                break
            if not child.ready or child.dead or child.kill_reason:
                continue
            batch = []
            while self._queue and len(child.outstanding) + len(batch) < self.per_child:
                job = self._queue.popleft()
                if job.cancelled:
                    self.jobs.pop(job.seq, None)
                    continue
                job.sent_at = now
                batch.append(job)
            if batch:
                child.outstanding.extend(batch)
                self.pool.send(child, ("run", [(j.seq, j.name, j.kwargs_json, j.timeout_seconds) for j in batch]))
                self._log_started(child, batch)

    def recall_queued(self) -> None:
        """Nothing waits inside an async child: everything it holds is running."""

    # -- what children report ---------------------------------------------------------------

    def on_message(self, child: Child, message: Any) -> None:
        if message[0] in ("ready", "recalled"):
            super().on_message(child, message)
            return
        seq, status, payload = message
        job = next((j for j in child.outstanding if j.seq == seq), None)
        if job is None:  # cannot happen unless the protocol is broken
            log.error("async child %d answered for an unexpected task (seq %s)", child.pid, seq)
            return
        child.outstanding.remove(job)
        self.jobs.pop(seq, None)
        if job.cancelled or status == "cancelled":
            log.info("task cancelled %s %s: stopped in its async child", job.name, job.id)
        else:
            self._record(job, Outcome.from_child(status, payload), self._clock() - job.sent_at)
        self.dispatch()
        self._wake()

    def on_death(self, child: Child, reason: str) -> None:
        jobs = list(child.outstanding)
        child.outstanding.clear()
        now = self._clock()
        for job in jobs:
            self.jobs.pop(job.seq, None)
            if job.cancelled:
                continue
            if job.overdue:
                error = timeout_error(
                    job.timeout_seconds, "did not stop when cancelled, so its process was killed (a blocked event loop?)"
                )
                self._record(job, Outcome(OutcomeKind.TIMEOUT, error=error), now - job.sent_at)
            elif child.kill_reason is not None:
                self._writer.release(job)  # a bystander of another task's kill, or of a shutdown
            else:
                log.error("async child %d died while running %s %s: %s", child.pid, job.name, job.id, reason)
                error = (
                    f"WorkerChildDied: the async process running this task and {len(jobs) - 1} other(s) {reason} "
                    "(os._exit, a crash in native code, or the out-of-memory killer)"
                )
                self._record(job, Outcome(OutcomeKind.CRASHED, error=error), now - job.sent_at)
        if not jobs and child.kill_reason is None and not (self.pool and self.pool.closing):
            log.warning("idle async child %d %s; replacing it", child.pid, reason)
        self.dispatch()
        self._wake()

    # -- the watchdog's tick and stopping tasks ---------------------------------------------

    def check_children(self) -> None:
        """Kill a child whose task outlived its timeout, or a cancel, by the grace period."""
        if self.pool is None:
            return
        now = self._clock()
        for child in self.pool.children:
            if child.kill_reason:
                continue
            for job in child.outstanding:
                if job.timeout_seconds and now - job.sent_at > job.timeout_seconds + CANCEL_GRACE_SECONDS:
                    job.overdue = True
                    log.warning(
                        "task %s %s ignored its %d s timeout's cancellation: killing async child %d and "
                        "returning its other %d task(s) to the queue",
                        job.name,
                        job.id,
                        job.timeout_seconds,
                        child.pid,
                        len(child.outstanding) - 1,
                    )
                elif job.cancel_sent_at is not None and now - job.cancel_sent_at > CANCEL_GRACE_SECONDS:
                    log.warning(
                        "cancelled task %s %s did not stop: killing async child %d and returning its other "
                        "%d task(s) to the queue",
                        job.name,
                        job.id,
                        child.pid,
                        len(child.outstanding) - 1,
                    )
                else:
                    continue
                child.kill(KillReason.TIMEOUT if job.overdue else KillReason.CANCEL)
                break

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        """Tasks whose row is no longer ours (cancelled, rescued): cancel them in their child."""
        self._mark_lost(lost)
        if self.pool is None:
            return
        now = self._clock()
        for child in self.pool.children:
            wanted = [j for j in child.outstanding if j.id in lost and j.cancel_sent_at is None]
            if wanted:
                for job in wanted:
                    job.cancel_sent_at = now
                self.pool.send(child, ("cancel", [j.seq for j in wanted]))

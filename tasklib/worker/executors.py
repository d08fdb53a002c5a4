"""Execute: claimed jobs in, jobs to children, what children report out as outcomes.

``Executor`` is what the worker needs of one; ``ProcessExecutor`` (here) runs one task at a time per
child, ``AsyncExecutor`` (``async_executor``) runs many ``async def`` tasks per child. Each owns its
``Jobs``, its ``ChildPool`` and the policy for what a child's message or death means. Both hand
outcomes to the one ``OutcomeWriter``; neither touches the database.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from tasklib.config import Config
from tasklib.outcome import Outcome, OutcomeKind, timeout_error
from tasklib.worker.children import Child, ChildPool, KillReason
from tasklib.worker.forkserver import ForkServer
from tasklib.worker.jobs import Job, Jobs
from tasklib.worker.messages import Finished, FromChild, Ready, Recall, Recalled, Run
from tasklib.worker.writer import OutcomeWriter

log = logging.getLogger("tasklib.worker")

#: Fast tasks go to a child this many at a time: one pipe write per batch, and the child never
#: waits for the parent between tasks.
FAST_WINDOW = 16
FAST_TASK_SECONDS = 0.005
FAST_PREFETCH = 256
#: A child whose current task runs this long gives back the tasks queued behind it.
REBALANCE_AFTER_SECONDS = 0.1


@dataclass(frozen=True)
class ExecutorContext:
    """What every executor is given: where children come from, where outcomes go, whom to wake
    when there is room for more, the worker's settings, and the clock (a test's own)."""

    server: ForkServer
    writer: OutcomeWriter
    wake: asyncio.Event
    config: Config
    clock: Callable[[], float] = field(default=time.monotonic)


class Executor(Protocol):
    """One kind of child and the jobs it runs, as the worker's claim loop and watchdog see it."""

    names: list[str]  # the task names it runs (and so claims)
    pool: ChildPool  # its children

    def start(self) -> None: ...
    def wanted(self) -> int: ...  # how many jobs the next claim should ask for (0: none now)
    def recheck_in(self) -> float | None: ...  # seconds until ``wanted`` may change without a wake-up
    def hold(self, jobs: list[Job]) -> None: ...
    def held_ids(self) -> set[uuid.UUID]: ...
    def stop_lost(self, lost: set[uuid.UUID]) -> None: ...  # cancelled or rescued elsewhere: stop them
    def check(self) -> None: ...  # the watchdog's tick: timeouts, stuck children
    def stop(self) -> None: ...  # shutdown: take nothing new, hand back what has not started


def log_started(child: Child, batch: Iterable[Job]) -> None:
    if not log.isEnabledFor(logging.INFO):
        return
    for j in batch:
        log.info(
            "task started  %s %s (attempt %d) in child %d",
            j.name,
            j.id,
            j.retry_count + 1,
            child.pid,
            extra={
                "event": "task.started",
                "task_id": str(j.id),
                "task_name": j.name,
                "queue": j.queue,
                "attempt": j.retry_count + 1,
                "child_pid": child.pid,
            },
        )


def crash_error(what: str, reason: str) -> str:
    return f"WorkerChildDied: {what} {reason} (os._exit, a crash in native code, or the out-of-memory killer)"


class ProcessExecutor:
    """Runs tasks one at a time in each of ``concurrency`` children; prefetches once tasks prove fast."""

    def __init__(self, names: list[str], concurrency: int, context: ExecutorContext) -> None:
        self.names = names
        self.concurrency = concurrency
        self.jobs = Jobs()
        memory_limit = context.config.default_memory_limit_mb
        self.pool = ChildPool(concurrency, context.server, self, default_memory_limit_mb=memory_limit)
        self._writer = context.writer
        self._wake = context.wake
        self._clock = context.clock
        self._stopping = False
        self.avg_duration = 1.0  # EWMA; starts "slow" so nothing is prefetched until tasks prove fast

    def start(self) -> None:
        self.pool.start()

    # -- how much to hold -------------------------------------------------------------------------

    @property
    def fast(self) -> bool:
        return self.avg_duration < FAST_TASK_SECONDS

    def capacity(self) -> int:
        """How many tasks to hold (queued + in children): free slots, plus prefetch when tasks are fast."""
        return max(self.concurrency * FAST_WINDOW * 2, FAST_PREFETCH) if self.fast else self.concurrency

    def wanted(self) -> int:
        free = self.capacity() - len(self.jobs)
        threshold = max(1, self.capacity() // 2) if self.fast else 1
        if free < threshold or not any(c.ready for c in self.pool.children):
            return 0
        return free

    def recheck_in(self) -> float | None:
        return None

    def held_ids(self) -> set[uuid.UUID]:
        return self.jobs.held_ids()

    # -- jobs in, jobs out ------------------------------------------------------------------------

    def hold(self, jobs: list[Job]) -> None:
        self.jobs.hold(jobs)
        self.dispatch()

    def dispatch(self) -> None:
        if self._stopping:
            return
        window = FAST_WINDOW if self.fast else 1
        now = self._clock()
        # Children busy with a slow task come last: queue behind them only when nobody else can take work.
        for child in sorted(self.pool.children, key=lambda c: (self._stuck(c, now), len(c.outstanding))):
            if not self.jobs.queued:
                break
            if not child.ready or child.dead or child.kill_reason:
                continue
            batch = self.jobs.take(window - len(child.outstanding))
            if not batch:
                continue
            if not child.outstanding:
                child.current_since = now
            child.outstanding.extend(batch)
            self.pool.send(child, Run(tuple(j.order() for j in batch)))
            log_started(child, batch)

    # -- what children report ---------------------------------------------------------------------

    def on_message(self, child: Child, message: FromChild) -> None:
        if isinstance(message, Finished):
            self._finished(child, message)
        elif isinstance(message, Ready):
            child.ready = True
            self.dispatch()
            self._wake.set()
        elif isinstance(message, Recalled):
            self._recalled(child, set(message.seqs))

    def _finished(self, child: Child, message: Finished) -> None:
        job = child.outstanding.popleft() if child.outstanding else None
        if job is None or job.seq != message.seq:  # cannot happen unless the protocol is broken
            log.error("child %d answered for an unexpected task (seq %s)", child.pid, message.seq)
            return
        now = self._clock()
        duration = now - child.current_since
        child.current_since = now
        self.jobs.done(job)
        self.avg_duration = self.avg_duration * 0.8 + duration * 0.2
        if job.cancelled:
            log.info("task cancelled %s %s: its result is discarded", job.name, job.id)
        else:
            self._writer.complete(job, Outcome.from_child(message.status, message.payload), duration)
        self.dispatch()
        if len(self.jobs) <= self.capacity() // 2 or not self.fast:
            self._wake.set()

    def on_death(self, child: Child, reason: str) -> None:
        jobs = list(child.outstanding)
        child.outstanding.clear()
        if jobs:
            head, rest = jobs[0], jobs[1:]
            self.jobs.done(head)
            outcome = self._death_outcome(child, head, reason)
            if outcome is not None:
                self._writer.complete(head, outcome, self._clock() - child.current_since)
            elif child.kill_reason is KillReason.SHUTDOWN and not head.cancelled:
                self._writer.release(head)
            self._take_back(rest)  # queued behind the head: they never started
        elif child.kill_reason is None and not self.pool.closing:
            log.warning("idle child %d %s; replacing it", child.pid, reason)
        self._wake.set()

    @staticmethod
    def _death_outcome(child: Child, head: Job, reason: str) -> Outcome | None:
        """What a child's death means for the task it was running (None: nothing to record)."""
        if child.kill_reason is KillReason.TIMEOUT:
            return Outcome(OutcomeKind.TIMEOUT, error=timeout_error(head.timeout_seconds, "its process was killed"))
        if child.kill_reason is not None or head.cancelled:
            return None  # cancelled or taken over (nothing to record), or stopped at shutdown (released)
        log.error(
            "child %d running %s %s died: %s",
            child.pid,
            head.name,
            head.id,
            reason,
            extra={"event": "child.died", "task_id": str(head.id), "task_name": head.name, "child_pid": child.pid},
        )
        return Outcome(OutcomeKind.CRASHED, error=crash_error("the process running this task", reason))

    # -- recall: queued jobs a child gives back ---------------------------------------------------

    def _recalled(self, child: Child, seqs: set[int]) -> None:
        recalled = [job for job in child.outstanding if job.seq in seqs]
        for job in recalled:
            child.outstanding.remove(job)
        self._take_back(recalled)
        for job in child.outstanding:  # asked for but already started: it stays (and is cancelled if so)
            job.recalling = False
        self.dispatch()

    def _take_back(self, jobs: list[Job]) -> None:
        """Jobs a child will never start: released at shutdown, otherwise first in line again."""
        if self._stopping:
            for job in jobs:
                self.jobs.done(job)
                if not job.cancelled:
                    self._writer.release(job)
        else:
            self.jobs.put_back(jobs)

    def _recall(self, child: Child, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not job.recalling]
        if jobs:
            for job in jobs:
                job.recalling = True
            self.pool.send(child, Recall(tuple(job.seq for job in jobs)))

    @staticmethod
    def _stuck(child: Child, now: float) -> bool:
        return bool(child.outstanding) and now - child.current_since > REBALANCE_AFTER_SECONDS

    # -- the watchdog and stopping ----------------------------------------------------------------

    def check(self) -> None:
        """Kill children whose task ran past its timeout; take queued jobs back from children stuck
        on a slow one, when another child is idle (under plain CPU contention moving work is churn)."""
        now = self._clock()
        idle = any(c.ready and not c.outstanding and not c.kill_reason for c in self.pool.children)
        for child in self.pool.children:
            job = child.current
            if job and job.timeout_seconds and not child.kill_reason and now - child.current_since > job.timeout_seconds:
                log.warning(
                    "task %s %s passed its %d s timeout: killing child %d", job.name, job.id, job.timeout_seconds, child.pid
                )
                child.kill(KillReason.TIMEOUT)
            elif len(child.outstanding) > 1 and self._stuck(child, now) and idle:
                self._recall(child, list(child.outstanding)[1:])

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        for job in self.jobs.mark_lost(lost):
            log.info("task %s %s was cancelled or taken over: stopping it", job.name, job.id)
        for child in self.pool.children:
            head = child.current
            if head is not None and head.id in lost:
                child.kill(KillReason.CANCEL)
            else:
                self._recall(child, [job for job in list(child.outstanding)[1:] if job.id in lost])

    def stop(self) -> None:
        self._stopping = True
        for job in self.jobs.drain_queue():
            self._writer.release(job)
        for child in self.pool.children:
            self._recall(child, list(child.outstanding)[1:])

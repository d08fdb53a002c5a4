"""The worker's dispatcher: claimed jobs in, jobs to children, child messages and deaths to outcomes.

It holds every job the worker has claimed and not yet finished (queued here or sent to a child),
decides how many to hold (prefetch once tasks prove fast), hands them to children in small windows,
takes back queued jobs a child will never start, and turns what a child reports (or its death) into
an outcome for the writer. It talks to the pool only through ``children``, ``send`` and
``Child.kill``, so it is tested against a fake pool, without processes or a database.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from tasklib._pool import Child, Job, KillReason
from tasklib._writer import OutcomeWriter
from tasklib.config import Config
from tasklib.outcome import Outcome, OutcomeKind, decide, timeout_error
from tasklib.states import TaskState

log = logging.getLogger("tasklib.worker")
#: How a decided outcome is named in structured logs (``--log-format json``).
_OUTCOME_NAMES = {TaskState.COMPLETED: "completed", TaskState.FAILED: "failed", TaskState.PENDING: "retry"}

# A child may be sent this many tasks at once when tasks are fast: it keeps the child busy while the
# parent reads results, and costs one pipe write per batch instead of one per task.
FAST_WINDOW = 16
FAST_TASK_SECONDS = 0.005
FAST_PREFETCH = 256
# A child whose current task runs this long gives back the tasks queued behind it, so one slow task
# in a stream of fast ones does not hold up the others while idle children wait.
REBALANCE_AFTER_SECONDS = 0.1


class Pool(Protocol):
    """What the dispatcher needs of ``_pool.ChildPool``."""

    children: list[Child]
    closing: bool

    def send(self, child: Child, message: Any) -> None: ...


class Dispatcher:
    def __init__(
        self,
        config: Config,
        concurrency: int,
        writer: OutcomeWriter,
        wake: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.concurrency = concurrency
        self.pool: Pool | None = None
        self.stopping = False
        self.processed = 0
        self._writer = writer
        self._wake = wake
        self._clock = clock
        self._queue: deque[Job] = deque()  # claimed, not yet sent to a child
        self.jobs: dict[int, Job] = {}  # seq -> job, for everything held (queue + children)
        self._next_seq = 0
        self.avg_duration = 1.0  # EWMA; starts "slow" so nothing is prefetched until tasks prove fast

    # -- how much to hold -------------------------------------------------------------------

    @property
    def fast(self) -> bool:
        return self.avg_duration < FAST_TASK_SECONDS

    def capacity(self) -> int:
        """How many tasks to hold (queued + in children): free slots, plus prefetch when tasks are fast."""
        if not self.fast:
            return self.concurrency
        # Fast tasks: enough in hand that the children never wait for the next claim's round trip.
        return max(self.concurrency * FAST_WINDOW * 2, FAST_PREFETCH)

    def wanted(self) -> int:
        """How many tasks the next claim should ask for (0: not worth a claim now)."""
        free = self.capacity() - len(self.jobs)
        threshold = max(1, self.capacity() // 2) if self.fast else 1
        if free < threshold or self.pool is None or not any(c.ready for c in self.pool.children):
            return 0
        if self._writer.full:  # outcomes are waiting to be recorded: more tasks would only add to them
            return 0
        return free

    def recheck_in(self) -> float | None:
        """Seconds until ``wanted`` may change without a wake-up (None: only a wake-up changes it)."""
        return None

    def held_ids(self) -> set[uuid.UUID]:
        """Rows whose lock this worker must keep renewing."""
        return {j.id for j in self.jobs.values() if not j.cancelled}

    # -- jobs in, jobs out ------------------------------------------------------------------

    def hold(self, jobs: Iterable[Job]) -> None:
        """Take freshly claimed jobs; they start in queue order (priority, due time, id)."""
        for job in sorted(jobs, key=lambda j: j.queue_order):
            self._next_seq += 1
            job.seq = self._next_seq
            self.jobs[job.seq] = job
            self._queue.append(job)
        self.dispatch()

    def dispatch(self) -> None:
        if self.pool is None or self.stopping:
            return
        window = FAST_WINDOW if self.fast else 1
        now = self._clock()
        # Children busy with a slow task come last: queue behind them only when nobody else can take work.
        for child in sorted(self.pool.children, key=lambda c: (self._stuck(c, now), len(c.outstanding))):
            if not self._queue:
                break
            if not child.ready or child.dead or child.kill_reason:
                continue
            batch = []
            while self._queue and len(child.outstanding) + len(batch) < window:
                job = self._queue.popleft()
                if job.cancelled:
                    self.jobs.pop(job.seq, None)
                    continue
                batch.append(job)
            if not batch:
                continue
            if not child.outstanding:
                child.current_since = now
            child.outstanding.extend(batch)
            self.pool.send(child, ("run", [(j.seq, j.name, j.kwargs_json) for j in batch]))
            self._log_started(child, batch)

    @staticmethod
    def _log_started(child: Child, batch: list[Job]) -> None:
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
                    "attempt": j.retry_count + 1,
                    "child_pid": child.pid,
                },
            )

    def release_queued(self) -> None:
        """At shutdown: hand back every job no child has been sent."""
        while self._queue:
            job = self._queue.popleft()
            self.jobs.pop(job.seq, None)
            if not job.cancelled:
                self._writer.release(job)

    # -- what children report ---------------------------------------------------------------

    def on_message(self, child: Child, message: Any) -> None:
        if message[0] == "ready":
            child.ready = True
            self.dispatch()
            self._wake()
            return
        if message[0] == "recalled":
            self._on_recalled(child, set(message[1]))
            return
        seq, status, payload = message
        now = self._clock()
        job = child.outstanding.popleft() if child.outstanding else None
        if job is None or job.seq != seq:  # cannot happen unless the protocol is broken
            log.error("child %d answered for an unexpected task (seq %s)", child.pid, seq)
            return
        duration = now - child.current_since
        child.current_since = now
        self.jobs.pop(seq, None)
        self.avg_duration = self.avg_duration * 0.8 + duration * 0.2
        if job.cancelled:
            log.info("task cancelled %s %s: its result is discarded", job.name, job.id)
        else:
            self._record(job, Outcome.from_child(status, payload), duration)
        self.dispatch()
        if len(self.jobs) <= self.capacity() // 2 or not self.fast:
            self._wake()

    def on_death(self, child: Child, reason: str) -> None:
        jobs = list(child.outstanding)
        child.outstanding.clear()
        if jobs:
            head, rest = jobs[0], jobs[1:]
            self.jobs.pop(head.seq, None)
            outcome = self._death_outcome(child, head, reason)
            if outcome is not None:
                self._record(head, outcome, self._clock() - child.current_since)
            elif child.kill_reason is KillReason.SHUTDOWN and not head.cancelled:
                self._writer.release(head)
            self._take_back(rest)  # queued behind the head: they never started
        elif child.kill_reason is None and not (self.pool and self.pool.closing):
            log.warning("idle child %d %s; replacing it", child.pid, reason)
        self._wake()

    @staticmethod
    def _death_outcome(child: Child, head: Job, reason: str) -> Outcome | None:
        """What a child's death means for the task it was running (None: nothing to record)."""
        if child.kill_reason is KillReason.TIMEOUT:
            return Outcome(
                OutcomeKind.TIMEOUT,
                error=timeout_error(head.timeout_seconds, "its process was killed"),
            )
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
        return Outcome(
            OutcomeKind.CRASHED,
            error=(
                f"WorkerChildDied: the process running this task {reason} "
                "(os._exit, a crash in native code, or the out-of-memory killer)"
            ),
        )

    def _record(self, job: Job, outcome: Outcome, duration: float) -> None:
        action = decide(outcome, job.retry_count, job.max_retries, self.config)
        self._writer.finish(job, action)
        self.processed += 1
        if log.isEnabledFor(logging.INFO):
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
                    "attempt": job.retry_count + 1,
                    "duration_ms": round(duration * 1000, 3),
                    "outcome": outcome,
                    "retry_in_seconds": action.delay_seconds if action.state is TaskState.PENDING else None,
                },
            )

    # -- recall: queued jobs a child gives back ----------------------------------------------

    def _on_recalled(self, child: Child, seqs: set[int]) -> None:
        """Queued jobs a child gave back: they never started there. Drop, release or run elsewhere."""
        recalled = [job for job in child.outstanding if job.seq in seqs]
        for job in recalled:
            child.outstanding.remove(job)
        self._take_back(recalled)
        for job in child.outstanding:  # asked for but already started: it stays (and is cancelled if so)
            job.recalling = False
        self.dispatch()

    def _take_back(self, jobs: list[Job]) -> None:
        """Jobs a child will never start: drop the cancelled, release them at shutdown, otherwise
        put them first in line for another child."""
        for job in reversed(jobs):
            job.recalling = False
            if job.cancelled:
                self.jobs.pop(job.seq, None)
            elif self.stopping:
                self.jobs.pop(job.seq, None)
                self._writer.release(job)
            else:
                self._queue.appendleft(job)

    def recall(self, child: Child, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not job.recalling]
        if jobs and self.pool is not None:
            for job in jobs:
                job.recalling = True
            self.pool.send(child, ("recall", [job.seq for job in jobs]))

    def recall_queued(self) -> None:
        """Ask every child for the jobs queued behind the one it runs (shutdown)."""
        if self.pool is not None:
            for child in self.pool.children:
                self.recall(child, list(child.outstanding)[1:])

    @staticmethod
    def _stuck(child: Child, now: float) -> bool:
        return bool(child.outstanding) and now - child.current_since > REBALANCE_AFTER_SECONDS

    # -- the watchdog's tick and stopping tasks ---------------------------------------------

    def check_children(self) -> None:
        """Kill children whose current task ran past its timeout; take queued jobs back from
        children stuck on a slow one."""
        if self.pool is None:
            return
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
                # Only worth it when another child is idle; under plain CPU contention every child
                # is busy and moving work around would only add churn.
                self.recall(child, list(child.outstanding)[1:])

    def _mark_lost(self, lost: set[uuid.UUID]) -> None:
        for job in list(self.jobs.values()):
            if job.id in lost and not job.cancelled:
                job.cancelled = True
                log.info("task %s %s was cancelled or taken over: stopping it", job.name, job.id)

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        """Tasks whose row is no longer ours (cancelled, rescued): drop them, kill their code."""
        self._mark_lost(lost)
        if self.pool is None:
            return
        for child in self.pool.children:
            head = child.current
            if head is not None and head.id in lost:
                child.kill(KillReason.CANCEL)
            else:
                self.recall(child, [job for job in list(child.outstanding)[1:] if job.id in lost])

    def running_children(self) -> list[Child]:
        return [c for c in self.pool.children if c.outstanding] if self.pool is not None else []

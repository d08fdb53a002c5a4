"""The executor of ``async def`` tasks: many at once in a few async children (``async_child``).

An async child runs everything it is sent at once, so every job it holds is running, answers come in
the order tasks finish, and stopping one task is a ``Cancel`` message, not a kill. A task that
ignores the cancellation for ``CANCEL_GRACE_SECONDS`` gets its whole child killed; what that death
means for each job the child held is in docs/design/liveness.md.
"""

from __future__ import annotations

import logging
import math
import os
import uuid

from tasklib.outcome import Outcome, OutcomeKind, timeout_error
from tasklib.worker.children import Child, ChildPool, KillReason
from tasklib.worker.executors import ExecutorContext, crash_error, log_started
from tasklib.worker.jobs import Job, Jobs
from tasklib.worker.messages import Cancel, Finished, FromChild, Ready, Run

log = logging.getLogger("tasklib.worker")

#: One event loop comfortably keeps this many I/O-bound tasks in flight; more children spread the
#: CPU of many tasks over cores and limit what one loop-blocking task holds up.
TASKS_PER_CHILD = 100
#: A free slot waits at most this long for others before a claim fills it (see ``wanted``).
COALESCE_SECONDS = 0.05
#: How long a cancelled task (at its timeout, or by a cancel) may take to end before its child is killed.
CANCEL_GRACE_SECONDS = 2.0


def async_children(async_concurrency: int, cpus: int | None = None) -> int:
    """How many async children a worker runs: one per ``TASKS_PER_CHILD`` tasks, at most one per
    core (two on a single-core machine, so one blocked loop never stops every async task)."""
    if async_concurrency <= 0:
        return 0
    cpus = cpus or os.cpu_count() or 1
    return min(math.ceil(async_concurrency / TASKS_PER_CHILD), max(2, cpus))


class AsyncExecutor:
    """Runs up to ``concurrency`` async tasks at once, spread over ``async_children(concurrency)`` children."""

    def __init__(self, names: list[str], concurrency: int, context: ExecutorContext, children: int | None = None) -> None:
        self.names = names
        self.concurrency = concurrency
        children = async_children(concurrency) if children is None else children
        self.per_child = math.ceil(concurrency / max(children, 1))
        self.jobs = Jobs()
        self.pool = ChildPool(children, context.server, self, run_async=True)
        self._writer = context.writer
        self._wake = context.wake
        self._clock = context.clock
        self._stopping = False
        self._free_since: float | None = None  # when a claim was first put off for too few free slots

    def start(self) -> None:
        self.pool.start()

    # -- how much to hold -------------------------------------------------------------------------

    def wanted(self) -> int:
        """At once when a tenth of the slots are free, otherwise once a free slot has waited
        ``COALESCE_SECONDS``: tasks finishing one by one do not cost a claim each."""
        free = self.concurrency - len(self.jobs)
        if free <= 0 or not any(c.ready for c in self.pool.children):
            self._free_since = None
            return 0
        now = self._clock()
        if self._free_since is None:
            self._free_since = now
        if free >= max(1, self.concurrency // 10) or now - self._free_since >= COALESCE_SECONDS:
            return free
        return 0

    def recheck_in(self) -> float | None:
        """Seconds until a put-off claim is due (None: nothing put off)."""
        if self._free_since is None:
            return None
        return max(0.0, self._free_since + COALESCE_SECONDS - self._clock())

    def held_ids(self) -> set[uuid.UUID]:
        return self.jobs.held_ids()

    # -- jobs in, jobs out ------------------------------------------------------------------------

    def hold(self, jobs: list[Job]) -> None:
        self._free_since = None
        self.jobs.hold(jobs)
        self.dispatch()

    def dispatch(self) -> None:
        if self._stopping:
            return
        now = self._clock()
        for child in sorted(self.pool.children, key=lambda c: len(c.outstanding)):
            if not self.jobs.queued:
                break
            if not child.ready or child.dead or child.kill_reason:
                continue
            batch = self.jobs.take(self.per_child - len(child.outstanding))
            if batch:
                for job in batch:
                    job.sent_at = now
                child.outstanding.extend(batch)
                self.pool.send(child, Run(tuple(j.order(j.timeout_seconds) for j in batch)))
                log_started(child, batch)

    # -- what children report ---------------------------------------------------------------------

    def on_message(self, child: Child, message: FromChild) -> None:
        if isinstance(message, Ready):
            child.ready = True
            self.dispatch()
            self._wake.set()
        elif isinstance(message, Finished):
            self._finished(child, message)

    def _finished(self, child: Child, message: Finished) -> None:
        job = next((j for j in child.outstanding if j.seq == message.seq), None)
        if job is None:  # cannot happen unless the protocol is broken
            log.error("async child %d answered for an unexpected task (seq %s)", child.pid, message.seq)
            return
        child.outstanding.remove(job)
        self.jobs.done(job)
        if job.cancelled or message.status == "cancelled":
            log.info("task cancelled %s %s: stopped in its async child", job.name, job.id)
        else:
            outcome = Outcome.from_child(message.status, message.payload)
            self._writer.complete(job, outcome, self._clock() - job.sent_at)
        self.dispatch()
        self._wake.set()

    def on_death(self, child: Child, reason: str) -> None:
        """Per job the child held: past its timeout, a timeout failure; cancelled, nothing; a
        bystander of a kill the worker made, released; a death the worker did not cause, a crash
        for every job (which one caused it cannot be known)."""
        jobs = list(child.outstanding)
        child.outstanding.clear()
        now = self._clock()
        for job in jobs:
            self.jobs.done(job)
            if job.cancelled:
                continue
            if job.overdue:
                error = timeout_error(
                    job.timeout_seconds, "did not stop when cancelled, so its process was killed (a blocked event loop?)"
                )
                self._writer.complete(job, Outcome(OutcomeKind.TIMEOUT, error=error), now - job.sent_at)
            elif child.kill_reason is not None:
                self._writer.release(job)
            else:
                log.error("async child %d died while running %s %s: %s", child.pid, job.name, job.id, reason)
                what = f"the async process running this task and {len(jobs) - 1} other(s)"
                self._writer.complete(job, Outcome(OutcomeKind.CRASHED, error=crash_error(what, reason)), now - job.sent_at)
        if not jobs and child.kill_reason is None and not self.pool.closing:
            log.warning("idle async child %d %s; replacing it", child.pid, reason)
        self.dispatch()
        self._wake.set()

    # -- the watchdog and stopping ----------------------------------------------------------------

    def check(self) -> None:
        """Kill a child whose task outlived its timeout, or a cancel, by the grace period."""
        now = self._clock()
        for child in self.pool.children:
            if child.kill_reason:
                continue
            for job in child.outstanding:
                if job.timeout_seconds and now - job.sent_at > job.timeout_seconds + CANCEL_GRACE_SECONDS:
                    job.overdue = True
                    why = f"ignored its {job.timeout_seconds} s timeout's cancellation"
                elif job.cancel_sent_at is not None and now - job.cancel_sent_at > CANCEL_GRACE_SECONDS:
                    why = "was cancelled and did not stop"
                else:
                    continue
                log.warning(
                    "task %s %s %s: killing async child %d and returning its other %d task(s) to the queue",
                    job.name,
                    job.id,
                    why,
                    child.pid,
                    len(child.outstanding) - 1,
                )
                child.kill(KillReason.TIMEOUT if job.overdue else KillReason.CANCEL)
                break

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        """Tasks whose row is no longer ours (cancelled, rescued): cancel them in their child."""
        for job in self.jobs.mark_lost(lost):
            log.info("task %s %s was cancelled or taken over: stopping it", job.name, job.id)
        now = self._clock()
        for child in self.pool.children:
            wanted = [j for j in child.outstanding if j.id in lost and j.cancel_sent_at is None]
            if wanted:
                for job in wanted:
                    job.cancel_sent_at = now
                self.pool.send(child, Cancel(tuple(j.seq for j in wanted)))

    def stop(self) -> None:
        """Nothing waits inside an async child (everything it holds runs): release the queue only."""
        self._stopping = True
        for job in self.jobs.drain_queue():
            self._writer.release(job)

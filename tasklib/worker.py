"""TaskWorker: claim due tasks, run them in child processes, record outcomes, keep locks alive.

One asyncio loop in the parent drives everything; task code only ever runs in children:
- the claim loop takes up to the free capacity in one statement (FOR UPDATE SKIP LOCKED) and commits
  before anything runs;
- children report results over pipes; outcomes become row changes (``outcome.decide``) that a
  flusher writes in batches, each conditioned on this worker's claim;
- a maintenance loop renews locks (heartbeat) and rescues tasks of dead workers;
- a listener on its own connection turns NOTIFY into wake-ups and cancellations.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
import uuid
from collections import deque
from typing import Any

import psycopg

from tasklib import sql
from tasklib._pool import Child, ChildPool, Job
from tasklib._writer import OutcomeWriter, brief
from tasklib.config import Config, redact_url
from tasklib.db import CLAIM_PLANNER_OPTIONS, WRITE_PLANNER_OPTIONS, connect_kwargs
from tasklib.errors import DatabaseError
from tasklib.outcome import Outcome, OutcomeKind, decide
from tasklib.registry import registered_definitions
from tasklib.schema import ensure_schema
from tasklib.states import TaskState

log = logging.getLogger("tasklib.worker")

# A child may be sent this many tasks at once when tasks are fast: it keeps the child busy while the
# parent reads results, and costs one pipe write per batch instead of one per task.
FAST_WINDOW = 16
FAST_TASK_SECONDS = 0.005
FAST_PREFETCH = 256
# A child whose current task runs this long gives back the tasks queued behind it, so one slow task
# in a stream of fast ones does not hold up the others while idle children wait.
REBALANCE_AFTER_SECONDS = 0.1
MAX_BACKOFF_SECONDS = 10.0


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class TaskWorker:
    """Runs registered tasks from the ``tasks`` table. ``await run()`` blocks until shut down."""

    def __init__(
        self,
        config: Config,
        concurrency: int = 1,
        poll_interval_seconds: float = 1.0,
        *,
        modules: list[str] | None = None,
        handle_signals: bool = True,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if poll_interval_seconds <= 0:
            raise ValueError("poll_interval_seconds must be > 0")
        self.config = config
        self.concurrency = concurrency
        self.poll_interval = poll_interval_seconds
        self.worker_id = config.worker_id or default_worker_id()
        self.handle_signals = handle_signals
        self._extra_modules = modules or []
        self._heartbeat_interval = max(0.2, min(config.lock_timeout_seconds / 3, 10.0))
        self._queue: deque[Job] = deque()  # claimed, not yet sent to a child
        self._jobs: dict[int, Job] = {}  # token -> job, for everything held (queue + children)
        self._next_token = 0
        self._avg_duration = 1.0  # EWMA; starts "slow" so nothing is prefetched until tasks prove fast
        self._wake = asyncio.Event()
        self._stopping = False
        self._grace: float | None = None  # shutdown(grace_seconds=…) overrides the config
        self._force = False
        self._stopped = asyncio.Event()
        # Two connections: claims on one, results/heartbeats/rescue on the other, so a claim never
        # waits behind a batch of results (and vice versa). LISTEN has a third, dedicated one.
        self._conns: dict[str, psycopg.AsyncConnection[Any] | None] = {"claim": None, "write": None}
        self._pool: ChildPool | None = None
        self._names: list[str] = []
        self.processed = 0
        self._writer = OutcomeWriter(self._execute, self.worker_id)
        self._started = False
        self._run_task: asyncio.Task[Any] | None = None
        # The dashboard lists live workers from pg_stat_activity by this name (no extra table needed).
        self._app_name = f"tasklib-worker {self.worker_id}"[:63]

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``shutdown()`` or SIGINT/SIGTERM (a second signal stops running tasks at once)."""
        self._started = True
        self._run_task = asyncio.current_task()
        url = self.config.resolved_database_url()
        await asyncio.to_thread(self._prepare_schema, url)
        definitions = registered_definitions()
        self._names = sorted(definitions)
        if not self._names:
            log.warning("no tasks are registered: this worker will claim nothing (use --app to import them)")
        modules = sorted({d.func.__module__ for d in definitions.values()} | set(self._extra_modules))
        modules = [m if m not in ("__main__", "__mp_main__") else "__main__" for m in modules]
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        self._pool = ChildPool(
            self.concurrency,
            [m for m in modules if m != "__main__"],
            self._on_message,
            self._on_death,
            preload_main="__main__" in modules,
        )
        self._pool.start()
        log.info(
            "worker %s started: concurrency %d, %d task(s) registered, database %s",
            self.worker_id,
            self.concurrency,
            len(self._names),
            redact_url(url),
        )
        self._url = url
        background = [
            asyncio.create_task(self._listen(), name="tasklib-listen"),
            asyncio.create_task(self._maintain(), name="tasklib-maintain"),
            asyncio.create_task(self._writer.run(), name="tasklib-write"),
            asyncio.create_task(self._watchdog(), name="tasklib-watchdog"),
        ]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._writer.close()
            await self._pool.close()
            for conn in self._conns.values():
                if conn is not None:
                    await conn.close()
            self._remove_signals(loop)
            self._stopped.set()
            log.info("worker %s stopped after %d task(s)", self.worker_id, self.processed)

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop claiming, let running tasks finish (up to the grace period), release the rest.

        Returns once ``run()`` has finished (at once if it is not running).
        """
        if grace_seconds is not None:
            self._grace = grace_seconds
        self._stopping = True
        self._wake.set()
        if self._started and asyncio.current_task() is not self._run_task:
            await self._stopped.wait()

    def _prepare_schema(self, url: str) -> None:
        """Create/upgrade the table, waiting for the database if it is not up yet (containers start together)."""
        delay, deadline = 0.5, time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(url, connect_timeout=5, **connect_kwargs("tasklib-worker")) as conn:
                    ensure_schema(conn)
                return
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline or self._stopping:
                    raise DatabaseError(f"cannot reach {redact_url(url)}: {brief(exc)}") from exc
                log.warning("database not reachable yet (%s); retrying in %.1fs", brief(exc), delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.handle_signals:
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, self._on_signal, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass  # not the main thread: the caller handles signals and calls shutdown()

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        if not self.handle_signals:
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _on_signal(self, sig: int) -> None:
        if self._stopping:
            log.warning("second %s: stopping running tasks now", signal.Signals(sig).name)
            self._force = True
        else:
            log.info(
                "%s received: finishing running tasks (up to %.0fs), claiming nothing new; again to force",
                signal.Signals(sig).name,
                self.config.shutdown_grace_seconds,
            )
        self._stopping = True
        self._wake.set()

    # -- database access with reconnects ----------------------------------------------------

    async def _connection(self, role: str) -> psycopg.AsyncConnection[Any]:
        conn = self._conns[role]
        if conn is None or conn.closed or conn.broken:
            # Planner settings that keep each connection's few statements on their indexes even when
            # statistics say the table is empty (see tasklib.db).
            options = CLAIM_PLANNER_OPTIONS if role == "claim" else WRITE_PLANNER_OPTIONS
            conn = self._conns[role] = await psycopg.AsyncConnection.connect(
                self._url, **connect_kwargs(self._app_name, options=options)
            )
        return conn

    async def _execute(self, statement: str, params: dict[str, Any], role: str = "write") -> list[tuple[Any, ...]]:
        """Run one statement; on a connection failure drop the connection and re-raise."""
        try:
            conn = await self._connection(role)
            cursor = await conn.execute(statement, params)  # type: ignore[arg-type]
            return await cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            broken = self._conns[role]
            self._conns[role] = None
            if broken is not None:
                await broken.close()
            raise

    # -- claiming and dispatch ------------------------------------------------------------

    @property
    def _fast(self) -> bool:
        return self._avg_duration < FAST_TASK_SECONDS

    def _window(self) -> int:
        return FAST_WINDOW if self._fast else 1

    def _capacity(self) -> int:
        """How many tasks to hold (queued + in children): free slots, plus prefetch when tasks are fast."""
        if not self._fast:
            return self.concurrency
        # Fast tasks: enough in hand that the children never wait for the next claim's round trip.
        return max(self.concurrency * FAST_WINDOW * 2, FAST_PREFETCH)

    async def _claim_loop(self) -> None:
        backoff = 0.1
        while not self._stopping:
            free = self._capacity() - len(self._jobs)
            threshold = 1 if not self._fast else max(1, self._capacity() // 2)
            claimed_full = False
            if free >= threshold and self._pool is not None and any(c.ready for c in self._pool.children):
                try:
                    rows = await self._execute(
                        role="claim",
                        statement=sql.CLAIM_NEXT,
                        params={
                            "names": self._names,
                            "limit": free,
                            "worker_id": self.worker_id,
                            "lock_seconds": float(self.config.lock_timeout_seconds),
                        },
                    )
                    backoff = 0.1
                except psycopg.Error as exc:
                    log.warning("claim failed (%s); retrying in %.1fs", brief(exc), backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                rows.sort(key=lambda r: (-r[6], r[7]))
                for row in rows:
                    self._hold(Job(*row))
                self._dispatch()
                claimed_full = len(rows) == free
            if claimed_full:
                continue  # more may be due: claim again at once
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    def _hold(self, job: Job) -> None:
        self._next_token += 1
        job.token = self._next_token
        self._jobs[job.token] = job
        self._queue.append(job)

    def _dispatch(self) -> None:
        if self._pool is None or self._stopping:
            return
        window = self._window()
        now = time.monotonic()
        # Children busy with a slow task come last: queue behind them only when nobody else can take work.
        for child in sorted(self._pool.children, key=lambda c: (self._stuck(c, now), len(c.outstanding))):
            if not self._queue:
                break
            if not child.ready or child.dead or child.kill_reason:
                continue
            batch = []
            while self._queue and len(child.outstanding) + len(batch) < window:
                job = self._queue.popleft()
                if job.cancelled:
                    self._jobs.pop(job.token, None)
                    continue
                batch.append(job)
            if not batch:
                continue
            if not child.outstanding:
                child.current_since = time.monotonic()
            child.outstanding.extend(batch)
            self._pool.send(child, ("run", [(j.token, j.name, j.kwargs_json) for j in batch]))
            if log.isEnabledFor(logging.INFO):
                for j in batch:
                    log.info("task started  %s %s (attempt %d) in child %d", j.name, j.id, j.retry_count + 1, child.pid)

    # -- results from children --------------------------------------------------------------

    def _on_message(self, child: Child, message: Any) -> None:
        if message[0] == "ready":
            child.ready = True
            self._dispatch()
            self._wake.set()
            return
        if message[0] == "recalled":
            self._on_recalled(child, set(message[1]))
            return
        token, status, payload = message
        now = time.monotonic()
        job = child.outstanding.popleft() if child.outstanding else None
        if job is None or job.token != token:  # cannot happen unless the protocol is broken
            log.error("child %d answered for an unexpected task (token %s)", child.pid, token)
            return
        duration = now - child.current_since
        child.current_since = now
        self._jobs.pop(token, None)
        self._avg_duration = self._avg_duration * 0.8 + duration * 0.2
        if job.cancelled:
            log.info("task cancelled %s %s: its result is discarded", job.name, job.id)
        else:
            outcome = (
                Outcome(OutcomeKind.OK, result_json=payload) if status == "ok" else Outcome(OutcomeKind.ERROR, error=payload)
            )
            self._record(job, outcome, duration)
        self._dispatch()
        if len(self._jobs) <= self._capacity() // 2 or not self._fast:
            self._wake.set()

    def _on_recalled(self, child: Child, tokens: set[int]) -> None:
        """Queued tasks a child gave back: they never started there. Drop, release or run elsewhere."""
        recalled = [job for job in child.outstanding if job.token in tokens]
        for job in recalled:
            child.outstanding.remove(job)
        self._take_back(recalled)
        for job in child.outstanding:  # asked for but already started: it stays (and is cancelled if so)
            job.recalling = False
        self._dispatch()

    @staticmethod
    def _stuck(child: Child, now: float) -> bool:
        return bool(child.outstanding) and now - child.current_since > REBALANCE_AFTER_SECONDS

    def _take_back(self, jobs: list[Job]) -> None:
        """Tasks a child will never start: drop the cancelled, release them at shutdown, otherwise
        put them first in line for another child."""
        for job in reversed(jobs):
            job.recalling = False
            if job.cancelled:
                self._jobs.pop(job.token, None)
            elif self._stopping:
                self._jobs.pop(job.token, None)
                self._writer.release(job)
            else:
                self._queue.appendleft(job)

    def _recall(self, child: Child, jobs: list[Job]) -> None:
        jobs = [job for job in jobs if not job.recalling]
        if jobs and self._pool is not None:
            for job in jobs:
                job.recalling = True
            self._pool.send(child, ("recall", [job.token for job in jobs]))

    def _on_death(self, child: Child, reason: str) -> None:
        now = time.monotonic()
        jobs = list(child.outstanding)
        child.outstanding.clear()
        if jobs:
            head, rest = jobs[0], jobs[1:]
            self._jobs.pop(head.token, None)
            duration = now - child.current_since
            if child.kill_reason == "timeout":
                self._record(
                    head,
                    Outcome(
                        OutcomeKind.TIMEOUT,
                        error=(
                            f"TimeoutError: task exceeded its timeout of {head.timeout_seconds} s and its process was killed"
                        ),
                    ),
                    duration,
                )
            elif child.kill_reason == "shutdown" or head.cancelled:
                if not head.cancelled:
                    self._writer.release(head)
            else:
                log.error("child %d running %s %s died: %s", child.pid, head.name, head.id, reason)
                self._record(
                    head,
                    Outcome(
                        OutcomeKind.CRASHED,
                        error=(
                            f"WorkerChildDied: the process running this task {reason} "
                            "(os._exit, a crash in native code, or the out-of-memory killer)"
                        ),
                    ),
                    duration,
                )
            self._take_back(rest)  # queued behind the head: they never started
        elif child.kill_reason is None and not (self._pool and self._pool.closing):
            log.warning("idle child %d %s; replacing it", child.pid, reason)
        self._wake.set()

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
            log.info("task %s %s %s in %.1f ms", what, job.name, job.id, duration * 1000)

    # -- shutdown -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """After the claim loop stops: release queued tasks, finish running ones within the grace."""
        grace = self.config.shutdown_grace_seconds if self._grace is None else self._grace
        while self._queue:
            job = self._queue.popleft()
            self._jobs.pop(job.token, None)
            if not job.cancelled:
                self._writer.release(job)
        assert self._pool is not None
        for child in self._pool.children:
            self._recall(child, list(child.outstanding)[1:])
        deadline = time.monotonic() + grace
        while any(c.outstanding for c in self._pool.children) and time.monotonic() < deadline and not self._force:
            await asyncio.sleep(0.02)
        leftover = [c for c in self._pool.children if c.outstanding]
        if leftover:
            log.warning("stopping %d task(s) still running; they go back to the queue", len(leftover))
            for child in leftover:
                child.kill("shutdown")
            while any(c.outstanding for c in self._pool.children):
                await asyncio.sleep(0.02)

    # -- background loops -------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Kill children whose current task ran past its timeout; take queued tasks back from
        children stuck on a slow one."""
        while True:
            await asyncio.sleep(0.05)
            if self._pool is None:
                continue
            now = time.monotonic()
            idle = any(c.ready and not c.outstanding and not c.kill_reason for c in self._pool.children)
            for child in self._pool.children:
                job = child.current
                if job and job.timeout_seconds and not child.kill_reason and now - child.current_since > job.timeout_seconds:
                    log.warning(
                        "task %s %s passed its %d s timeout: killing child %d",
                        job.name,
                        job.id,
                        job.timeout_seconds,
                        child.pid,
                    )
                    child.kill("timeout")
                elif len(child.outstanding) > 1 and self._stuck(child, now) and idle:
                    # Only worth it when another child is idle; under plain CPU contention every child
                    # is busy and moving work around would only add churn.
                    self._recall(child, list(child.outstanding)[1:])

    def _stop_lost(self, lost: set[uuid.UUID]) -> None:
        """Tasks whose row is no longer ours (cancelled, rescued): drop them, kill their code."""
        for job in list(self._jobs.values()):
            if job.id in lost and not job.cancelled:
                job.cancelled = True
                log.info("task %s %s was cancelled or taken over: stopping it", job.name, job.id)
        if self._pool is None:
            return
        for child in self._pool.children:
            head = child.current
            if head is not None and head.id in lost:
                child.kill("cancel")
            else:
                self._recall(child, [job for job in list(child.outstanding)[1:] if job.id in lost])

    async def _maintain(self) -> None:
        """Heartbeat our locks and rescue other workers' expired ones."""
        last_beat = 0.0
        while True:
            await asyncio.sleep(min(self.poll_interval, self._heartbeat_interval))
            try:
                now = time.monotonic()
                if now - last_beat >= self._heartbeat_interval and self._jobs:
                    held = {j.id for j in self._jobs.values() if not j.cancelled}
                    rows = await self._execute(
                        sql.HEARTBEAT,
                        {
                            "ids": list(held),
                            "worker_id": self.worker_id,
                            "lock_seconds": float(self.config.lock_timeout_seconds),
                        },
                    )
                    last_beat = now
                    lost = held - {r[0] for r in rows}
                    # A task finished meanwhile is not lost: only count those still held now.
                    lost &= {j.id for j in self._jobs.values()}
                    if lost:
                        self._stop_lost(lost)
                rescued = await self._execute(sql.RESCUE_EXPIRED, {})
                for task_id, state in rescued:
                    log.warning("rescued task %s from a dead worker: now %s", task_id, state)
                if rescued:
                    self._wake.set()
            except psycopg.Error as exc:
                log.warning("heartbeat/rescue failed (%s); will retry", brief(exc))

    async def _listen(self) -> None:
        """LISTEN on a dedicated connection: submits wake the claim loop, cancels stop tasks."""
        backoff = 0.1
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, **connect_kwargs(self._app_name)) as conn:
                    await conn.execute(f"LISTEN {sql.NOTIFY_CHANNEL_SUBMIT}")
                    await conn.execute(f"LISTEN {sql.NOTIFY_CHANNEL_CANCEL}")
                    backoff = 0.1
                    self._wake.set()  # anything submitted while we were not listening
                    async for note in conn.notifies():
                        if note.channel == sql.NOTIFY_CHANNEL_CANCEL:
                            try:
                                self._stop_lost({uuid.UUID(note.payload)})
                            except ValueError:
                                pass
                        elif not self._stopping:
                            self._wake.set()
            except psycopg.Error as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", brief(exc), backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

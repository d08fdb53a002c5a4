"""TaskWorker: the worker's lifecycle and its claim loop; the parts it runs live beside it.

One asyncio loop in the parent drives everything; task code only ever runs in children:

- the claim loop (here) takes up to the dispatcher's free capacity in one statement
  (FOR UPDATE SKIP LOCKED, floor from ``_claim``) and commits before anything runs;
- ``_dispatcher`` hands jobs to children (``_pool``) and turns what they report into outcomes;
  ``_async_dispatcher`` does the same for ``async def`` tasks, many at once per async child. Each
  kind is a *lane* with its own task names, children, capacity and claim floor, so slow sync tasks
  never hold back async ones and the reverse;
- ``_writer`` records outcomes in batches, each conditioned on this worker's claim;
- ``_lockkeeper`` renews this worker's locks and rescues claims of dead workers;
- ``_connections`` holds the claim and write connections and the LISTEN loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import random
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklib._async_dispatcher import AsyncDispatcher, async_children
from tasklib._claim import SWEEP_STEP_SECONDS, ClaimFloor, Step, Window, claim_statement
from tasklib._connections import MAX_BACKOFF_SECONDS, Outage, WorkerConnections, brief, listen
from tasklib._dispatcher import Dispatcher
from tasklib._forkserver import ForkServer
from tasklib._lockkeeper import LockKeeper, session_name
from tasklib._pool import ChildPool, Job, KillReason
from tasklib._scheduler import Scheduler
from tasklib._writer import OutcomeWriter
from tasklib.config import Config, Retention, redact_url
from tasklib.db import connect_kwargs
from tasklib.errors import DatabaseError
from tasklib.registry import registered_definitions
from tasklib.retention import automatic_round
from tasklib.schema import check_cleanup, ensure_schema

log = logging.getLogger("tasklib.worker")

#: Most rows one claim statement takes; a dispatcher that wants more claims again at once. Each row
#: a claim takes writes six index entries, and with 4 workers x 4 children on 2 cores a 256-row
#: claim was active 100-200 ms (mostly waiting for CPU and WAL), holding its rows and connection.
#: Same-run A/B, 4 x 4, 1 x 16 and 2 x 4 bursts (with the writer's BATCH_LIMIT alike): 64 rows
#: brought the longest worker statement from 75-200 ms to 40-130 ms (4 x 4) and 20-120 ms to
#: 10-40 ms (1 x 16) at the same burst rates; 32 rows gained nothing more.
CLAIM_BATCH_LIMIT = 64

WATCHDOG_INTERVAL_SECONDS = 0.05
#: At shutdown, how long the writer may finish the statement in flight before it is cancelled.
WRITER_STOP_SECONDS = 5.0
#: How many ``async def`` tasks a worker runs at once unless told otherwise.
DEFAULT_ASYNC_CONCURRENCY = 10


@dataclass(frozen=True)
class _Claimed:
    """What one claim statement returned: the server's now(), the jobs, the step for the floor."""

    claimed_at: datetime
    jobs: list[Job]
    step: Step


@dataclass(eq=False)
class Lane:
    """One kind of task (sync or async): the names it claims, its dispatcher and its claim floor."""

    names: list[str]
    dispatcher: Dispatcher
    floor: ClaimFloor


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
        async_concurrency: int = DEFAULT_ASYNC_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if async_concurrency < 0:
            raise ValueError("async_concurrency must be >= 0 (0 runs async tasks in the sync children)")
        if poll_interval_seconds <= 0:
            raise ValueError("poll_interval_seconds must be > 0")
        self.config = config
        self.concurrency = concurrency
        self.async_concurrency = async_concurrency
        self.poll_interval = poll_interval_seconds
        self.worker_id = config.worker_id or default_worker_id()
        self.handle_signals = handle_signals
        self._extra_modules = modules or []
        self._wake = asyncio.Event()
        self._stopping = False
        self._grace: float | None = None  # shutdown(grace_seconds=…) overrides the config
        self._force = False
        self._stopped = asyncio.Event()
        self._started = False
        self._run_task: asyncio.Task[Any] | None = None
        self._names: list[str] = []
        self._app_name = session_name(self.worker_id)
        self._connections: WorkerConnections | None = None
        self._writer = OutcomeWriter(self._execute, self.worker_id, on_room=self._wake.set)
        self._dispatcher = Dispatcher(config, concurrency, self._writer, self._wake.set)
        self._async_children = async_children(async_concurrency)
        self._async_dispatcher = AsyncDispatcher(
            config, max(async_concurrency, 1), self._writer, self._wake.set, self._async_children
        )
        self._lanes: list[Lane] = []

    @property
    def processed(self) -> int:
        """Tasks this worker has run to an outcome."""
        return self._dispatcher.processed + self._async_dispatcher.processed

    @property
    def _dispatchers(self) -> tuple[Dispatcher, ...]:
        return tuple(lane.dispatcher for lane in self._lanes)

    # -- lifecycle --------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``shutdown()`` or SIGINT/SIGTERM (a second signal stops running tasks at once)."""
        self._started = True
        self._run_task = asyncio.current_task()
        url = self.config.resolved_database_url()
        await asyncio.to_thread(self._prepare_schema, url)
        self._connections = WorkerConnections(url, self._app_name)
        definitions = registered_definitions()
        self._names = sorted(definitions)
        if not self._names:
            log.warning("no tasks are registered: this worker will claim nothing (use --app to import them)")
        modules = sorted({d.func.__module__ for d in definitions.values()} | set(self._extra_modules))
        modules = [m if m not in ("__main__", "__mp_main__") else "__main__" for m in modules]
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        server = ForkServer([m for m in modules if m != "__main__"], preload_main="__main__" in modules)
        await server.start()
        pools = self._start_lanes(definitions, server)
        log.info(
            "worker %s started: concurrency %d, async concurrency %d, %d task(s) registered, database %s",
            self.worker_id,
            self.concurrency,
            self.async_concurrency if self._async_dispatcher in self._dispatchers else 0,
            len(self._names),
            redact_url(url),
            extra={"event": "worker.started", "worker_id": self.worker_id},
        )
        keeper = LockKeeper(
            self.config,
            self.worker_id,
            self._connections,
            held=self._held_ids,
            unwritten=self._writer.unwritten_ids,
            on_lost=self._stop_lost,
            on_rescued=self._wake.set,
            poll_interval=self.poll_interval,
        )
        writer = asyncio.create_task(self._writer.run(), name="tasklib-write")
        background = [
            asyncio.create_task(listen(url, self._app_name, self._on_submit, self._on_cancel), name="tasklib-listen"),
            asyncio.create_task(keeper.loop(), name="tasklib-locks"),
            asyncio.create_task(self._watchdog(), name="tasklib-watchdog"),
        ]
        scheduler = Scheduler(definitions, self.config, self._schedule_run, self._wake.set)
        if scheduler.definitions:
            background.append(asyncio.create_task(scheduler.loop(), name="tasklib-schedule"))
        if self.config.retention is not None:
            background.append(asyncio.create_task(self._retention_loop(url), name="tasklib-retention"))
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # Not cancelled outright: a finish cut off mid-statement could be lost or half-known. A
            # statement that hangs (a partition) is cancelled after a while; its batch stays buffered.
            self._writer.stop()
            if not (await asyncio.wait({writer}, timeout=WRITER_STOP_SECONDS))[0]:
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            await self._writer.close()
            await asyncio.gather(*(pool.close() for pool in pools))
            server.close()
            await self._connections.close()
            self._remove_signals(loop)
            self._stopped.set()
            log.info(
                "worker %s stopped after %d task(s)",
                self.worker_id,
                self.processed,
                extra={"event": "worker.stopped", "worker_id": self.worker_id},
            )

    async def shutdown(self, grace_seconds: float | None = None) -> None:
        """Stop claiming, let running tasks finish (up to the grace period), release the rest.

        Returns once ``run()`` has finished (at once if it is not running).
        """
        if grace_seconds is not None:
            self._grace = grace_seconds
        self._stop()
        if self._started and asyncio.current_task() is not self._run_task:
            await self._stopped.wait()

    def _start_lanes(self, definitions: dict[str, Any], server: ForkServer) -> list[ChildPool]:
        """Split the registered tasks into lanes and start each lane's children.

        With ``async_concurrency`` 0 there is one lane and async tasks run in the sync children, one
        at a time each. Sync children start when sync tasks exist (or no tasks at all, so a worker
        started before its tasks' modules were given still looks alive); async ones when async do.
        """
        async_names = (
            sorted(n for n, d in definitions.items() if inspect.iscoroutinefunction(d.func))
            if self.async_concurrency
            else []
        )
        sync_names = sorted(set(self._names) - set(async_names))
        lanes = [
            Lane(sync_names, self._dispatcher, ClaimFloor(sweep_every_seconds=self.poll_interval)),
            Lane(async_names, self._async_dispatcher, ClaimFloor(sweep_every_seconds=self.poll_interval)),
        ]
        self._lanes = [lane for lane in lanes if lane.names] or lanes[:1]
        pools = []
        for lane in self._lanes:
            run_async = lane.dispatcher is self._async_dispatcher
            pool = ChildPool(
                self._async_children if run_async else self.concurrency,
                server,
                lane.dispatcher.on_message,
                lane.dispatcher.on_death,
                default_memory_limit_mb=self.config.default_memory_limit_mb,
                run_async=run_async,
            )
            lane.dispatcher.pool = pool
            pool.start()
            pools.append(pool)
        return pools

    def _held_ids(self) -> set[uuid.UUID]:
        return set().union(*(d.held_ids() for d in self._dispatchers))

    def _stop_lost(self, lost: set[uuid.UUID]) -> None:
        for dispatcher in self._dispatchers:
            dispatcher.stop_lost(lost)

    def _stop(self) -> None:
        self._stopping = True
        for dispatcher in (self._dispatcher, self._async_dispatcher):
            dispatcher.stopping = True
        self._wake.set()

    def _prepare_schema(self, url: str) -> None:
        """Create/upgrade the table, waiting for the database if it is not up yet (containers start together)."""
        delay, deadline = 0.5, time.monotonic() + 60
        while True:
            try:
                with psycopg.connect(url, connect_timeout=5, **connect_kwargs("tasklib-worker")) as conn:
                    ensure_schema(conn)
                    problem = check_cleanup(conn)
                if problem:
                    log.warning(problem, extra={"event": "worker.autovacuum_off", "worker_id": self.worker_id})
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
        self._stop()

    def _on_submit(self, submitted_at: float | None, priority: int | None = None) -> None:
        if submitted_at is not None:
            for lane in self._lanes:
                lane.floor.lower_to(datetime.fromtimestamp(submitted_at, UTC), priority)
        if not self._stopping:
            self._wake.set()

    def _on_cancel(self, task_id: uuid.UUID) -> None:
        self._stop_lost({task_id})

    async def _execute(self, statement: str, params: dict[str, Any]) -> list[Any]:
        assert self._connections is not None
        return await self._connections.execute(statement, params)

    async def _schedule_run(self, statement: str, params: dict[str, Any]) -> list[Any]:
        assert self._connections is not None
        return await self._connections.execute(statement, params, role="schedule")

    # -- claiming -----------------------------------------------------------------------------

    async def _claim(self, lane: Lane, limit: int) -> list[Job]:
        """One claim of up to ``limit`` of a lane's tasks: while a sweep is in progress, its next
        steps first; then from the floors: each priority it knows of in turn, then all at once for
        what is left (see ``tasklib._claim``).

        Each statement's rows go to the lane's dispatcher as soon as that statement returns (they
        are committed, so they are this worker's to run): a claim that is short at its first
        priority still asks across all priorities, and a task must not wait for that round trip,
        nor for a sweep step, to start."""
        assert self._connections is not None
        started = time.monotonic()
        floor = lane.floor.floor_for_next(started)
        params: dict[str, Any] = {
            "names": lane.names,
            "worker_id": self.worker_id,
            "lock_seconds": float(self.config.lock_timeout_seconds),
        }
        jobs: list[Job] = []
        steps: list[Step] = []
        claimed_at: datetime | None = None
        swept = 0.0  # sweep steps go on while they are cheap (an idle queue's sweep ends in one claim)
        while len(jobs) < limit and swept < SWEEP_STEP_SECONDS and (window := lane.floor.sweep_window()):
            made = await self._claim_step(params, None, window[0], limit - len(jobs), window)
            lane.floor.swept(made.step)
            swept += made.step.seconds
            claimed_at, jobs = claimed_at or made.claimed_at, jobs + made.jobs
            lane.dispatcher.hold(made.jobs)
        known = lane.floor.priorities_for(floor)
        asked = [p for p, _ in known]  # the last step, across priorities, leaves these out
        for priority, at in [*known, (None, floor)]:
            if len(jobs) >= limit:
                break
            made = await self._claim_step(params, priority, at, limit - len(jobs), others=asked)
            steps.append(made.step)
            claimed_at, jobs = claimed_at or made.claimed_at, jobs + made.jobs
            lane.dispatcher.hold(made.jobs)
        assert claimed_at is not None
        lane.floor.observe(claimed_at, steps, seconds=time.monotonic() - started)
        return jobs

    async def _claim_step(
        self,
        params: dict[str, Any],
        priority: int | None,
        floor: datetime,
        asked: int,
        window: Window | None = None,
        others: list[int] | None = None,
    ) -> _Claimed:
        """One statement of a claim: a sweep's step over ``window``, or from ``floor`` (at one
        ``priority``, or across all priorities, or across all but the ones in ``others``)."""
        assert self._connections is not None
        statement, step_params = claim_statement(priority, window, others)
        started = time.monotonic()
        rows = await self._connections.execute(
            statement,
            {**params, **step_params, "floor": floor, "limit": asked},
            role="claim",
            row_factory=dict_row,
        )
        taken = [Job.from_row(row) for row in rows if row["id"] is not None]
        claimed = [(job.priority, job.scheduled_at) for job in taken]
        return _Claimed(rows[0]["claimed_at"], taken, Step(priority, asked, claimed, window, time.monotonic() - started))

    async def _claim_round(self) -> bool:
        """Claim for every lane with room; True when some claim came back full (more may be due)."""
        claimed_full = False
        for lane in self._lanes:
            wanted = min(lane.dispatcher.wanted(), CLAIM_BATCH_LIMIT)
            if wanted and lane.names:
                jobs = await self._claim(lane, wanted)
                claimed_full |= len(jobs) == wanted
        return claimed_full

    async def _claim_loop(self) -> None:
        backoff = 0.1
        outage = Outage("claiming tasks")
        while not self._stopping:
            # Cleared before the round, never after it: a wake-up that arrives while the round
            # awaits its statements (a child finishing during the other lane's claim) must keep the
            # wait below from sleeping a whole poll interval with a free slot.
            self._wake.clear()
            try:
                claimed_full = await self._claim_round()
                backoff = 0.1
                outage.ok()
            except psycopg.Error as exc:
                for lane in self._lanes:
                    lane.floor.forget()
                outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if claimed_full:
                continue  # more may be due: claim again at once
            rechecks = [t for t in (d.recheck_in() for d in self._dispatchers) if t is not None]
            try:
                await asyncio.wait_for(self._wake.wait(), min([self.poll_interval, *rechecks]))
            except TimeoutError:
                pass

    # -- shutdown -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """After the claim loop stops: release queued tasks, finish running ones within the grace."""
        grace = self.config.shutdown_grace_seconds if self._grace is None else self._grace
        for dispatcher in self._dispatchers:
            dispatcher.release_queued()
            dispatcher.recall_queued()

        def running() -> list[Any]:
            return [child for d in self._dispatchers for child in d.running_children()]

        deadline = time.monotonic() + grace
        while running() and time.monotonic() < deadline and not self._force:
            await asyncio.sleep(0.02)
        leftover = running()
        if leftover:
            tasks = sum(len(child.outstanding) for child in leftover)
            log.warning("stopping %d task(s) still running; they go back to the queue", tasks)
            for child in leftover:
                child.kill(KillReason.SHUTDOWN)
            while running():
                await asyncio.sleep(0.02)

    async def _retention_loop(self, url: str) -> None:
        """Every ``retention.every_seconds`` (the first a few seconds after start, spread over workers
        started together), try one retention round; the advisory lock lets one worker at a time prune."""
        policy = self.config.retention
        assert policy is not None
        await asyncio.sleep(random.uniform(1.0, min(5.0, policy.every_seconds)))
        while True:
            try:
                removed = await asyncio.to_thread(self._retention_round, url, policy)
                if removed:
                    log.info("retention removed %d finished task(s): %s", sum(removed.values()), removed)
            except (psycopg.Error, DatabaseError) as exc:
                log.warning("retention round failed (%s); next in %.0fs", brief(exc), policy.every_seconds)
            await asyncio.sleep(policy.every_seconds)

    def _retention_round(self, url: str, policy: Retention) -> dict[str, int] | None:
        with psycopg.connect(url, connect_timeout=10, **connect_kwargs(f"tasklib-retention {self.worker_id}"[:63])) as conn:
            return automatic_round(conn, policy, self.worker_id)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            for dispatcher in self._dispatchers:
                dispatcher.check_children()

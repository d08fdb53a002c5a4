"""TaskWorker: the worker's lifecycle and its claim loop; the parts it runs live beside it.

One asyncio loop in the parent drives everything; task code only ever runs in children:

- the claim loop (here) takes up to the dispatcher's free capacity in one statement
  (FOR UPDATE SKIP LOCKED, floor from ``_claim``) and commits before anything runs;
- ``_dispatcher`` hands jobs to children (``_pool``) and turns what they report into outcomes;
- ``_writer`` records outcomes in batches, each conditioned on this worker's claim;
- ``_lockkeeper`` renews this worker's locks and rescues claims of dead workers;
- ``_connections`` holds the claim and write connections and the LISTEN loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from tasklib import sql
from tasklib._claim import ClaimFloor
from tasklib._connections import MAX_BACKOFF_SECONDS, Outage, WorkerConnections, brief, listen
from tasklib._dispatcher import Dispatcher
from tasklib._lockkeeper import LockKeeper
from tasklib._pool import ChildPool, Job, KillReason
from tasklib._scheduler import Scheduler
from tasklib._writer import OutcomeWriter
from tasklib.config import Config, Retention, redact_url
from tasklib.db import connect_kwargs
from tasklib.errors import DatabaseError
from tasklib.registry import registered_definitions
from tasklib.retention import automatic_round
from tasklib.schema import ensure_schema

log = logging.getLogger("tasklib.worker")

WATCHDOG_INTERVAL_SECONDS = 0.05


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
        self._wake = asyncio.Event()
        self._stopping = False
        self._grace: float | None = None  # shutdown(grace_seconds=…) overrides the config
        self._force = False
        self._stopped = asyncio.Event()
        self._started = False
        self._run_task: asyncio.Task[Any] | None = None
        self._names: list[str] = []
        self._app_name = f"tasklib-worker {self.worker_id}"[:63]
        self._connections: WorkerConnections | None = None
        self._floor = ClaimFloor(sweep_every_seconds=poll_interval_seconds)
        self._writer = OutcomeWriter(self._execute, self.worker_id)
        self._dispatcher = Dispatcher(config, concurrency, self._writer, self._wake.set)

    @property
    def processed(self) -> int:
        """Tasks this worker has run to an outcome."""
        return self._dispatcher.processed

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
        dispatcher = self._dispatcher
        pool = ChildPool(
            self.concurrency,
            [m for m in modules if m != "__main__"],
            dispatcher.on_message,
            dispatcher.on_death,
            preload_main="__main__" in modules,
            default_memory_limit_mb=self.config.default_memory_limit_mb,
        )
        dispatcher.pool = pool
        pool.start()
        log.info(
            "worker %s started: concurrency %d, %d task(s) registered, database %s",
            self.worker_id,
            self.concurrency,
            len(self._names),
            redact_url(url),
            extra={"event": "worker.started", "worker_id": self.worker_id},
        )
        keeper = LockKeeper(
            self.config,
            self.worker_id,
            self._connections,
            held=dispatcher.held_ids,
            unwritten=self._writer.unwritten_ids,
            on_lost=dispatcher.stop_lost,
            on_rescued=self._wake.set,
            poll_interval=self.poll_interval,
        )
        background = [
            asyncio.create_task(listen(url, self._app_name, self._on_submit, self._on_cancel), name="tasklib-listen"),
            asyncio.create_task(keeper.loop(), name="tasklib-locks"),
            asyncio.create_task(self._writer.run(), name="tasklib-write"),
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
            await self._writer.close()
            await pool.close()
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

    def _stop(self) -> None:
        self._stopping = self._dispatcher.stopping = True
        self._wake.set()

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
        self._stop()

    def _on_submit(self, submitted_at: float | None) -> None:
        if submitted_at is not None:
            self._floor.lower_to(datetime.fromtimestamp(submitted_at, UTC))
        if not self._stopping:
            self._wake.set()

    def _on_cancel(self, task_id: uuid.UUID) -> None:
        self._dispatcher.stop_lost({task_id})

    async def _execute(self, statement: str, params: dict[str, Any]) -> list[Any]:
        assert self._connections is not None
        return await self._connections.execute(statement, params)

    async def _schedule_run(self, statement: str, params: dict[str, Any]) -> list[Any]:
        assert self._connections is not None
        return await self._connections.execute(statement, params, role="schedule")

    # -- claiming -----------------------------------------------------------------------------

    async def _claim(self, limit: int) -> list[Job]:
        """One claim of up to ``limit`` tasks, starting at the floor (see ``tasklib._claim``)."""
        assert self._connections is not None
        floor = self._floor.floor_for_next(time.monotonic())
        rows = await self._connections.execute(
            sql.CLAIM_NEXT,
            {
                "names": self._names,
                "limit": limit,
                "floor": floor,
                "worker_id": self.worker_id,
                "lock_seconds": float(self.config.lock_timeout_seconds),
            },
            role="claim",
            row_factory=dict_row,
        )
        jobs = [Job.from_row(row) for row in rows if row["id"] is not None]
        self._floor.observe(rows[0]["claimed_at"], limit, [(job.priority, job.scheduled_at) for job in jobs])
        return jobs

    async def _claim_loop(self) -> None:
        backoff = 0.1
        outage = Outage("claiming tasks")
        while not self._stopping:
            wanted = self._dispatcher.wanted()
            claimed_full = False
            if wanted:
                try:
                    jobs = await self._claim(wanted)
                    backoff = 0.1
                    outage.ok()
                except psycopg.Error as exc:
                    self._floor.forget()
                    outage.failed(exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                    continue
                self._dispatcher.hold(jobs)
                claimed_full = len(jobs) == wanted
            if claimed_full:
                continue  # more may be due: claim again at once
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.poll_interval)
            except TimeoutError:
                pass

    # -- shutdown -----------------------------------------------------------------------------

    async def _drain(self) -> None:
        """After the claim loop stops: release queued tasks, finish running ones within the grace."""
        grace = self.config.shutdown_grace_seconds if self._grace is None else self._grace
        dispatcher = self._dispatcher
        dispatcher.release_queued()
        dispatcher.recall_queued()
        deadline = time.monotonic() + grace
        while dispatcher.running_children() and time.monotonic() < deadline and not self._force:
            await asyncio.sleep(0.02)
        leftover = dispatcher.running_children()
        if leftover:
            log.warning("stopping %d task(s) still running; they go back to the queue", len(leftover))
            for child in leftover:
                child.kill(KillReason.SHUTDOWN)
            while dispatcher.running_children():
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
            self._dispatcher.check_children()

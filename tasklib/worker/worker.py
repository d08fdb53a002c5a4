"""TaskWorker: composes the worker's parts at start and runs the claim loop.

claim (``claim``) → execute (``executors``: children run the code) → outcome → write (``writer``),
with ``liveness`` renewing locks and rescuing, ``scheduler`` inserting recurring slots, and
``connections`` holding the database connections and the LISTEN loop. docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import random
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg

from tasklib.config import Config, redact_url
from tasklib.db import connect_kwargs
from tasklib.errors import DatabaseError
from tasklib.limits import check_queue
from tasklib.registry import TaskDefinition, registered_definitions, registered_queues
from tasklib.schema import check_cleanup, ensure_schema
from tasklib.worker.async_executor import AsyncExecutor
from tasklib.worker.children import KillReason
from tasklib.worker.claim import CLAIM_BATCH_LIMIT, ClaimPlanner
from tasklib.worker.connections import (
    MAX_BACKOFF_SECONDS,
    CancelRequested,
    Outage,
    WorkerConnections,
    application_name,
    brief,
    notifications,
)
from tasklib.worker.executors import Executor, ExecutorContext, ProcessExecutor
from tasklib.worker.forkserver import ForkServer
from tasklib.worker.liveness import Liveness
from tasklib.worker.retention import RetentionLoop
from tasklib.worker.scheduler import Scheduler
from tasklib.worker.sources import Claimer, Source, make_sources
from tasklib.worker.writer import OutcomeWriter

log = logging.getLogger("tasklib.worker")

WATCHDOG_INTERVAL_SECONDS = 0.05
#: At shutdown, how long the writer may finish the statement in flight before it is cancelled.
WRITER_STOP_SECONDS = 5.0
#: How many ``async def`` tasks a worker runs at once unless told otherwise.
DEFAULT_ASYNC_CONCURRENCY = 10


@dataclass(eq=False)
class Lane:
    """One executor and the sources of its claims (each claims only the task names it runs)."""

    executor: Executor
    sources: list[Source]


class Lanes:
    """Every lane of a worker, addressed as one by liveness, the listener and shutdown."""

    def __init__(self, lanes: list[Lane]) -> None:
        self.lanes = lanes

    def held_ids(self) -> set[uuid.UUID]:
        return set().union(*(lane.executor.held_ids() for lane in self.lanes))

    def stop_lost(self, lost: set[uuid.UUID]) -> None:
        for lane in self.lanes:
            lane.executor.stop_lost(lost)

    def running(self) -> int:
        """Jobs in children, of every lane."""
        return sum(lane.executor.pool.outstanding() for lane in self.lanes)

    def sources(self) -> list[Source]:
        return [source for lane in self.lanes for source in lane.sources]

    def rescued(self) -> None:
        Claimer.hint_all(self.sources())


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def split_names(definitions: dict[str, TaskDefinition], async_concurrency: int) -> tuple[list[str], list[str]]:
    """(sync names, async names): ``async def`` tasks get their own lane unless ``async_concurrency`` is 0."""
    async_names = sorted(n for n, d in definitions.items() if async_concurrency and inspect.iscoroutinefunction(d.func))
    return sorted(set(definitions) - set(async_names)), async_names


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
        queues: list[str] | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be >= 1")
        if async_concurrency < 0:
            raise ValueError("async_concurrency must be >= 0 (0 runs async tasks in the sync children)")
        if poll_interval_seconds <= 0:
            raise ValueError("poll_interval_seconds must be > 0")
        #: The queues it serves (None: every queue its registered tasks name).
        self.queues = None if queues is None else sorted({check_queue(q) for q in queues})
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
        self._app_name = application_name(self.worker_id)
        self._connections = WorkerConnections(
            config.resolved_database_url,
            self._app_name,
            prepared_statements=config.prepares(),
            pooled=config.pool_mode == "transaction",
        )
        #: Whether it only polls, hearing of nothing (a pooled worker without listen_url): set by run().
        self._polls_only = False
        self._writer = OutcomeWriter(self._execute, self.worker_id, config)
        self._lanes = Lanes([])
        self._claimer = Claimer(self._connections, poll_interval_seconds)

    @property
    def processed(self) -> int:
        """Tasks this worker has run to an outcome."""
        return self._writer.processed

    # -- lifecycle --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until ``shutdown()`` or SIGINT/SIGTERM (a second signal stops running tasks at once)."""
        self._started = True
        self._run_task = asyncio.current_task()
        url = self.config.resolved_database_url()
        await asyncio.to_thread(self._prepare_schema, url)
        definitions = registered_definitions()
        if not definitions:
            log.warning("no tasks are registered: this worker will claim nothing (use --app to import them)")
        loop = asyncio.get_running_loop()
        self._install_signals(loop)
        server = self._fork_server(definitions)
        await server.start()
        self._lanes = Lanes(self._make_lanes(definitions, server))
        for lane in self._lanes.lanes:
            lane.executor.start()
        async_lane = any(isinstance(lane.executor, AsyncExecutor) for lane in self._lanes.lanes)
        log.info(
            "worker %s started: concurrency %d, async concurrency %d, %d task(s) registered, database %s",
            self.worker_id,
            self.concurrency,
            self.async_concurrency if async_lane else 0,
            len(definitions),
            redact_url(url),
            extra={"event": "worker.started", "worker_id": self.worker_id},
        )
        listen_url = self.config.resolved_listen_url()
        self._polls_only = listen_url is None
        if self._polls_only:
            log.warning(
                "pool_mode is transaction and no listen_url is set: this worker cannot LISTEN through the pooler, "
                "so it polls every %.1fs (jittered); new tasks wait up to that long, and cancels of running "
                "tasks reach it at its next heartbeat. Set listen_url (--listen-url) to a direct server URL to "
                "hear of them at once.",
                self.poll_interval,
            )
        liveness = Liveness(
            self.config,
            self.worker_id,
            self._connections,
            self._lanes,
            self._writer,
            self._wake,
            self.poll_interval,
            presence=self._presence(definitions, async_lane),
        )
        with contextlib.suppress(psycopg.Error):  # (else its first refresh announces it)
            await liveness.register()
        writer = asyncio.create_task(self._writer.run(), name="tasklib-write")
        background = [
            *([asyncio.create_task(self._listen(listen_url), name="tasklib-listen")] if listen_url else []),
            asyncio.create_task(liveness.loop(), name="tasklib-locks"),
            asyncio.create_task(self._watchdog(), name="tasklib-watchdog"),
        ]
        scheduler = Scheduler(definitions, self.config, self._connections, self._wake)
        if scheduler.definitions:
            background.append(asyncio.create_task(scheduler.loop(), name="tasklib-schedule"))
        if self.config.retention is not None:
            retention = RetentionLoop(self.config.retention, url, self.worker_id)
            background.append(asyncio.create_task(retention.run(), name="tasklib-retention"))
        try:
            with contextlib.suppress(psycopg.Error):
                await self._claimer.save_limits(self._lanes.sources())
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
            if not self._writer.unwritten_ids():  # (else it is left to go stale: the others rescue)
                with contextlib.suppress(psycopg.Error):
                    await liveness.leave()
            await asyncio.gather(*(lane.executor.pool.close() for lane in self._lanes.lanes))
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

    def _presence(self, definitions: dict[str, TaskDefinition], async_lane: bool) -> dict[str, Any]:
        """What this worker's row of ``tasklib_workers`` says of it (the Workers page shows it)."""
        from tasklib import __version__

        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "version": __version__,
            "concurrency": self.concurrency,
            "async_concurrency": self.async_concurrency if async_lane else 0,
            "queues": self.queues or registered_queues(definitions),
            "pool_mode": self.config.pool_mode,
        }

    def _fork_server(self, definitions: dict[str, TaskDefinition]) -> ForkServer:
        modules = sorted({d.func.__module__ for d in definitions.values()} | set(self._extra_modules))
        main = any(m in ("__main__", "__mp_main__") for m in modules)
        return ForkServer([m for m in modules if m not in ("__main__", "__mp_main__")], preload_main=main)

    def _make_lanes(self, definitions: dict[str, TaskDefinition], server: ForkServer) -> list[Lane]:
        """A sync lane when sync tasks exist (or none at all, so a worker started before its tasks'
        modules were given still looks alive), an async lane when async tasks do."""
        sync_names, async_names = split_names(definitions, self.async_concurrency)
        context = ExecutorContext(server, self._writer, self._wake, self.config)
        executors: list[Executor] = []
        if sync_names or not async_names:
            executors.append(ProcessExecutor(sync_names, self.concurrency, context))
        if async_names:
            executors.append(AsyncExecutor(async_names, self.async_concurrency, context))
        queues = self.queues or registered_queues(definitions)
        self._writer.limited_names = frozenset(n for n, d in definitions.items() if d.concurrency_limit is not None)
        return [Lane(e, make_sources(e.names, definitions, queues, self._planner)) for e in executors]

    def _planner(self, names: list[str], queue: str) -> ClaimPlanner:
        timeout, poll = self.config.lock_timeout_seconds, self.poll_interval
        return ClaimPlanner(names, self.worker_id, timeout, poll, queue=queue)

    def _stop(self) -> None:
        self._stopping = True
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

    async def _execute(self, statement: str, params: dict[str, Any]) -> list[Any]:
        return await self._connections.execute(statement, params)

    async def _listen(self, url: str) -> None:
        async for event in notifications(url, self._app_name):
            if isinstance(event, CancelRequested):
                self._lanes.stop_lost({event.task_id})
                continue
            self._claimer.heard(event, self._lanes.sources())
            if not self._stopping:
                self._wake.set()

    # -- claiming ---------------------------------------------------------------------------------

    async def _claim(self, lane: Lane, limit: int) -> int:
        """One claim of up to ``limit`` jobs from the lane's sources; jobs go to its executor."""
        return await self._claimer.claim(lane.sources, limit, lane.executor.hold)

    async def _claim_round(self) -> bool:
        """Claim for every lane with room; True when some claim came back full (more may be due)."""
        claimed_full = False
        await self._claimer.start_round()
        for lane in self._lanes.lanes:
            wanted = min(lane.executor.wanted(), CLAIM_BATCH_LIMIT)
            if wanted and lane.executor.names:
                claimed_full |= await self._claim(lane, wanted) == wanted
        return claimed_full

    async def _claim_loop(self) -> None:
        backoff = 0.1
        outage = Outage("claiming tasks")
        while not self._stopping:
            # Cleared before the round, never after it: a wake-up that arrives while the round awaits
            # its statements must keep the wait below from sleeping a whole poll interval.
            self._wake.clear()
            if not self._writer.has_room():  # outcomes wait to be recorded: more tasks would add to them
                await self._first(self._writer.wait_for_room(), self._wake.wait())
                continue
            try:
                claimed_full = await self._claim_round()
                backoff = 0.1
                outage.ok()
            except psycopg.Error as exc:
                for source in self._lanes.sources():
                    source.planner.forget()
                outage.failed(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if claimed_full:
                continue  # more may be due: claim again at once
            rechecks = [t for t in (lane.executor.recheck_in() for lane in self._lanes.lanes) if t is not None]
            rate_wait = self._claimer.recheck_in(self._lanes.sources())
            rechecks += [] if rate_wait is None else [rate_wait]
            # Polling alone, many workers started together would poll in step: spread them by ±20 %.
            poll = self.poll_interval * (random.uniform(0.8, 1.2) if self._polls_only else 1.0)
            try:
                await asyncio.wait_for(self._wake.wait(), min([poll, *rechecks]))
            except TimeoutError:
                pass

    @staticmethod
    async def _first(*waits: Any) -> None:
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()

    # -- shutdown ---------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """After the claim loop stops: release queued tasks, finish running ones within the grace."""
        grace = self.config.shutdown_grace_seconds if self._grace is None else self._grace
        for lane in self._lanes.lanes:
            lane.executor.stop()
        deadline = time.monotonic() + grace
        while self._lanes.running() and time.monotonic() < deadline and not self._force:
            await asyncio.sleep(0.02)
        if self._lanes.running():
            log.warning("stopping %d task(s) still running; they go back to the queue", self._lanes.running())
            for lane in self._lanes.lanes:
                lane.executor.pool.kill_busy(KillReason.SHUTDOWN)  # released: no attempt counted
            while self._lanes.running():
                await asyncio.sleep(0.02)

    async def _watchdog(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_SECONDS)
            for lane in self._lanes.lanes:
                lane.executor.check()

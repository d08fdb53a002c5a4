"""The worker's database connections: one per role, re-opened after a failure, and the listener.

Claims run on one connection and results, heartbeats and rescues on another, so a claim never
waits behind a batch of results (and vice versa). LISTEN has a third, dedicated connection: with
psycopg 3 a connection waiting for notifications cannot run statements meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import psycopg
from psycopg.rows import RowFactory, dict_row, tuple_row

from tasklib import sql
from tasklib.db import CLAIM_PLANNER_SETTINGS, WRITE_PLANNER_SETTINGS, connect_kwargs, set_statement

log = logging.getLogger("tasklib.worker")

Role = Literal["claim", "write", "schedule"]
#: Every worker connection's ``application_name`` starts with this (what an operator sees in
#: ``pg_stat_activity``; liveness reads presence, not sessions).
WORKER_SESSION_PREFIX = "tasklib-worker "


def application_name(worker_id: str) -> str:
    """The ``application_name`` of a worker's connections, as PostgreSQL keeps it (63 bytes)."""
    return (WORKER_SESSION_PREFIX + worker_id).encode()[:63].decode("utf-8", "ignore")


#: Longest wait between reconnect attempts: a worker resumes within about a second of the database
#: coming back (an attempt against a server that is down costs next to nothing).
MAX_BACKOFF_SECONDS = 1.0
#: A claim's commit does not wait for its WAL flush: a claim lost in a crash of PostgreSQL leaves the
#: task pending, to run again (at least once); every outcome's commit, synchronous, flushes the claims
#: before it (docs/design/claim.md).
CLAIM_COMMIT = {"synchronous_commit": "off"}
_ROLE_SETTINGS: dict[Role, dict[str, str]] = {
    "claim": {**CLAIM_PLANNER_SETTINGS, **CLAIM_COMMIT},
    "write": WRITE_PLANNER_SETTINGS,
    "schedule": WRITE_PLANNER_SETTINGS,
}
#: Session mode: set once, after connecting.
_SETTINGS: dict[Role, str] = {role: set_statement(settings) for role, settings in _ROLE_SETTINGS.items()}
#: Transaction mode: set at the start of every transaction (SET LOCAL), in the same round trip.
_LOCAL_SETTINGS: dict[Role, str] = {role: set_statement(s, local=True) for role, s in _ROLE_SETTINGS.items()}


class Outage:
    """Logs a failing database operation once when it starts failing and once when it works again,
    instead of at every retry (retries come up to a second apart, for as long as the outage lasts)."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None

    def failed(self, exc: BaseException) -> None:
        if self.since is None:
            self.since = time.monotonic()
            log.warning("%s failed (%s); retrying at most %.0fs apart", self.what, brief(exc), MAX_BACKOFF_SECONDS)
        else:
            log.debug("%s still failing (%s)", self.what, brief(exc))

    def ok(self) -> None:
        if self.since is not None:
            log.warning("%s works again after %.1fs", self.what, time.monotonic() - self.since)
            self.since = None


def brief(exc: BaseException) -> str:
    """The first line of a driver error: enough for a log line, without libpq's multi-line detail."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class WorkerConnections:
    """The claim and write connections of one worker, each opened on first use.

    ``pooled``: the URL is a transaction-mode pooler, where consecutive transactions may run on
    different server sessions. Then nothing is set on the session: each statement runs in a
    transaction that first sets its role's settings locally, sent in one round trip (a pipeline)."""

    def __init__(
        self,
        url: str | Callable[[], str],
        application_name: str,
        *,
        prepared_statements: bool = True,
        pooled: bool = False,
    ) -> None:
        self._url = url  # resolved on first use: the embedded server starts only when a worker runs
        self._kwargs = connect_kwargs(application_name, prepared_statements=prepared_statements)
        self.pooled = pooled
        # Pooled, every statement is a transaction (its settings, then it) that holds its connection
        # to the end: another task of this worker using the same role (the writer and liveness share
        # "write") must not slip a statement into it. In session mode a statement is one message
        # exchange, which psycopg serializes by itself.
        self._busy: dict[Role, asyncio.Lock] = {"claim": asyncio.Lock(), "write": asyncio.Lock(), "schedule": asyncio.Lock()}
        self.application_name = application_name
        # "schedule" is opened only by workers with recurring tasks (``tasklib.worker.scheduler``).
        self._conns: dict[Role, psycopg.AsyncConnection[Any] | None] = {"claim": None, "write": None, "schedule": None}

    def url(self) -> str:
        if callable(self._url):
            self._url = self._url()
        return self._url

    async def connection(self, role: Role) -> psycopg.AsyncConnection[Any]:
        conn = self._conns[role]
        if conn is None or conn.closed or conn.broken:
            conn = await psycopg.AsyncConnection.connect(self.url(), **self._kwargs)
            if not self.pooled:
                await conn.execute(_SETTINGS[role])
            self._conns[role] = conn
        return conn

    async def execute(
        self,
        statement: str,
        params: dict[str, Any],
        role: Role = "write",
        row_factory: RowFactory[Any] = tuple_row,
    ) -> list[Any]:
        """Run one statement (its own transaction); on a connection failure drop the connection and re-raise."""
        try:
            conn = await self.connection(role)
            cursor = conn.cursor(row_factory=row_factory)
            if self.pooled:
                async with self._busy[role], conn.pipeline(), conn.transaction():
                    await conn.execute(_LOCAL_SETTINGS[role])
                    await cursor.execute(statement, params, prepare=sql.prepare(statement))  # type: ignore[arg-type]
            else:
                await cursor.execute(statement, params, prepare=sql.prepare(statement))  # type: ignore[arg-type]
            return await cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            broken = self._conns[role]
            self._conns[role] = None
            if broken is not None:
                await broken.close()
            raise

    @asynccontextmanager
    async def transaction(self, role: Role) -> AsyncIterator[Callable[[str, dict[str, Any]], Awaitable[list[Any]]]]:
        """A transaction on the ``role`` connection: yields a function running one statement in it
        (rows as dicts); commits at the end, rolls back on an error. On a connection failure the
        connection is dropped, as with ``execute``."""
        conn = await self.connection(role)
        try:
            async with self._busy[role], conn.transaction():
                if self.pooled:
                    await conn.execute(_LOCAL_SETTINGS[role])

                async def run(statement: str, params: dict[str, Any]) -> list[Any]:
                    cursor = conn.cursor(row_factory=dict_row)
                    await cursor.execute(statement, params)  # type: ignore[arg-type]
                    return await cursor.fetchall() if cursor.description else []

                yield run
        except psycopg.OperationalError:
            self._conns[role] = None
            await conn.close()
            raise

    async def close(self) -> None:
        for role, conn in self._conns.items():
            if conn is not None:
                await conn.close()
            self._conns[role] = None


def submit_note(payload: str) -> tuple[float | None, int | None]:
    """(scheduled_at as epoch seconds, priority) from a submit's payload "<name> <epoch> <priority>";
    the priority is None from submitters older than it ("<name> <epoch>")."""
    head, _, last = payload.rpartition(" ")
    _, _, before = head.rpartition(" ")
    try:
        return float(before), int(last)
    except ValueError:
        pass
    try:
        return float(last), None
    except ValueError:
        return None, None


@dataclass(frozen=True, slots=True)
class Submitted:
    """A submit committed (or the listener reconnected: all None, anything may be due)."""

    scheduled_at: float | None = None  # epoch seconds
    priority: int | None = None
    name: str | None = None  # the task's name (None: any)
    queue: str | None = None  # its queue (None: any)

    @classmethod
    def of(cls, payload: str) -> Submitted:
        """From a payload "<name>[ @<queue>] <epoch>[ <priority>]" (``sql.notify_submit``)."""
        scheduled_at, priority = submit_note(payload)
        tail = 2 if priority is not None else 1 if scheduled_at is not None else 0
        if not tail:
            return cls()
        head = payload.rsplit(" ", tail)[0]
        name, marked, queue = head.rpartition(" @")
        if marked and queue and " " not in queue:
            return cls(scheduled_at, priority, name, queue)
        return cls(scheduled_at, priority, head, "default")


@dataclass(frozen=True, slots=True)
class CancelRequested:
    task_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class QueueChanged:
    """A queue's settings changed (paused, resumed, its limit)."""

    queue: str


async def notifications(url: str, application_name: str) -> AsyncIterator[Submitted | CancelRequested | QueueChanged]:
    """LISTEN until cancelled, reconnecting with backoff. After every (re)connect it yields a bare
    ``Submitted``: anything may have been submitted while nobody listened."""
    backoff = 0.1
    outage = Outage("listening for submits")
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, **connect_kwargs(application_name)) as conn:
                await conn.execute(f"LISTEN {sql.NOTIFY_CHANNEL_SUBMIT}")
                await conn.execute(f"LISTEN {sql.NOTIFY_CHANNEL_CANCEL}")
                await conn.execute(f"LISTEN {sql.NOTIFY_CHANNEL_QUEUE}")
                backoff = 0.1
                outage.ok()
                yield Submitted()
                async for note in conn.notifies():
                    if note.channel == sql.NOTIFY_CHANNEL_QUEUE:
                        yield QueueChanged(note.payload)
                        continue
                    if note.channel != sql.NOTIFY_CHANNEL_CANCEL:
                        yield Submitted.of(note.payload)
                        continue
                    try:
                        yield CancelRequested(uuid.UUID(note.payload))
                    except ValueError:
                        continue
        except psycopg.Error as exc:
            outage.failed(exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
